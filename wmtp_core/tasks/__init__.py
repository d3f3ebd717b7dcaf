"""The evaluation benchmarks as tasks: readers of HumanEval and MBPP, the prompt a model completes and the program
that tests a completion. A leaf package: data preparation (`mbpp_processed`, `humaneval_processed`) and
evaluation both read the benchmarks through it."""

from __future__ import annotations

from pathlib import Path

from wmtp_core.tasks.humaneval import humaneval_tasks
from wmtp_core.tasks.mbpp import mbpp_tasks
from wmtp_core.tasks.taskset import Table, TaskError, TaskSet

TASK_SETS = ("humaneval", "mbpp")


def load_tasks(
    name: str,
    source: str | Path | Table | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    shots: int = 3,
) -> TaskSet:
    """`humaneval` or `mbpp` (split defaults to "test"); without a source, the copy the package ships."""
    if name == "humaneval":
        if split not in (None, "test"):
            raise TaskError(f"split: HumanEval has only the 'test' split, got {split!r}")
        return humaneval_tasks(source, limit=limit)
    if name == "mbpp":
        return mbpp_tasks(source, split=split or "test", limit=limit, shots=shots)
    raise TaskError(f"task set: expected one of {list(TASK_SETS)}, got {name!r}")
