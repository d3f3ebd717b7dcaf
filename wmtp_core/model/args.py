"""Model hyper-parameters, read from and written to Meta's `params.json` layout."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ModelArgsError(ValueError):
    """A params.json (or dict) does not describe a valid model."""


@dataclass(frozen=True)
class ModelArgs:
    """Meta's ModelArgs (facebook/multi-token-prediction, llama/model.py), same field names and defaults.

    `n_layers` counts every block: the trunk (`n_layers - n_future_tokens`), head 1 and the extra heads.
    `max_batch_size` is accepted because Meta's files carry it; the model never reads it.
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    n_future_tokens: int = 1
    max_seq_len: int = 2048
    max_batch_size: int = 32

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ModelArgsError:
            return ModelArgsError(f"ModelArgs.{field}={getattr(self, field)!r}: {why}")

        for field in ("dim", "n_layers", "n_heads", "multiple_of", "n_future_tokens", "max_seq_len"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                raise bad(field, "expected a positive integer")
        if self.dim % self.n_heads:
            raise bad("dim", f"expected a multiple of n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise bad("dim", f"head dim {self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise bad("n_kv_heads", f"expected a divisor of n_heads={self.n_heads}")
        if self.n_future_tokens > self.n_layers:
            raise bad("n_future_tokens", f"expected at most n_layers={self.n_layers} (one block per head)")
        if self.vocab_size != -1 and self.vocab_size < 1:
            raise bad("vocab_size", "expected a positive integer, or -1 to take it from the checkpoint")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def n_trunk_layers(self) -> int:
        return self.n_layers - self.n_future_tokens

    @property
    def ffn_hidden_dim(self) -> int:
        # Meta's FeedForward sizing: 2/3 of 4*dim, scaled, rounded up to a multiple of `multiple_of`.
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelArgs:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, params: dict[str, Any], *, source: str = "params") -> ModelArgs:
        """Build from a params.json dict; an unknown key is an error naming it and `source`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ModelArgsError(
                f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; expected a subset of {sorted(known)}"
            )
        values = dict(params)
        for key in ("rope_theta", "norm_eps"):
            if key in values:
                values[key] = float(values[key])
        try:
            return cls(**values)
        except ModelArgsError as e:
            raise ModelArgsError(f"{source}: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> ModelArgs:
        path = Path(path)
        try:
            params = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ModelArgsError(f"{path}: params file missing") from e
        except json.JSONDecodeError as e:
            raise ModelArgsError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(params, dict):
            raise ModelArgsError(f"{path}: expected a JSON object of model parameters")
        return cls.from_dict(params, source=str(path))


def ffn_args_for_hidden(dim: int, hidden: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) for which Meta's sizing rule yields exactly `hidden` FFN units.

    Hugging Face configs state `intermediate_size` directly; Meta's layout derives it. Prefer the plain Llama rule
    (multiple_of 256, no multiplier: 11008 for dim 4096, 6912 for Sheared-LLaMA's 2560), else an exact multiplier.
    """
    for multiple_of in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if ModelArgs(dim=dim, n_heads=1, multiple_of=multiple_of).ffn_hidden_dim == hidden:
            return multiple_of, None
    base = int(2 * (4 * dim) / 3)
    multiplier = (hidden + 0.5) / base
    if ModelArgs(dim=dim, n_heads=1, multiple_of=1, ffn_dim_multiplier=multiplier).ffn_hidden_dim != hidden:
        raise ModelArgsError(f"intermediate_size={hidden}: no Meta FFN sizing reproduces it for dim={dim}")
    return 1, multiplier


def preset_7b_1t_4() -> ModelArgs:
    """Meta's 7B_1T_4 multi-token-prediction model (7B parameters, trained on 1T tokens, 4 heads)."""
    return ModelArgs(
        dim=4096,
        n_layers=32,
        n_heads=32,
        vocab_size=32000,
        multiple_of=256,
        norm_eps=1e-5,
        rope_theta=10000.0,
        n_future_tokens=4,
        max_seq_len=2048,
    )
