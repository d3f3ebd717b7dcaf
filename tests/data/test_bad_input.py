"""Every schema violation stops with file, row and field named, and leaves no partial asset behind."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.cc_fixture import fixture_problems, write_hub_files
from wmtp_core.data.codecontests import CodeContestsError, find_split_files
from wmtp_core.data.codecontests_schema import SCHEMA
from wmtp_core.data.eval_sets import prepare_humaneval, prepare_mbpp
from wmtp_core.data.prepare import prepare_codecontests
from wmtp_core.tasks.taskset import TaskError


def _prepare_fails(tmp_path: Path, source: Path, llama2, match: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("the previous version")
    with pytest.raises(CodeContestsError, match=match):
        prepare_codecontests(source, out, llama2, progress=False)
    # The previous version is untouched and no temporary sibling is left.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]


def test_missing_field(tmp_path, llama2):
    schema = SCHEMA.remove(SCHEMA.get_field_index("difficulty"))
    problems = {s: [{k: v for k, v in p.items() if k != "difficulty"} for p in ps] for s, ps in fixture_problems().items()}
    source = write_hub_files(tmp_path / "src", problems, schema)
    _prepare_fails(tmp_path, source, llama2, r"test-00000-of-00001\.parquet: field 'difficulty' missing")


def test_mistyped_field(tmp_path, llama2):
    schema = SCHEMA.set(SCHEMA.get_field_index("cf_rating"), pa.field("cf_rating", pa.string()))
    problems = {s: [{**p, "cf_rating": str(p["cf_rating"])} for p in ps] for s, ps in fixture_problems().items()}
    source = write_hub_files(tmp_path / "src", problems, schema)
    _prepare_fails(tmp_path, source, llama2, r"field 'cf_rating' has type string, expected int32")


def test_language_outside_enum(tmp_path, llama2):
    problems = fixture_problems()
    problems["train"][1]["incorrect_solutions"]["language"] = [9]
    source = write_hub_files(tmp_path / "src", problems)
    _prepare_fails(
        tmp_path, source, llama2,
        r"train-00000-of-00001\.parquet: row 1 \(problem '1001_B\. Long'\), field 'incorrect_solutions\.language': "
        r"code 9 is outside",
    )  # fmt: skip


def test_invalid_utf8(tmp_path, llama2):
    source = write_hub_files(tmp_path / "src")
    path = source / "valid-00000-of-00001.parquet"
    table = pq.read_table(path)
    solutions = table["solutions"].combine_chunks()
    texts = pa.array([b"print(1)\n\xff\xfe"], pa.binary()).view(pa.string())
    broken = pa.StructArray.from_arrays(
        [solutions.field("language"), pa.ListArray.from_arrays(pa.array([0, 1], pa.int32()), texts)],
        names=["language", "solution"],
    )
    pq.write_table(table.set_column(table.schema.get_field_index("solutions"), "solutions", broken), path)
    _prepare_fails(
        tmp_path, source, llama2,
        r"valid-00000-of-00001\.parquet: row 0 \(problem '2000_A\. Valid'\), field 'solutions\.solution': invalid UTF-8",
    )  # fmt: skip


def test_null_required_field(tmp_path, llama2):
    problems = fixture_problems()
    problems["test"][1]["description"] = None
    source = write_hub_files(tmp_path / "src", problems)
    _prepare_fails(tmp_path, source, llama2, r"test-00000-of-00001\.parquet: row 1 .*field 'description': null")


def test_misnamed_and_missing_files(tmp_path, llama2):
    source = write_hub_files(tmp_path / "src")
    shutil.copy(source / "train-00000-of-00001.parquet", source / "train.parquet")
    with pytest.raises(CodeContestsError, match=r"train\.parquet: not a hub-named"):
        find_split_files(source)
    with pytest.raises(CodeContestsError, match="no CodeContests Parquet files"):
        find_split_files(tmp_path)
    (source / "train.parquet").unlink()
    (source / "test-00000-of-00001.parquet").write_bytes(b"not parquet")
    _prepare_fails(tmp_path, source, llama2, r"test-00000-of-00001\.parquet: not a readable Parquet file")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"text": "x", "code": ', r"line 3: malformed JSON"),
        ('{"text": "x", "code": "y", "task_id": 3}', r"line 3: field 'test_list' missing"),
        ('{"text": 1, "code": "y", "task_id": 3, "test_setup_code": "", "test_list": [], "challenge_test_list": []}',
         r"line 3: field 'text' is int, expected str"),
        ('[1, 2]', r"line 3: expected a JSON object"),
    ],
)  # fmt: skip
def test_mbpp_bad_lines(tmp_path, mbpp_jsonl, line, match):
    lines = mbpp_jsonl.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "mbpp.jsonl"
    bad.write_bytes(b"".join(lines[:2]) + line.encode() + b"\n" + b"".join(lines[3:]))
    with pytest.raises(TaskError, match=rf"mbpp\.jsonl: {match}"):
        prepare_mbpp(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["mbpp.jsonl"]


def test_humaneval_bad_file(tmp_path):
    bad = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"task_id": "HumanEval/0", "prompt": "def f():\\n", "entry_point": "f", "test": ""}\n')
    with pytest.raises(TaskError, match=r"line 1: field 'canonical_solution' missing"):
        prepare_humaneval(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
