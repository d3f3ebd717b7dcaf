"""base_model and reference_model from a GGUF Llama file, with a tokenizer from a GGUF file, as the SmolLM2 preset
runs them: materialized with Dagster into a temporary storage root, checks included."""

from __future__ import annotations

import torch

from tests.assets.conftest import materialize_frame
from tests.conftest import write_gguf_tokenizer
from tests.model.gguf_fixture import Q, write_llama_gguf
from wmtp_core import model as wm
from wmtp_core.storage import sha256_file
from wmtp_core.tokenizer import Tokenizer


def test_gguf_weights_become_the_policy_with_copied_heads_and_the_one_head_reference(tmp_path):
    tokenizer = Tokenizer(write_gguf_tokenizer(tmp_path / "tokenizer.gguf"))
    weights = tmp_path / "model.gguf"
    written = write_llama_gguf(weights, Q.Q4_1, vocab=tokenizer.vocab_size)
    params = (
        f"tokenizer: {{path: {tokenizer.path}, sha256: {tokenizer.sha256}}}\n"
        f"base_model: {{source: gguf, gguf_file: {weights}, n_future: 2, dtype: null}}\n"
        f"reference_model: {{source: gguf, gguf_file: {weights}, dtype: float32}}\n"
    )
    result = materialize_frame(tmp_path, params, selection=["tokenizer", "base_model", "reference_model"])
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["base_model_consistent"] and checks["reference_model_consistent"]
    embedding = torch.from_numpy(written["token_embd.weight"])
    for name, heads in (("base_model", 2), ("reference_model", 1)):
        out = tmp_path / "storage" / "models" / name
        metadata = wm.read_metadata(out)
        assert metadata["tokenizer_sha256"] == tokenizer.sha256 and metadata["dtype"] == "float32"
        assert metadata["source"]["sha256"] == sha256_file(weights)
        model = wm.load(out)
        assert model.args.n_future_tokens == heads and model.args.vocab_size == tokenizer.vocab_size
        assert torch.equal(model.tok_embeddings.weight, embedding) and torch.equal(
            model.output.weight, embedding
        )
