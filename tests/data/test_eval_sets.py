"""MBPP and HumanEval from the real published files."""

from __future__ import annotations

import collections
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from wmtp_core.data.humaneval import prepare_humaneval, read_humaneval
from wmtp_core.data.mbpp import BUNDLED_MBPP, prepare_mbpp, read_mbpp
from wmtp_core.storage import verify


def test_mbpp_jsonl_splits(tmp_path, mbpp_jsonl):
    counts = prepare_mbpp(mbpp_jsonl, tmp_path / "mbpp")
    assert counts == {"rows": 974, "prompt": 10, "test": 500, "validation": 90, "train": 374}
    verify(tmp_path / "mbpp")
    table = pq.read_table(tmp_path / "mbpp" / "mbpp.parquet")
    assert table["task_id"].to_pylist() == list(range(1, 975))
    first = table.slice(0, 1).to_pylist()[0]
    assert first["split"] == "prompt" and first["text"].startswith("Write a function to find the minimum cost path")
    assert "\r\n" in first["code"] and len(first["test_list"]) == 3
    splits = table["split"].to_pylist()
    assert splits[10] == "test" and splits[509] == "test" and splits[510] == "validation" and splits[600] == "train"


def test_shipped_mbpp_is_the_published_file(mbpp_jsonl):
    # The product's default needs no ../shared: it ships the published file byte for byte (see bundled/README.md).
    shipped = hashlib.sha256(BUNDLED_MBPP.read_bytes()).hexdigest()
    assert shipped == hashlib.sha256(mbpp_jsonl.read_bytes()).hexdigest()
    assert shipped == "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"
    assert read_mbpp(BUNDLED_MBPP).num_rows == 974


def test_mbpp_hf_parquet_layout(tmp_path, mbpp_jsonl):
    table = read_mbpp(mbpp_jsonl)
    full = tmp_path / "mbpp" / "full"
    full.mkdir(parents=True)
    for split in ("train", "test", "validation", "prompt"):
        part = table.filter(pa.compute.equal(table["split"], split)).drop_columns(["split"])
        part = part.set_column(0, "task_id", part["task_id"].cast(pa.int32()))  # the hub stores int32
        pq.write_table(part, full / f"{split}-00000-of-00001.parquet")
    assert read_mbpp(tmp_path / "mbpp").equals(table)
    assert collections.Counter(read_mbpp(full / "prompt-00000-of-00001.parquet")["split"].to_pylist()) == {"prompt": 10}


def test_humaneval_from_package(tmp_path):
    assert prepare_humaneval(None, tmp_path / "he") == {"rows": 164}
    table = pq.read_table(tmp_path / "he" / "humaneval.parquet")
    assert table.column_names == ["task_id", "prompt", "entry_point", "canonical_solution", "test"]
    assert table["task_id"].to_pylist()[0] == "HumanEval/0" and table["task_id"].to_pylist()[-1] == "HumanEval/163"
    assert table.equals(read_humaneval())
