"""codecontests_processed from a hub-schema fixture, with n_tokens counted by the real Llama-2 tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from tests.data.cc_fixture import ADD, SUB, write_hub_files
from wmtp_core.data.cli import prepare_codecontests_command
from wmtp_core.data.index import INDEX_COLUMNS, read_index
from wmtp_core.data.prepare import PROCESSED_SCHEMA, prepare_codecontests
from wmtp_core.data.prompts import format_examples, format_prompt
from wmtp_core.storage import verify


def rows(out: Path, split: str) -> list[dict]:
    return pq.read_table(out / f"{split}.parquet").to_pylist()


def test_one_row_per_python_solution_with_task_ids(processed):
    out, _ = processed
    train = rows(out, "train")
    assert [r["task_id"] for r in train] == [
        "1000_A. Sum_correct_0", "1000_A. Sum_correct_2", "1000_A. Sum_incorrect_0", "1000_A. Sum_incorrect_2",
        "1001_B. Long_correct_0", "1001_B. Long_incorrect_0",
    ]  # fmt: skip
    assert [r["row_id"] for r in train] == list(range(6))
    assert [r["is_correct"] for r in train] == [True, True, False, False, True, False]
    assert [r["language"] for r in train] == [3, 1, 3, 3, 3, 3]
    assert train[0]["output"] == ADD and train[2]["output"] == SUB and train[3]["output"] == ADD
    assert train[0]["problem_id"] == "1000_A. Sum" and train[0]["instruction"] == "Print the sum of two integers a and b."
    assert (train[0]["difficulty"], train[0]["source"], train[0]["cf_rating"]) == (7, 2, 800)
    assert train[4]["cf_rating"] == 1200 and train[4]["input"] == ""
    assert pq.read_schema(out / "train.parquet").remove_metadata() == PROCESSED_SCHEMA.remove_metadata()


def test_input_shows_at_most_two_public_tests(processed):
    first = rows(processed[0], "train")[0]
    assert first["input"] == format_examples(["1 2\n", "5 7\n"], ["3\n", "12\n"])
    assert "Example 2" in first["input"] and "0 0" not in first["input"]


def test_n_tokens_counts_the_exact_training_text(processed, llama2):
    for row in rows(processed[0], "train") + rows(processed[0], "valid"):
        text = format_prompt(row["instruction"], row["input"])
        expected = 1 + len(llama2.encode(text)) + len(llama2.encode(row["output"])) + 1
        assert row["n_tokens"] == expected, row["task_id"]


def test_drops_are_counted(processed):
    _, stats = processed
    train = stats["splits"]["train"]
    assert train["rows"] == 6 and train["correct"] == 3 and train["incorrect"] == 3
    assert train["non_python"] == 3  # C++ in 1000_A and 1004_E, Java in 1000_A
    assert train["dropped_empty"] == 2
    assert train["dropped_duplicate"] == 1
    assert train["dropped_too_long"] == 1
    assert train["dropped_cross_split_problems"] == 2 and train["dropped_cross_split_rows"] == 2
    assert train["problems"] == 3  # 1000_A, 1001_B, 1004_E
    assert stats["splits"]["valid"]["rows"] == 2 and stats["splits"]["test"]["rows"] == 2
    assert stats["total"]["rows"] == 10
    assert train["difficulty"] == {"A": 4, "B": 2}
    assert train["n_tokens"]["max"] <= 2048


def test_no_problem_in_two_splits(processed):
    out, _ = processed
    names = {split: {r["problem_id"] for r in rows(out, split)} for split in ("train", "valid", "test")}
    assert names["test"] == {"1002_C. Leak", "3000_A. Product"}
    assert not names["train"] & names["test"] and not names["train"] & names["valid"]
    assert not names["valid"] & names["test"]


def test_files_stats_schema_histogram_index_and_manifest(processed):
    out, stats = processed
    verify(out)
    assert json.loads((out / "stats.json").read_text()) == json.loads(json.dumps(stats))
    schema = json.loads((out / "schema.json").read_text())
    assert [c["name"] for c in schema["columns"]] == PROCESSED_SCHEMA.names
    assert (out / "n_tokens_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = read_index(out / "index.parquet")
    assert index.column_names == ["split", *INDEX_COLUMNS] and index.num_rows == 10
    train = read_index(out / "index.parquet", split="train")
    assert train["row_id"].to_pylist() == list(range(6))
    assert train["n_tokens"].to_pylist() == [r["n_tokens"] for r in rows(out, "train")]
    assert read_index(out / "index.parquet", split="nonexistent").num_rows == 0


def test_max_tokens_drops_more_rows(tmp_path, llama2):
    source = write_hub_files(tmp_path / "source")
    stats = prepare_codecontests(source, tmp_path / "out", llama2, max_tokens=40, progress=False)
    kept = rows(tmp_path / "out", "train")
    assert all(r["n_tokens"] <= 40 for r in kept)
    assert stats["splits"]["train"]["dropped_too_long"] == 7 - len(kept)


def test_cli_prepare_codecontests(tmp_path, llama2_tokenizer):
    source = write_hub_files(tmp_path / "source")
    runner = CliRunner()
    assert "--tokenizer" in runner.invoke(prepare_codecontests_command, ["--help"]).output
    result = runner.invoke(
        prepare_codecontests_command,
        [str(source), str(tmp_path / "out"), "--tokenizer", str(llama2_tokenizer), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["rows"] == 10
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "MANIFEST.json", "index.parquet", "n_tokens_hist.png", "schema.json", "stats.json", "test.parquet",
        "train.parquet", "valid.parquet",
    ]  # fmt: skip
