"""The evaluation sets prepared for the data assets from the real published files."""

from __future__ import annotations

import pyarrow.parquet as pq

from wmtp_core.data.eval_sets import prepare_humaneval, prepare_mbpp
from wmtp_core.storage import verify
from wmtp_core.tasks.humaneval import read_humaneval
from wmtp_core.tasks.mbpp import BUNDLED_MBPP, read_mbpp


def test_mbpp_jsonl_splits(tmp_path, mbpp_jsonl):
    counts = prepare_mbpp(mbpp_jsonl, tmp_path / "mbpp")
    assert counts == {"rows": 974, "prompt": 10, "test": 500, "validation": 90, "train": 374}
    verify(tmp_path / "mbpp")
    table = pq.read_table(tmp_path / "mbpp" / "mbpp.parquet")
    assert table.equals(read_mbpp(mbpp_jsonl))
    splits = table["split"].to_pylist()
    assert splits[10] == "test" and splits[509] == "test" and splits[510] == "validation" and splits[600] == "train"


def test_mbpp_from_the_shipped_copy(tmp_path):
    assert prepare_mbpp(BUNDLED_MBPP, tmp_path / "mbpp")["rows"] == 974


def test_humaneval_from_package(tmp_path):
    assert prepare_humaneval(None, tmp_path / "he") == {"rows": 164}
    verify(tmp_path / "he")
    table = pq.read_table(tmp_path / "he" / "humaneval.parquet")
    assert table.column_names == ["task_id", "prompt", "entry_point", "canonical_solution", "test"]
    assert table.equals(read_humaneval())
