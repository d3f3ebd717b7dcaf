"""Micro models for laptops and CI: same architecture as 7B_1T_4, a few million parameters, seeded."""

from __future__ import annotations

from typing import Literal

import torch

from wmtp_core.model.args import ModelArgs
from wmtp_core.model.transformer import Transformer

MicroKind = Literal["policy", "reference"]

# Blocks are cheap next to the vocab-sized unembedding at these widths, so the policy gets four trunk blocks.
_MICRO = {
    "policy": dict(dim=128, n_layers=8, n_heads=4, n_future_tokens=4),
    "reference": dict(dim=128, n_layers=4, n_heads=4, n_future_tokens=1),
}


def micro_args(kind: MicroKind, vocab_size: int) -> ModelArgs:
    """ModelArgs of the micro policy (4 heads, 4 trunk blocks) or the one-head reference."""
    if kind not in _MICRO:
        raise ValueError(f"micro model kind={kind!r}: expected one of {sorted(_MICRO)}")
    return ModelArgs(vocab_size=vocab_size, multiple_of=32, max_seq_len=2048, **_MICRO[kind])


def make_micro(kind: MicroKind, vocab_size: int, seed: int = 0) -> Transformer:
    """A freshly initialised micro model; the same (kind, vocab_size, seed) gives bit-identical weights."""
    with torch.device("meta"):
        model = Transformer(micro_args(kind, vocab_size))
    # Materialise without touching the global RNG, then draw every weight from the seeded generator.
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(seed))
    return model
