"""Value head: an unbounded linear read-out of the normed trunk state, V(s_t) for every position t."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ValueHead(nn.Module):
    """`value_head(model.norm(h_trunk))` -> values [B, T]. Stored apart from the policy weights."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, 1)

    def forward(self, h_normed: Tensor) -> Tensor:
        return self.proj(h_normed).squeeze(-1)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02) -> None:
        # A zero bias starts every value at roughly 0, the midpoint-free prior for rewards in {0, 1}.
        nn.init.normal_(self.proj.weight, 0.0, std, generator=generator)
        self.proj.bias.zero_()
