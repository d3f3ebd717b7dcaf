"""Run stdin/stdout programs against CodeContests tests and check that solution labels hold.

A CodeContests row labels each solution correct or incorrect. `check_labels` executes every Python solution on
the row's public, private and generated tests and reports each label the execution contradicts: a correct
solution that fails a test, or an incorrect one that passes them all. Outputs are compared as whitespace-separated
tokens, so trailing spaces, blank lines and `\\r\\n` endings do not matter but every token does.

Programs run through a `runner`: `(source, stdin, timeout_s) -> RunResult`. The default `SubprocessRunner` starts
the interpreter in a fresh temporary directory, in its own process group (killed whole on timeout), with a
scrubbed environment. The evaluation sandbox plugs in through the same callable: `wmtp_core.eval.sandbox.run`
returns status "ok" / "error" / "timeout" and a `stderr_tail`, which the judge reads as well.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
from tqdm import tqdm

from wmtp_core.data.codecontests_schema import PYTHON_LANGUAGES

RunStatus = Literal["ok", "runtime_error", "timeout"]
TestStatus = Literal["passed", "wrong_answer", "runtime_error", "timeout"]
TEST_KINDS = ("public_tests", "private_tests", "generated_tests")
_STDERR_TAIL = 2000


@dataclass(frozen=True)
class RunResult:
    """One execution: `ok` (exit status 0), `runtime_error` (any other exit) or `timeout`."""

    status: RunStatus
    stdout: str
    stderr: str


Runner = Callable[[str, str, float], RunResult]


def _as_run_result(result: object) -> RunResult:
    """Accept any runner result with `status` and `stdout`, and `stderr` or `stderr_tail` (the sandbox's)."""
    status = getattr(result, "status", None)
    if status not in ("ok", "timeout", "runtime_error", "error"):
        raise ValueError(f"runner returned status {status!r}; expected 'ok', 'runtime_error' or 'timeout'")
    stderr = getattr(result, "stderr", None)
    if stderr is None:
        stderr = getattr(result, "stderr_tail", "")
    return RunResult("runtime_error" if status == "error" else status, result.stdout, stderr)


@dataclass(frozen=True)
class JudgeTest:
    """One stdin/expected-stdout pair; `name` says where it came from, e.g. `private_tests[2]`."""

    name: str
    input: str
    output: str


@dataclass(frozen=True)
class TestOutcome:
    test: str
    status: TestStatus
    stderr_tail: str = ""


@dataclass(frozen=True)
class Verdict:
    """Outcomes in test order; with `stop_on_failure` the list ends at the first failing test."""

    outcomes: tuple[TestOutcome, ...]

    @property
    def passed(self) -> bool:
        return all(o.status == "passed" for o in self.outcomes)

    @property
    def first_failure(self) -> TestOutcome | None:
        return next((o for o in self.outcomes if o.status != "passed"), None)


@dataclass(frozen=True)
class LabelDisagreement:
    """A solution whose execution contradicts its label."""

    problem: str
    label: Literal["correct", "incorrect"]
    index: int  # position in the row's `solutions` / `incorrect_solutions` lists
    test: str  # the failing test for a correct solution; "all N tests" for an incorrect one that passed
    status: TestStatus
    stderr_tail: str

    def __str__(self) -> str:
        if self.label == "correct":
            what = f"is labelled correct but {self.status} on {self.test}"
        else:
            what = f"is labelled incorrect but passed {self.test}"
        tail = f"; stderr: {self.stderr_tail.strip()[-300:]}" if self.stderr_tail.strip() else ""
        return f"{self.problem}: {self.label} solution {self.index} {what}{tail}"


def outputs_match(actual: str, expected: str) -> bool:
    """CodeContests-style comparison: equal sequences of whitespace-separated tokens."""
    return actual.split() == expected.split()


class SubprocessRunner:
    """Runs Python source with `python -I -S` in a fresh temp dir and process group, env scrubbed.

    `-S` skips site-packages: contest programs use the standard library only, and interpreter start-up drops
    from ~40 ms to ~15 ms, which dominates a label check of a few thousand runs. stdout goes to a file and is
    read up to `max_output_bytes`, so a program printing in a loop cannot exhaust the judge's memory.
    """

    def __init__(self, python: str = sys.executable, *, max_output_bytes: int = 16 << 20) -> None:
        self.python = python
        self.max_output_bytes = max_output_bytes

    def __call__(self, source: str, stdin: str, timeout_s: float) -> RunResult:
        with tempfile.TemporaryDirectory(prefix="wmtp-judge-") as tmp:
            work = Path(tmp)
            (work / "solution.py").write_text(source, encoding="utf-8")
            (work / "stdin.txt").write_text(stdin, encoding="utf-8")
            env = {
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "HOME": tmp,
                "TMPDIR": tmp,
                "PYTHONHASHSEED": "0",
            }
            with (
                open(work / "stdin.txt", "rb") as fin,
                open(work / "stdout.txt", "wb") as fout,
                open(work / "stderr.txt", "wb") as ferr,
            ):
                proc = subprocess.Popen(
                    [self.python, "-I", "-S", "solution.py"],
                    cwd=work,
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    env=env,
                    process_group=0,
                )
                exited = _wait_then_kill_group(proc, timeout_s)
            if not exited:
                status: RunStatus = "timeout"
            else:
                status = "ok" if proc.returncode == 0 else "runtime_error"
            return RunResult(status, self._read(work / "stdout.txt"), self._read(work / "stderr.txt"))

    def _read(self, path: Path) -> str:
        with open(path, "rb") as f:
            return f.read(self.max_output_bytes).decode("utf-8", errors="replace")


def _wait_then_kill_group(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until the program exits or times out, kill whatever is left of its process group, reap it.

    A pidfd reports the exit without reaping the leader, so the group is killed while the pgid still belongs to
    it (a reaped pid could be reused) and background children of a program that exited normally die too.
    Returns whether the program exited within the timeout.
    """
    pidfd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        exited = bool(poller.poll(max(0, int(timeout_s * 1000))))
    finally:
        os.close(pidfd)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return exited


def judge_solution(
    source: str,
    tests: Iterable[JudgeTest],
    *,
    timeout_s: float,
    runner: Runner | None = None,
    stop_on_failure: bool = False,
) -> Verdict:
    """Run `source` on each test in order and compare its stdout with the expected output."""
    run = runner or SubprocessRunner()
    outcomes: list[TestOutcome] = []
    for test in tests:
        result = _as_run_result(run(source, test.input, timeout_s))
        if result.status == "ok":
            status: TestStatus = "passed" if outputs_match(result.stdout, test.output) else "wrong_answer"
        else:
            status = result.status
        outcomes.append(TestOutcome(test.name, status, result.stderr[-_STDERR_TAIL:]))
        if stop_on_failure and status != "passed":
            break
    return Verdict(tuple(outcomes))


def problem_tests(row: Mapping) -> list[JudgeTest]:
    """Public, then private, then generated tests of one CodeContests row (a `Table.to_pylist()` item)."""
    tests = []
    for kind in TEST_KINDS:
        pairs = row.get(kind) or {"input": [], "output": []}
        inputs, outputs = pairs["input"] or [], pairs["output"] or []
        if len(inputs) != len(outputs):
            raise ValueError(
                f"problem {row.get('name')!r}: {kind} has {len(inputs)} inputs but {len(outputs)} outputs"
            )
        tests += [
            JudgeTest(f"{kind}[{i}]", x, y) for i, (x, y) in enumerate(zip(inputs, outputs, strict=True))
        ]
    return tests


@dataclass(frozen=True)
class _Job:
    problem: str
    label: Literal["correct", "incorrect"]
    index: int
    source: str
    tests: Sequence[JudgeTest]


def _python_jobs(rows: Iterable[Mapping]) -> list[_Job]:
    jobs = []
    for row in rows:
        tests = problem_tests(row)
        row_jobs = []
        for label, field in (("correct", "solutions"), ("incorrect", "incorrect_solutions")):
            sols = row[field] or {"language": [], "solution": []}
            for i, (lang, source) in enumerate(zip(sols["language"], sols["solution"], strict=True)):
                if lang in PYTHON_LANGUAGES:
                    row_jobs.append(_Job(row["name"], label, i, source, tests))
        if row_jobs and not tests:
            raise ValueError(
                f"problem {row['name']!r}: Python solutions but no tests to check their labels on"
            )
        jobs += row_jobs
    return jobs


def _check(job: _Job, timeout_s: float, runner: Runner | None) -> LabelDisagreement | None:
    # An incorrect label is confirmed by its first failing test, so those runs stop early.
    verdict = judge_solution(
        job.source, job.tests, timeout_s=timeout_s, runner=runner, stop_on_failure=job.label == "incorrect"
    )
    failure = verdict.first_failure
    if job.label == "correct" and failure is not None:
        return LabelDisagreement(
            job.problem, "correct", job.index, failure.test, failure.status, failure.stderr_tail
        )
    if job.label == "incorrect" and failure is None:
        return LabelDisagreement(
            job.problem, "incorrect", job.index, f"all {len(job.tests)} tests", "passed", ""
        )
    return None


def check_labels(
    table: pa.Table | Iterable[Mapping],
    *,
    timeout_s: float = 10.0,
    workers: int | None = None,
    runner: Runner | None = None,
    progress: bool = True,
) -> list[LabelDisagreement]:
    """Execute every Python solution (languages 1 and 3) of every row; return the labels execution contradicts.

    Non-Python solutions are skipped: the runner executes Python only. `workers` threads each drive one
    subprocess at a time (default: the CPU count).
    """
    rows = table.to_pylist() if isinstance(table, pa.Table) else list(table)
    jobs = _python_jobs(rows)
    runner = runner or SubprocessRunner()
    n_workers = workers or os.cpu_count() or 1
    disagreements = []
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = pool.map(lambda job: _check(job, timeout_s, runner), jobs)
        for found in tqdm(
            results, total=len(jobs), desc="check labels", unit="solution", disable=not progress
        ):
            if found is not None:
                disagreements.append(found)
    return sorted(disagreements, key=lambda d: (d.problem, d.label, d.index))
