"""MBPP from the published mbpp.jsonl (and the copy shipped with wmtp), the hub's Parquet layout and tables."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wmtp_core.tasks.mbpp import BUNDLED_MBPP, MBPP_STOP, mbpp_split, mbpp_tasks, read_mbpp
from wmtp_core.tasks.taskset import TaskError


def test_shipped_mbpp_is_the_published_file(mbpp_jsonl: Path) -> None:
    # The product's default needs no ../shared: it ships the published file byte for byte (see bundled/README.md).
    shipped = hashlib.sha256(BUNDLED_MBPP.read_bytes()).hexdigest()
    assert shipped == hashlib.sha256(mbpp_jsonl.read_bytes()).hexdigest()
    assert shipped == "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"
    assert read_mbpp(BUNDLED_MBPP).num_rows == 974
    assert mbpp_tasks().tasks == mbpp_tasks(mbpp_jsonl).tasks  # no source: the shipped copy


def test_standard_splits(mbpp_jsonl: Path) -> None:
    sizes = {split: len(mbpp_tasks(mbpp_jsonl, split=split)) for split in ("prompt", "test", "validation", "train")}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    test = mbpp_tasks(mbpp_jsonl)
    assert test.tasks[0].task_id == "11" and test.tasks[-1].task_id == "510"
    assert [mbpp_split(i) for i in (1, 10, 11, 510, 511, 600, 601, 974)] == [
        "prompt", "prompt", "test", "test", "validation", "validation", "train", "train"]  # fmt: skip
    table = read_mbpp(mbpp_jsonl)
    assert table["task_id"].to_pylist() == list(range(1, 975))
    first = table.slice(0, 1).to_pylist()[0]
    assert first["split"] == "prompt" and first["text"].startswith("Write a function to find the minimum cost path")
    assert "\r\n" in first["code"] and len(first["test_list"]) == 3


def test_prompt_has_problem_text_and_its_three_asserts(mbpp_jsonl: Path) -> None:
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


def test_test_setup_code_runs_before_the_asserts(mbpp_jsonl: Path) -> None:
    task = mbpp_tasks(mbpp_jsonl, split="train")["927"]
    rows = {r["task_id"]: r for r in map(json.loads, mbpp_jsonl.read_text().splitlines())}
    setup = rows[927]["test_setup_code"]
    assert setup and task.test_code.index(setup) < task.test_code.index(rows[927]["test_list"][0])


def test_tasks_from_parquet_file_and_tables(mbpp_jsonl: Path, tmp_path: Path) -> None:
    table = read_mbpp(mbpp_jsonl)
    pq.write_table(table, tmp_path / "mbpp.parquet")  # what mbpp_processed stores
    expected = mbpp_tasks(mbpp_jsonl).tasks
    assert mbpp_tasks(tmp_path / "mbpp.parquet").tasks == expected
    assert mbpp_tasks(pl.from_arrow(table)).tasks == expected
    assert read_mbpp(tmp_path / "mbpp.parquet").equals(table)


def test_hub_parquet_layout(tmp_path: Path, mbpp_jsonl: Path) -> None:
    table = read_mbpp(mbpp_jsonl)
    full = tmp_path / "mbpp" / "full"
    full.mkdir(parents=True)
    for split in ("train", "test", "validation", "prompt"):
        part = table.filter(pa.compute.equal(table["split"], split)).drop_columns(["split"])
        part = part.set_column(0, "task_id", part["task_id"].cast(pa.int32()))  # the hub stores int32
        pq.write_table(part, full / f"{split}-00000-of-00001.parquet")
    assert read_mbpp(tmp_path / "mbpp").equals(table)
    assert collections.Counter(read_mbpp(full / "prompt-00000-of-00001.parquet")["split"].to_pylist()) == {"prompt": 10}
    (full / "prompt-00000-of-00001.parquet").rename(full / "test-00001-of-00002.parquet")
    with pytest.raises(TaskError, match=r"test-00001-of-00002\.parquet: row 0: task_id 1 belongs to split 'prompt'"):
        read_mbpp(tmp_path / "mbpp")
    with pytest.raises(TaskError, match=r"test-00001-of-00002\.parquet: row 0: task_id 1 belongs to split 'prompt'"):
        read_mbpp(full / "test-00001-of-00002.parquet")


def test_errors_name_the_file_row_and_key(mbpp_jsonl: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in mbpp_jsonl.read_text().splitlines()]
    bad_split = pl.DataFrame(rows).with_columns(pl.lit("train").alias("split"))
    with pytest.raises(TaskError, match=r"MBPP table: row 0: task 1 has split 'train', the standard split is 'prompt'"):
        mbpp_tasks(bad_split)
    with pytest.raises(TaskError, match=r"MBPP table: row 0: field 'test_list' missing"):
        mbpp_tasks(pl.DataFrame(rows).drop("test_list"))
    with pytest.raises(TaskError, match="needs prompt-split task 2"):
        mbpp_tasks(pl.DataFrame([r for r in rows if r["task_id"] > 10]), shots=3)
    with pytest.raises(TaskError, match=r"split: expected one of \['prompt', 'test', 'validation', 'train'\]"):
        mbpp_tasks(mbpp_jsonl, split="dev")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(TaskError, match=r"broken\.jsonl: line 2: malformed JSON"):
        mbpp_tasks(broken)


def test_invalid_utf8_and_duplicate_task(tmp_path: Path, mbpp_jsonl: Path) -> None:
    lines = mbpp_jsonl.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "mbpp.jsonl"
    bad.write_bytes(b"".join(lines[:4]) + lines[4].replace(b"Write", b"Wr\xffite", 1) + b"".join(lines[5:]))
    with pytest.raises(TaskError, match=r"line 5: invalid UTF-8"):
        read_mbpp(bad)
    bad.write_bytes(b"".join(lines) + lines[0])
    with pytest.raises(TaskError, match="task_id 1 appears more than once"):
        read_mbpp(bad)
