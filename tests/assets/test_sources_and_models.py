"""Source and model assets materialized with Dagster into a temporary storage root, checks included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dagster_defs.resources import build_resources
from tests.assets.conftest import FRAME_ASSETS, FRAME_CHECKS, materialize_frame
from tests.conftest import LLAMA2_SHA256, write_gguf_tokenizer
from wmtp_core import model as wm
from wmtp_core.data.codecontests_schema import SCHEMA
from wmtp_core.data.demo import demo_tables
from wmtp_core.model.convert import export_hf
from wmtp_core.storage import MANIFEST, sha256_file, verify
from wmtp_core.tokenizer import Tokenizer


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


def test_tokenizer_from_a_gguf_file_is_stored_as_its_canonical_tokenizer_json(tmp_path):
    # Only the tokenizer asset and its check: a given tokenizer reads no raw rows, so nothing else is needed.
    gguf_file = write_gguf_tokenizer(tmp_path / "tiny.gguf")
    identity = Tokenizer(gguf_file).sha256
    result = materialize_frame(
        tmp_path, f"tokenizer: {{path: {gguf_file}, sha256: {identity}}}\n", selection=["tokenizer"]
    )
    assert result.success
    stored = tmp_path / "storage/sources/tokenizer"
    assert sorted(p.name for p in stored.iterdir()) == [MANIFEST, "tokenizer.json"]
    assert sha256_file(stored / "tokenizer.json") == identity == Tokenizer.from_directory(stored).sha256
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        "tokenizer_matches_params": True
    }
    meta = result.asset_materializations_for_node("tokenizer")[0].metadata
    assert meta["kind"].value == "bpe" and meta["sha256"].value == identity
    assert "given bpe tokenizer `tokenizer.json`" in meta["preview"].value
    assert "| def |" in meta["preview"].value  # pieces as the vocabulary writes them


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
    # check_limit 1: only the first problem (the mislabelled one) is executed, and the check says so.
    params = f"codecontests_raw: {{path: {raw}, splits: [train], check_limit: 1}}\n"
    result = materialize_frame(tmp_path, params, selection=["codecontests_raw"])
    # The asset is written, but its blocking check fails the run, so nothing downstream would use these rows.
    assert not result.success
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "codecontests_labels_agree"
    ]
    assert not check.passed
    assert check.metadata["disagreements"].value >= 1
    assert (check.metadata["problems_checked"].value, check.metadata["problems"].value) == (1, 2)
    assert f"{rows[0]['name']}: correct solution 0 is labelled correct" in check.metadata["details"].value


def _meta_checkpoint(directory: Path, vocab_size: int) -> dict:
    """Meta's layout (consolidated.pth + params.json with vocab_size -1) of a seeded micro policy."""
    directory.mkdir(parents=True)
    state = {k: v.clone() for k, v in wm.make_micro("policy", vocab_size, seed=7).state_dict().items()}
    torch.save(state, directory / "consolidated.pth")
    args = wm.micro_args("policy", vocab_size).to_dict()
    keep = ("dim", "n_layers", "n_heads", "n_future_tokens", "multiple_of", "norm_eps", "rope_theta")
    (directory / "params.json").write_text(json.dumps({**{k: args[k] for k in keep}, "vocab_size": -1}))
    return state


def test_converted_meta_and_hf_weights_become_the_models(tmp_path, frame):
    root, _ = frame
    shutil.copytree(root / "storage", tmp_path / "storage")
    meta_state = _meta_checkpoint(tmp_path / "meta", 1024)
    reference = wm.make_micro("reference", 1024, seed=9)
    wm.save(reference, tmp_path / "ours", name="ref", source="micro")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    params = (
        f"base_model: {{source: meta, meta_dir: {tmp_path / 'meta'}, dtype: float32}}\n"
        f"reference_model: {{source: hf, hf_dir: {tmp_path / 'hf'}, dtype: float32}}\n"
    )
    result = materialize_frame(tmp_path, params, selection=["base_model", "reference_model"])
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"base_model_consistent": True, "reference_model_consistent": True}
    base = wm.load(tmp_path / "storage/models/base_model").state_dict()
    assert all(torch.equal(base[k], meta_state[k]) for k in meta_state)
    assert wm.read_metadata(tmp_path / "storage/models/base_model")["source"]["format"] == "meta-consolidated"
    imported = wm.load(tmp_path / "storage/models/reference_model").state_dict()
    assert all(torch.equal(imported[k], v) for k, v in reference.state_dict().items())


def test_converted_weights_with_another_vocabulary_fail_the_model_check(tmp_path, frame):
    root, _ = frame
    shutil.copytree(root / "storage", tmp_path / "storage")
    _meta_checkpoint(tmp_path / "meta", 300)  # the stored tokenizer has 1024 pieces
    params = f"base_model: {{source: meta, meta_dir: {tmp_path / 'meta'}, dtype: float32}}\n"
    result = materialize_frame(tmp_path, params, selection=["base_model"])
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert "model vocab_size 300 != tokenizer vocab_size 1024" in check.metadata["problems"].value
