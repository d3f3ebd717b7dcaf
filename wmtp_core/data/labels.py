"""Check that CodeContests solution labels hold, by running the solutions on their tests in the sandbox.

A CodeContests row labels each solution correct or incorrect. `check_labels` executes every Python solution on
the row's public, private and generated tests (`wmtp_core.sandbox.stdio`: stdin in, whitespace-separated tokens
out) and reports each label the execution contradicts: a correct solution that fails a test, or an incorrect one
that passes them all. Solutions are untrusted code, real CodeContests rows included, so they run only in the
sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from tqdm import tqdm

from wmtp_core.data.codecontests_schema import PYTHON_LANGUAGES
from wmtp_core.sandbox.core import Sandbox, default_sandbox
from wmtp_core.sandbox.stdio import IOTest, TestStatus, judge_stdio

TEST_KINDS = ("public_tests", "private_tests", "generated_tests")


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


def problem_tests(row: Mapping) -> list[IOTest]:
    """Public, then private, then generated tests of one CodeContests row (a `Table.to_pylist()` item)."""
    tests = []
    for kind in TEST_KINDS:
        pairs = row.get(kind) or {"input": [], "output": []}
        inputs, outputs = pairs["input"] or [], pairs["output"] or []
        if len(inputs) != len(outputs):
            raise ValueError(
                f"problem {row.get('name')!r}: {kind} has {len(inputs)} inputs but {len(outputs)} outputs"
            )
        tests += [IOTest(f"{kind}[{i}]", x, y) for i, (x, y) in enumerate(zip(inputs, outputs, strict=True))]
    return tests


@dataclass(frozen=True)
class _Job:
    problem: str
    label: Literal["correct", "incorrect"]
    index: int
    source: str
    tests: Sequence[IOTest]


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


def _check(job: _Job, sandbox: Sandbox, timeout_s: float) -> LabelDisagreement | None:
    # An incorrect label is confirmed by its first failing test, so those runs stop early.
    verdict = judge_stdio(
        job.source, job.tests, sandbox=sandbox, timeout_s=timeout_s, stop_on_failure=job.label == "incorrect"
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
    sandbox: Sandbox | None = None,
    progress: bool = True,
) -> list[LabelDisagreement]:
    """Execute every Python solution (languages 1 and 3) of every row; return the labels execution contradicts.

    Non-Python solutions are skipped: the sandbox executes Python only. `workers` threads each drive one
    sandboxed program at a time (default: the CPU count); `sandbox` defaults to the shared default sandbox.
    """
    rows = table.to_pylist() if isinstance(table, pa.Table) else list(table)
    jobs = _python_jobs(rows)
    sandbox = sandbox or default_sandbox()
    n_workers = workers or os.cpu_count() or 1
    disagreements = []
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = pool.map(lambda job: _check(job, sandbox, timeout_s), jobs)
        for found in tqdm(
            results, total=len(jobs), desc="check labels", unit="solution", disable=not progress
        ):
            if found is not None:
                disagreements.append(found)
    return sorted(disagreements, key=lambda d: (d.problem, d.label, d.index))
