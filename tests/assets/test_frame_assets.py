"""Source and model assets materialized with Dagster into a temporary storage root, checks included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_defs.resources import build_resources
from tests.assets.conftest import FRAME_ASSETS, FRAME_CHECKS, materialize_frame
from wmtp_core import model as wm
from wmtp_core.data.codecontests_schema import SCHEMA
from wmtp_core.data.demo import demo_tables
from wmtp_core.data.tokenizer import Tokenizer
from wmtp_core.storage import MANIFEST, sha256_file, verify

LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


def _tree(storage: Path) -> dict[str, str]:
    return {
        p.relative_to(storage).as_posix(): sha256_file(p) for p in sorted(storage.rglob("*")) if p.is_file()
    }


def test_default_graph_materializes_with_passing_checks(frame):
    root, result = frame
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "codecontests_labels_agree": True,
        "codecontests_schema_matches": True,
        "tokenizer_matches_params": True,
        "base_model_consistent": True,
        "reference_model_consistent": True,
    }
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {a.key.to_user_string() for a in FRAME_ASSETS}
    for group, name in [("sources", "codecontests_raw"), ("sources", "tokenizer"), ("models", "base_model"),
                        ("models", "reference_model")]:  # fmt: skip
        manifest = verify(root / "storage" / group / name)
        assert manifest["files"], name


def test_raw_rows_are_the_demo_set_in_the_published_schema(frame):
    root, result = frame
    raw = root / "storage" / "sources" / "codecontests_raw"
    demo = demo_tables()
    for split, table in demo.items():
        stored = pq.read_table(raw / f"{split}-00000-of-00001.parquet")
        assert stored.schema.equals(SCHEMA, check_metadata=False)
        assert stored.to_pylist() == table.to_pylist()
    meta = result.asset_materializations_for_node("codecontests_raw")[0].metadata
    assert meta["count/problems"].value == sum(t.num_rows for t in demo.values()) >= 30
    assert meta["files"].data == {
        k: v["sha256"] for k, v in json.loads((raw / MANIFEST).read_text())["files"].items()
    }
    assert "| name | difficulty |" in meta["preview"].value


def test_tokenizer_is_trained_on_the_raw_text_and_models_share_its_vocab(frame):
    root, result = frame
    tok = Tokenizer(root / "storage" / "sources" / "tokenizer" / "tokenizer.model")
    assert tok.vocab_size == 1024 and (tok.bos_id, tok.eos_id) == (1, 2)
    assert (
        tok.decode(tok.encode("print(sum(map(int, input().split())))"))
        == "print(sum(map(int, input().split())))"
    )
    for name, heads in [("base_model", 4), ("reference_model", 1)]:
        model_dir = root / "storage" / "models" / name
        meta = wm.read_metadata(model_dir)
        assert meta["tokenizer_sha256"] == tok.sha256
        model = wm.load(model_dir)
        assert model.args.vocab_size == tok.vocab_size and model.args.n_future_tokens == heads
    tok_meta = result.asset_materializations_for_node("tokenizer")[0].metadata
    assert tok_meta["sha256"].value == tok.sha256


def test_micro_models_are_reproducible_from_their_seed(frame):
    root, _ = frame
    again = wm.make_micro("policy", 1024, seed=0).state_dict()
    stored = wm.load(root / "storage" / "models" / "base_model").state_dict()
    assert stored.keys() == again.keys()
    assert all((stored[k] == again[k]).all() for k in stored)


def test_given_llama2_tokenizer_is_verified_and_mismatched_models_fail_their_check(
    tmp_path, llama2_tokenizer, frame
):
    # Reuse the materialized raw rows and micro models (made for the trained 1024-piece tokenizer), then swap in
    # Llama-2's 32000-piece tokenizer: its own check passes, the models' vocabulary checks must fail.
    root, _ = frame
    shutil.copytree(root / "storage", tmp_path / "storage")
    params = f"tokenizer: {{path: {llama2_tokenizer}, sha256: {LLAMA2_SHA256}}}\n"
    result = materialize_frame(tmp_path, params, selection=["tokenizer"])
    assert result.success
    assert (
        tmp_path / "storage/sources/tokenizer/tokenizer.model"
    ).read_bytes() == llama2_tokenizer.read_bytes()
    checks = dg.materialize(
        [*FRAME_ASSETS, *FRAME_CHECKS],
        selection=dg.AssetSelection.checks_for_assets(*FRAME_ASSETS[2:]),
        resources=build_resources(tmp_path / "storage", tmp_path / "params.yaml"),
        raise_on_error=False,
    )
    evaluations = {e.check_name: e for e in checks.get_asset_check_evaluations()}
    assert set(evaluations) == {"base_model_consistent", "reference_model_consistent"}
    for e in evaluations.values():
        assert not e.passed
        assert "vocab_size 1024 != tokenizer vocab_size 32000" in e.metadata["problems"].value


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("tokenizer: {vocab: 1024}\n", "tokenizer.vocab: unknown key"),
        ("base_model: {seed: one}\n", "base_model.seed: Input should be a valid integer"),
        ("tokenizer: {path: /nonexistent/tokenizer.model, sha256: " + "a" * 64 + "}\n",
         "/nonexistent/tokenizer.model: tokenizer model file not found"),
        ("tokenizer: {path: LLAMA, sha256: " + "a" * 64 + "}\n", "does not match the expected " + "a" * 64),
    ],
)  # fmt: skip
def test_bad_params_stop_naming_the_key_or_file_and_leave_storage_untouched(
    tmp_path, frame, llama2_tokenizer, params, expected
):
    root, _ = frame
    shutil.copytree(root / "storage", tmp_path / "storage")
    before = _tree(tmp_path / "storage")
    params = params.replace("LLAMA", str(llama2_tokenizer))
    result = materialize_frame(tmp_path, params, selection=["tokenizer", "base_model"])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert expected in failure.step_failure_data.error.cause.message
    assert _tree(tmp_path / "storage") == before
    assert not [p for p in (tmp_path / "storage").rglob(".*tmp-*")]


def test_a_wrong_label_fails_the_label_check(tmp_path):
    # A published-layout source whose first correct solution is swapped with an incorrect one.
    raw = tmp_path / "published"
    raw.mkdir()
    table = demo_tables()["train"]
    rows = table.to_pylist()[:2]
    rows[0]["solutions"]["solution"][0] = rows[0]["incorrect_solutions"]["solution"][0]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), raw / "train-00000-of-00001.parquet")
    params = f"codecontests_raw: {{path: {raw}, splits: [train]}}\n"
    result = materialize_frame(tmp_path, params, selection=["codecontests_raw"])
    assert result.success  # the asset materializes; its check reports the disagreement
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "codecontests_labels_agree"
    ]
    assert not check.passed
    assert check.metadata["disagreements"].value >= 1
    assert f"{rows[0]['name']}: correct solution 0 is labelled correct" in check.metadata["details"].value
