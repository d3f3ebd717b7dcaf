import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import flip_byte
from wmtp_core.model import (
    CheckpointError,
    ModelArgs,
    Transformer,
    ValueHead,
    load,
    load_value_head,
    make_micro,
    read_metadata,
    save,
)
from wmtp_core.storage import MANIFEST, publish, read_manifest, sha256_file, write_manifest

ARGS = ModelArgs(dim=32, n_layers=4, n_heads=4, vocab_size=50, multiple_of=16, n_future_tokens=2)
TOKENS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model() -> Transformer:
    m = Transformer(ARGS)
    m.init_weights(torch.Generator().manual_seed(0))
    return m


@pytest.fixture
def saved(tmp_path, model) -> Path:
    out = tmp_path / "model"
    save(model, out, name="tiny", source={"kind": "test"}, tokenizer_sha256="ab" * 32)
    return out


@pytest.fixture
def sharded(tmp_path, model) -> Path:
    out = tmp_path / "sharded"
    save(model, out, name="tiny", source="test", max_shard_bytes=20_000)
    return out


def resum(model_dir: Path) -> None:
    """Re-hash after a deliberate edit, so the check under test (not the SHA256) is the one that fires."""
    write_manifest(model_dir)


def test_round_trip_keeps_every_weight_and_stores_no_rope(saved, model):
    loaded = load(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(loaded(TOKENS, all_heads=True), model(TOKENS, all_heads=True), rtol=0, atol=0)
    with safe_open(str(saved / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    assert stored == set(model.state_dict())
    assert not [k for k in stored if re.search("rope|freq", k)]


def test_model_directory_layout_and_metadata(saved, model):
    assert sorted(p.name for p in saved.iterdir()) == [
        MANIFEST,
        "metadata.json",
        "model.safetensors",
        "params.json",
    ]
    metadata = read_metadata(saved)
    assert metadata["name"] == "tiny"
    assert metadata["implementation"].startswith("wmtp_core.model.Transformer")
    assert metadata["parameter_count"] == model.num_parameters()
    assert metadata["dtype"] == "float32"
    assert metadata["files"] == ["model.safetensors"]
    assert metadata["source"] == {"kind": "test"}
    assert metadata["tokenizer_sha256"] == "ab" * 32
    assert metadata["value_head"] is None
    assert ModelArgs.from_json(saved / "params.json") == ARGS



def test_manifest_is_the_one_integrity_file_and_lists_every_file(tmp_path, model):
    head = ValueHead(ARGS.dim)
    head.init_weights(torch.Generator().manual_seed(3))
    save(model, tmp_path / "m", value_head=head, name="tiny", source="test", max_shard_bytes=20_000)
    names = {p.name for p in (tmp_path / "m").iterdir()}
    weights = read_metadata(tmp_path / "m")["files"]
    assert len(weights) > 1
    assert names == {
        MANIFEST, "params.json", "metadata.json", "model.safetensors.index.json", "value_head.safetensors", *weights
    }
    manifest = read_manifest(tmp_path / "m")
    assert manifest["files"] == {
        n: {"sha256": sha256_file(tmp_path / "m" / n), "bytes": (tmp_path / "m" / n).stat().st_size}
        for n in names - {MANIFEST}
    }
    assert manifest["counts"] == {"parameters": model.num_parameters(), "tensors": len(model.state_dict())}


def test_a_model_saved_inside_publish_has_one_manifest_with_the_assets_params(tmp_path, model):
    # What assets/models.py does: wm.save into publish's temporary directory.
    def write(tmp: Path) -> dict:
        save(model, tmp, name="base_model", source="micro", max_shard_bytes=20_000)
        return {"parameters": read_metadata(tmp)["parameter_count"]}

    out = tmp_path / "storage" / "models" / "base_model"
    manifest = publish(out, write, params={"source": "micro", "seed": 0})
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.name == MANIFEST] == [MANIFEST]
    assert not [p for p in out.rglob("*") if "SHA256" in p.name.upper()]
    assert manifest == read_manifest(out)
    assert manifest["params"] == {"source": "micro", "seed": 0}
    assert manifest["counts"] == {"parameters": model.num_parameters(), "tensors": len(model.state_dict())}
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {MANIFEST}
    torch.testing.assert_close(load(out)(TOKENS), model(TOKENS), rtol=0, atol=0)


def test_sharded_round_trip_with_index(sharded, model):
    metadata = read_metadata(sharded)
    assert len(metadata["files"]) > 2
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert set(index["weight_map"].values()) == set(metadata["files"])
    torch.testing.assert_close(load(sharded)(TOKENS), model(TOKENS), rtol=0, atol=0)


def test_save_in_bfloat16_and_load_in_another_dtype(tmp_path, model):
    save(model, tmp_path / "bf16", name="tiny", source="test", dtype="bfloat16")
    assert read_metadata(tmp_path / "bf16")["dtype"] == "bfloat16"
    assert load(tmp_path / "bf16").output.weight.dtype == torch.bfloat16
    assert load(tmp_path / "bf16", dtype=torch.float32).output.weight.dtype == torch.float32


def test_loaded_model_trains(saved):
    loaded = load(saved)
    loaded(TOKENS, all_heads=True).sum().backward()
    assert all(p.requires_grad and p.grad is not None for p in loaded.parameters())


def test_value_head_is_stored_apart_and_round_trips(tmp_path, model):
    head = ValueHead(ARGS.dim)
    head.init_weights(torch.Generator().manual_seed(3))
    save(model, tmp_path / "m", value_head=head, name="tiny", source="test")
    assert set(load_file(tmp_path / "m" / "value_head.safetensors")) == {"proj.weight", "proj.bias"}
    assert not [k for k in load_file(tmp_path / "m" / "model.safetensors") if "proj" in k]
    info = read_metadata(tmp_path / "m")["value_head"]
    assert info["file"] == "value_head.safetensors" and info["dim"] == ARGS.dim
    loaded = load_value_head(tmp_path / "m")
    values = loaded(model.norm(model.trunk(TOKENS)))
    assert values.shape == (2, 7)
    torch.testing.assert_close(values, head(model.norm(model.trunk(TOKENS))), rtol=0, atol=0)


def test_load_value_head_of_a_directory_without_one_names_it(saved):
    with pytest.raises(CheckpointError, match="metadata.json.*no value head"):
        load_value_head(saved)


def test_truncated_file_names_file_and_tensor(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ bytes, manifest expects \d+"):
        load(saved)
    # Without the manifest check the header reader still names the tensor that runs past the end.
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated: tensor '[\w.]+'"):
        load(saved, verify=False)


def test_tampered_weights_fail_to_load_naming_the_file(saved):
    path = saved / "model.safetensors"
    flip_byte(path)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: SHA256 [0-9a-f]{{64}} does not match manifest"):
        load(saved)


def test_tampered_value_head_fails_its_load_without_hashing_the_policy(tmp_path, model, monkeypatch):
    head = ValueHead(ARGS.dim)
    save(model, tmp_path / "m", value_head=head, name="tiny", source="test")
    hashed = []
    monkeypatch.setattr("wmtp_core.storage.sha256_file", lambda p: hashed.append(Path(p).name) or sha256_file(p))
    load_value_head(tmp_path / "m")
    assert sorted(hashed) == ["metadata.json", "value_head.safetensors"]
    path = tmp_path / "m" / "value_head.safetensors"
    flip_byte(path, -1)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: SHA256 .* does not match manifest"):
        load_value_head(tmp_path / "m")


def test_load_hashes_each_file_once_and_verify_false_hashes_none(saved, monkeypatch):
    hashed = []
    monkeypatch.setattr("wmtp_core.storage.sha256_file", lambda p: hashed.append(Path(p).name) or sha256_file(p))
    load(saved)
    assert sorted(hashed) == ["metadata.json", "model.safetensors", "params.json"]
    hashed.clear()
    load(saved, verify=False)
    assert hashed == []


def test_corrupted_header_names_the_file(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{{"
    path.write_bytes(bytes(data))
    resum(saved)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header"):
        load(saved)


def test_missing_shard_names_the_file_and_its_tensors(sharded):
    shard = read_metadata(sharded)["files"][1]
    (sharded / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"{shard}: listed in .*{MANIFEST} but missing"):
        load(sharded)
    with pytest.raises(CheckpointError, match=rf"{shard}: shard missing \(holds '[\w.]+'"):
        load(sharded, verify=False)


def test_a_stray_file_in_a_model_directory_is_named(saved):
    (saved / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(saved))}: files not in the manifest: notes\.txt"):
        load(saved)


def test_missing_tensor_names_the_key(saved):
    path = saved / "model.safetensors"
    state = load_file(path)
    del state["extra_heads.0.ffn_norm.weight"]
    save_file(state, path)
    resum(saved)
    with pytest.raises(
        CheckpointError, match="missing tensor.*'extra_heads.0.ffn_norm.weight'.*model.safetensors"
    ):
        load(saved)


def test_unexpected_tensor_names_file_and_key(saved):
    path = saved / "model.safetensors"
    state = load_file(path)
    state["rope.freqs"] = torch.ones(4)
    save_file(state, path)
    resum(saved)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor 'rope\.freqs'"):
        load(saved)


def test_wrong_shape_names_file_key_and_shapes(saved):
    path = saved / "model.safetensors"
    state = load_file(path)
    state["layers.1.attention.wk.weight"] = torch.zeros(16, 32)
    save_file(state, path)
    resum(saved)
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: tensor 'layers\.1\.attention\.wk\.weight' has shape \[16, 32\], .* \[32, 32\]",
    ):
        load(saved)


def test_edited_params_json_fails_the_manifest_check(saved):
    params = json.loads((saved / "params.json").read_text())
    params["norm_eps"] = 1e-7  # same length: only the SHA256 can tell
    (saved / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    assert (saved / "params.json").stat().st_size == read_manifest(saved)["files"]["params.json"]["bytes"]
    with pytest.raises(CheckpointError, match=r"params\.json: SHA256 .* does not match"):
        load(saved)


def test_missing_directory_and_missing_manifest_are_named(tmp_path, saved):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nowhere")
    (saved / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=f"{MANIFEST}: manifest missing"):
        load(saved)


def test_failed_save_leaves_the_previous_checkpoint_intact(saved, model):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    broken = Transformer(ARGS)
    broken.init_weights(torch.Generator().manual_seed(9))
    # A parameter with no data (meta device) fails the write part-way, after earlier tensors hit the disk.
    broken.extra_heads[0].ffn_norm.weight = torch.nn.Parameter(torch.empty(ARGS.dim, device="meta"))
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for a meta tensor's data
        save(broken, saved, name="broken", source="test")
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]
    torch.testing.assert_close(load(saved)(TOKENS), model(TOKENS), rtol=0, atol=0)


@pytest.mark.parametrize("kind, heads", [("policy", 4), ("reference", 1)])
def test_micro_models_are_small_seeded_and_sized_by_the_vocabulary(kind, heads):
    a, b, c = make_micro(kind, 300, seed=1), make_micro(kind, 300, seed=1), make_micro(kind, 300, seed=2)
    assert a.n_future == heads and a.args.vocab_size == 300 and a.args.dim <= 512
    assert a.output.weight.shape == (300, a.args.dim)
    if kind == "policy":
        assert a.n_trunk_layers >= 2
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.output.weight, c.output.weight)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    make_micro(kind, 300, seed=1)
    assert torch.equal(torch.rand(1), before)  # the global RNG is left alone


def test_micro_policy_with_the_llama2_vocabulary_round_trips(tmp_path, llama2_tokenizer):
    from wmtp_core.tokenizer import Tokenizer

    tok = Tokenizer(llama2_tokenizer)
    model = make_micro("policy", tok.vocab_size, seed=0)
    save(model, tmp_path / "p", name="micro-policy", source="micro", tokenizer_sha256=tok.sha256)
    ids = torch.tensor([tok.encode("def add(a, b):\n    return a + b", bos=True)])
    torch.testing.assert_close(load(tmp_path / "p")(ids, all_heads=True), model(ids, all_heads=True))
    assert read_metadata(tmp_path / "p")["tokenizer_sha256"] == tok.sha256
