import json
import re
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import flip_byte
from wmtp_core.model import CheckpointError, ModelArgs, Transformer, load, make_micro, read_metadata, save
from wmtp_core.model.cli import commands
from wmtp_core.model.convert import convert_meta, export_hf, import_hf, permute_hf_to_meta, permute_meta_to_hf
from wmtp_core.storage import MANIFEST, verify

# What Meta's 7B_1T_4 params.json looks like, shrunk; vocab_size -1 as in Llama 2's release.
META_PARAMS = {
    "dim": 64,
    "n_layers": 5,
    "n_heads": 4,
    "n_future_tokens": 3,
    "multiple_of": 32,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "vocab_size": -1,
}
VOCAB = 61
TOKENS = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


def meta_checkpoint(directory: Path, *, extra: dict | None = None, drop: str | None = None) -> dict:
    """A consolidated.pth in Meta's layout: plain state dict, float16, with the `rope.freqs` Meta keeps."""
    directory.mkdir(parents=True, exist_ok=True)
    args = ModelArgs.from_dict({**META_PARAMS, "vocab_size": VOCAB})
    model = Transformer(args)
    model.init_weights(torch.Generator().manual_seed(4))
    state = {k: v.half() for k, v in model.state_dict().items()}
    head_dim = args.head_dim
    state["rope.freqs"] = (1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))).half()
    state.update(extra or {})
    if drop:
        del state[drop]
    torch.save(state, directory / "consolidated.pth")
    (directory / "params.json").write_text(json.dumps(META_PARAMS))
    return state


def tiny_hf(**overrides) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        **{"tie_word_embeddings": False, **overrides},
    )
    torch.manual_seed(0)  # transformers initialises from the global RNG
    return LlamaForCausalLM(config).eval()


def test_convert_meta_consolidated_pth(tmp_path):
    state = meta_checkpoint(tmp_path / "7B_tiny")
    metadata = convert_meta(tmp_path / "7B_tiny", tmp_path / "out")
    assert metadata["dtype"] == "float16" and metadata["n_future_tokens"] == 3
    assert metadata["source"]["format"] == "meta-consolidated"
    model = load(tmp_path / "out")
    assert model.args.vocab_size == VOCAB and len(model.extra_heads) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    reference = Transformer(model.args).half()
    reference.load_state_dict({k: v for k, v in state.items() if k != "rope.freqs"}, strict=True)
    torch.testing.assert_close(
        model.float()(TOKENS, all_heads=True), reference.float()(TOKENS, all_heads=True)
    )


def test_convert_meta_keeps_or_changes_dtype_on_request(tmp_path):
    meta_checkpoint(tmp_path / "ckpt")
    assert convert_meta(tmp_path / "ckpt", tmp_path / "f32", dtype="float32")["dtype"] == "float32"
    assert convert_meta(tmp_path / "ckpt", tmp_path / "keep", dtype=None)["dtype"] == "float16"


@pytest.mark.parametrize(
    "extra, drop, message",
    [
        (
            {"layers.9.attention.wq.weight": torch.zeros(64, 64)},
            None,
            "unexpected tensor 'layers.9.attention.wq",
        ),
        (None, "extra_heads.1.attention.wo.weight", "missing tensor 'extra_heads.1.attention.wo.weight'"),
        ({"norm.weight": torch.ones(32)}, None, r"tensor 'norm.weight' has shape \[32\], expected \[64\]"),
        ({"rope.freqs": torch.ones(8)}, None, "tensor 'rope.freqs' disagrees with rope_theta"),
    ],
)
def test_convert_meta_errors_name_the_file_and_key(tmp_path, extra, drop, message):
    meta_checkpoint(tmp_path / "ckpt", extra=extra, drop=drop)
    with pytest.raises(CheckpointError, match=rf"consolidated\.pth: {message}"):
        convert_meta(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_meta_rejects_unknown_params_key(tmp_path):
    meta_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "params.json").write_text(json.dumps({**META_PARAMS, "moe": True}))
    with pytest.raises(ValueError, match="params.json: unknown key.*'moe'"):
        convert_meta(tmp_path / "ckpt", tmp_path / "out")


def test_rope_permutations_are_inverse():
    w = torch.randn(8 * 16, 40)
    torch.testing.assert_close(permute_hf_to_meta(permute_meta_to_hf(w, 8), 8), w, rtol=0, atol=0)
    assert not torch.equal(permute_meta_to_hf(w, 8), w)


def save_pytorch_bin_shards(hf: LlamaForCausalLM, directory: Path, n_shards: int = 2) -> None:
    """The older layout Sheared-LLaMA ships: pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json.

    transformers 5 no longer writes it, so the files are laid out here as its earlier save_pretrained did.
    """
    directory.mkdir()
    hf.config.save_pretrained(directory)
    state = hf.state_dict()
    keys = list(state)
    weight_map = {}
    for i in range(n_shards):
        name = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[i::n_shards]}
        torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in state.values())}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("layout", ["safetensors", "pytorch_bin"])
def test_import_hf_logits_equal_transformers(tmp_path, layout):
    hf = tiny_hf()
    if layout == "safetensors":
        hf.save_pretrained(tmp_path / "hf", max_shard_size="60KB")
        assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    else:
        save_pytorch_bin_shards(hf, tmp_path / "hf")
    metadata = import_hf(tmp_path / "hf", tmp_path / "ours")
    assert metadata["n_future_tokens"] == 1 and metadata["dtype"] == "float32"
    model = load(tmp_path / "ours")
    assert model.args.n_kv_heads == 2 and model.args.ffn_hidden_dim == 160
    with torch.no_grad():
        expected = hf(TOKENS).logits
        torch.testing.assert_close(model(TOKENS)[:, :, 0], expected, rtol=0, atol=1e-4)


def test_import_hf_with_tied_embeddings(tmp_path):
    hf = tiny_hf(tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ours")
    model = load(tmp_path / "ours")
    assert torch.equal(model.output.weight, model.tok_embeddings.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS)[:, :, 0], hf(TOKENS).logits, rtol=0, atol=1e-4)


def test_import_hf_errors(tmp_path):
    tiny_hf().save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    shard = sorted((tmp_path / "hf").glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}: shard missing"):
        import_hf(tmp_path / "hf", tmp_path / "ours")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["hidden_act"] = "gelu"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="hidden_act='gelu'"):
        import_hf(tmp_path / "hf", tmp_path / "ours")


@pytest.mark.parametrize("kind", ["reference", "policy"])
def test_export_hf_loads_in_transformers_with_equal_logits(tmp_path, kind):
    model = make_micro(kind, VOCAB, seed=5)
    save(model, tmp_path / "ours", name=kind, source="test")
    config = export_hf(tmp_path / "ours", tmp_path / "hf")
    assert config["num_hidden_layers"] == model.n_trunk_layers + 1
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(hf(TOKENS).logits, model(TOKENS)[:, :, 0], rtol=0, atol=1e-4)


def test_hf_round_trip_through_both_converters(tmp_path):
    model = make_micro("reference", VOCAB, seed=6)
    save(model, tmp_path / "a", name="ref", source="test")
    export_hf(tmp_path / "a", tmp_path / "hf", dtype="bfloat16", max_shard_bytes=300_000)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    import_hf(tmp_path / "hf", tmp_path / "b")
    back = load(tmp_path / "b")
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value.bfloat16()), key


def test_cli_commands_have_help_and_run(tmp_path, llama2_tokenizer):
    runner = CliRunner()
    # The same group `wmtp` registers them in; only this package's commands, so other packages cannot break it.
    cli = click.Group("wmtp", commands={c.name: c for c in commands})
    names = {c.name for c in commands}
    assert names == {"convert-meta", "import-hf", "import-gguf", "export-hf", "make-micro"}
    for name in names:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output and len(result.output) > 300, name

    result = runner.invoke(
        cli, ["make-micro", "reference", str(tmp_path / "ref"), "--vocab-size", str(VOCAB)]
    )
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "ref")["n_future_tokens"] == 1
    result = runner.invoke(
        cli, ["make-micro", "policy", str(tmp_path / "pol"), "--tokenizer", str(llama2_tokenizer)]
    )
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "pol").args.vocab_size == 32000
    result = runner.invoke(cli, ["export-hf", str(tmp_path / "ref"), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["import-hf", str(tmp_path / "hf"), str(tmp_path / "back"), "--name", "back"])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "back")["name"] == "back"
    meta_checkpoint(tmp_path / "meta")
    result = runner.invoke(
        cli, ["convert-meta", str(tmp_path / "meta"), str(tmp_path / "conv"), "--dtype", "bfloat16"]
    )
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "conv")["dtype"] == "bfloat16"
    for out in ("ref", "pol", "hf", "back", "conv"):  # every written directory, the HF export included
        names = {p.name for p in (tmp_path / out).iterdir()}
        assert set(verify(tmp_path / out)["files"]) == names - {MANIFEST}, out


def test_a_model_converted_by_the_cli_has_one_integrity_file_loads_and_fails_when_tampered(tmp_path):
    state = meta_checkpoint(tmp_path / "meta")
    cli = click.Group("wmtp", commands={c.name: c for c in commands})
    result = CliRunner().invoke(cli, ["convert-meta", str(tmp_path / "meta"), str(tmp_path / "conv")])
    assert result.exit_code == 0, result.output
    conv = tmp_path / "conv"
    assert sorted(p.name for p in conv.iterdir()) == [MANIFEST, "metadata.json", "model.safetensors", "params.json"]
    loaded = load(conv).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != "rope.freqs")
    weights = conv / "model.safetensors"
    flip_byte(weights, -3)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(weights))}: SHA256 .* does not match manifest"):
        load(conv)
    result = CliRunner().invoke(cli, ["export-hf", str(conv), str(tmp_path / "hf")])
    assert isinstance(result.exception, CheckpointError) and str(weights) in str(result.exception)
    assert not (tmp_path / "hf").exists()
