"""Steps the source and data assets call, run without Dagster: counts and corpus of the raw rows, the tokenizer
they train, and the validators of processed rows and their index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from wmtp_core.data import demo
from wmtp_core.data.codecontests import count_solutions, tokenizer_corpus
from wmtp_core.data.index import INDEX_FILE, index_disagreements
from wmtp_core.data.prepare import validate_processed
from wmtp_core.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_source")
    for split, table in demo.demo_tables().items():
        pq.write_table(table, root / demo.hub_file_name(split))
    return root


def test_counts_and_corpus_cover_every_split_and_both_labels(demo_source):
    tables = demo.demo_tables()
    rows = [r for t in tables.values() for r in t.to_pylist()]
    counts = count_solutions(demo_source)
    assert counts == {
        "problems": len(rows),
        "correct_solutions": sum(len(r["solutions"]["solution"]) for r in rows),
        "incorrect_solutions": sum(len(r["incorrect_solutions"]["solution"]) for r in rows),
    }
    assert counts["incorrect_solutions"] > 0
    corpus = tokenizer_corpus(demo_source)
    assert len(corpus) == counts["problems"] + counts["correct_solutions"] + counts["incorrect_solutions"]
    some_incorrect = next(r["incorrect_solutions"]["solution"][0] for r in rows if r["incorrect_solutions"]["solution"])
    assert some_incorrect in corpus and rows[-1]["description"] in corpus


def test_train_tokenizer_command_trains_on_the_corpus(demo_source, tmp_path):
    from wmtp_core.data.cli import train_tokenizer_command

    out = CliRunner().invoke(train_tokenizer_command, [str(demo_source), str(tmp_path / "t.model"), "--vocab-size", "600"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    tok = Tokenizer(tmp_path / "t.model")
    assert summary["vocab_size"] == tok.vocab_size == 600
    assert summary["training_texts"] == len(tokenizer_corpus(demo_source))
    assert tok.decode(tok.encode("def f(x):\n\treturn x  # ü\n")) == "def f(x):\n\treturn x  # ü\n"
    bad = CliRunner().invoke(train_tokenizer_command, [str(tmp_path), str(tmp_path / "u.model")])
    assert bad.exit_code != 0


def test_validators_pass_good_files_and_name_each_fault(tmp_path, processed):
    out, _ = processed
    assert validate_processed(out, max_tokens=2048) == []
    assert index_disagreements(out, out / INDEX_FILE) == []
    too_long = validate_processed(out, max_tokens=5)
    assert too_long and all(p.endswith(".parquet: a row exceeds max_tokens=5") for p in too_long)

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    train = pq.read_table(broken / "train.parquet")
    shuffled = train.take(pa.array(list(range(1, train.num_rows)) + [0]))  # row_id no longer the position
    pq.write_table(shuffled, broken / "train.parquet")
    problems = validate_processed(broken, max_tokens=2048)
    assert problems == ["train.parquet: row_id is not the row position"]
    assert index_disagreements(broken, broken / INDEX_FILE) == ["train: index differs from train.parquet"]

    (broken / "valid.parquet").unlink()
    assert f"{broken / 'valid.parquet'}: missing" in validate_processed(broken, max_tokens=2048)


def test_check_processed_command_exits_1_on_a_fault(tmp_path, processed):
    from wmtp_core.data.cli import check_processed_command

    out, _ = processed
    good = CliRunner().invoke(check_processed_command, [str(out)])
    assert good.exit_code == 0 and json.loads(good.output.splitlines()[-1])["problems"] == 0
    bad = CliRunner().invoke(check_processed_command, [str(out), "--max-tokens", "5"])
    assert bad.exit_code == 1 and "exceeds max_tokens=5" in bad.output
