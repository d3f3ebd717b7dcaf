"""Tasks: the prompt a model completes, the program that tests a completion, and the files they are read from."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

Table = pa.Table | pl.DataFrame


class TaskError(ValueError):
    """A task file or table is missing, malformed, or does not hold what was asked for."""


@dataclass(frozen=True)
class Task:
    """One problem. `program(completion)` is the whole file the sandbox runs to test a completion."""

    task_id: str
    prompt: str
    reference: str  # a completion known to pass: HumanEval's canonical body, MBPP's reference code
    test_code: str  # appended after the completion (HumanEval: the prompt comes first)
    stop: tuple[str, ...]
    prepend_prompt: bool  # HumanEval completes a function whose signature is in the prompt
    entry_point: str | None = None

    def program(self, completion: str) -> str:
        head = self.prompt + completion if self.prepend_prompt else completion
        return f"{head}\n\n{self.test_code}\n"


@dataclass(frozen=True)
class TaskSet:
    """The tasks to evaluate, and how many there were before an explicit `limit`, so reports can say so."""

    name: str
    split: str
    tasks: tuple[Task, ...]
    n_total: int
    limit: int | None = None
    _index: dict[str, Task] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({t.task_id: t for t in self.tasks})

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, task_id: str) -> Task:
        return self._index[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._index

    def normalize_id(self, task_id: object) -> str:
        """Completion files write MBPP ids as 11, "11" or "MBPP/11"; HumanEval ids as "HumanEval/0"."""
        text = str(task_id)
        if self.name == "mbpp" and text.startswith("MBPP/"):
            text = text.removeprefix("MBPP/")
        return text


def limit_tasks(name: str, split: str, tasks: list[Task], limit: int | None) -> TaskSet:
    """All `tasks`, or the first `limit` of them, said aloud: a limited evaluation must never pass for a full one."""
    total = len(tasks)
    if limit is not None:
        if limit < 1:
            raise TaskError(f"limit: expected a positive number of tasks or None for all, got {limit}")
        tasks = tasks[:limit]
        print(f"{name}/{split}: LIMIT {limit}: evaluating {len(tasks)} of {total} tasks", flush=True)
    return TaskSet(name, split, tuple(tasks), total, limit)


def read_jsonl(path: Path) -> list[tuple[str, object]]:
    """(where, object) per non-blank line of a .jsonl or .jsonl.gz file; `where` is "{path}: line N"."""
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                where = f"{path}: line {line_no}"
                try:
                    rows.append((where, json.loads(raw.decode("utf-8"))))
                except UnicodeDecodeError as e:
                    raise TaskError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise TaskError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    except (OSError, EOFError) as e:
        raise TaskError(f"{path}: not readable as {'gzip' if opener is gzip.open else 'text'} ({e})") from e
    return rows


def read_parquet(path: Path) -> list[tuple[str, object]]:
    """(where, row) per row of a Parquet file; `where` is "{path}: row N"."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise TaskError(f"{path}: not a readable Parquet file ({e})") from e
    return [(f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist())]


def table_rows(table: Table, what: str) -> list[tuple[str, object]]:
    """(where, row) per row of an already loaded table; `where` is "{what} table: row N"."""
    rows = table.to_dicts() if isinstance(table, pl.DataFrame) else table.to_pylist()
    return [(f"{what} table: row {i}", row) for i, row in enumerate(rows)]


def read_rows(source: str | Path | Table, what: str) -> list[tuple[str, object]]:
    """Rows of a .jsonl, .jsonl.gz or .parquet file, or of a loaded table, each with where it came from."""
    if isinstance(source, pa.Table | pl.DataFrame):
        return table_rows(source, what)
    path = Path(source)
    if not path.is_file():
        raise TaskError(f"{path}: {what} file not found")
    if path.name.endswith(".parquet"):
        return read_parquet(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path)
    raise TaskError(f"{path}: expected a .parquet, .jsonl or .jsonl.gz {what} file")
