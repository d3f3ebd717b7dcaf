"""Self-speculative decoding with the multi-token heads (blockwise parallel decoding, Stern et al. 2018).

At every position the next-token head gives the greedy token and heads 2..n propose the n-1 tokens after it
(Gloeckle et al. 2024, section 3.2). One forward pass over the block [greedy token, proposals] verifies them:
the next-token head's argmax at block position i is what greedy decoding would emit after block[:i+1], so the
longest prefix of proposals agreeing with it is accepted, and the same pass yields the next greedy token and
fresh proposals at the last accepted position. Rejected tokens are left in the KV cache and overwritten by the
next pass, which starts right after the accepted ones (the cache is positional). The output equals greedy
decoding token for token; only the number of forward passes changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from wmtp_core.eval.generate import Completion, Detokenizer, StopCriteria, check_fits


@dataclass
class SpeculativeStats:
    """`accepted_per_head[j]`: verify passes in which head j+2's proposal was accepted (out of `proposed[j]`).

    No seconds: decoders are timed from outside, all the same way (`wmtp_core.eval.timing`)."""

    tokens: int = 0
    forward_passes: int = 0
    accepted_per_head: list[int] = field(default_factory=list)
    proposed_per_head: list[int] = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.forward_passes if self.forward_passes else 0.0

    def add(self, other: SpeculativeStats) -> None:
        self.tokens += other.tokens
        self.forward_passes += other.forward_passes
        width = max(len(self.accepted_per_head), len(other.accepted_per_head))
        for name in ("accepted_per_head", "proposed_per_head"):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(
                self,
                name,
                [
                    (mine[j] if j < len(mine) else 0) + (theirs[j] if j < len(theirs) else 0)
                    for j in range(width)
                ],
            )

    def as_dict(self) -> dict:
        rates = [
            a / p if p else 0.0 for a, p in zip(self.accepted_per_head, self.proposed_per_head, strict=True)
        ]
        return {
            "tokens": self.tokens,
            "forward_passes": self.forward_passes,
            "tokens_per_forward": self.tokens_per_forward,
            "acceptance_rate_per_head": rates,
        }


def _run_heads(model, tokens: torch.Tensor, start_pos: int, cache) -> list[torch.Tensor]:
    """Trunk and every head over tokens [1, L] -> hidden states [1, L, dim] of heads 1..n (index k-1: head k).

    Every head runs over all L positions so each head's KV cache stays filled for later passes.
    """
    h_trunk = model.trunk(tokens, start_pos, cache)
    return [model.head(h_trunk, k, start_pos, cache) for k in range(1, model.n_future + 1)]


def _proposals(model, hidden: list[torch.Tensor], position: int) -> list[int]:
    """Greedy token of heads 2..n at one position: only those rows are unembedded (the vocab projection is the
    largest matrix of a small model)."""
    if len(hidden) == 1:
        return []
    rows = torch.stack([h[0, position] for h in hidden[1:]])
    return model.unembed(rows).argmax(dim=-1).tolist()


@torch.inference_mode()
def speculative_generate(
    model,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    eos_id: int | None,
    tokenizer=None,
    stop: Sequence[str] = (),
) -> tuple[Completion, SpeculativeStats]:
    """Greedy continuation of one prompt, decoded self-speculatively. Needs a model with n_future >= 2 to gain
    anything; with one head it is plain greedy decoding (one token per pass)."""
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids: empty prompt (encode with bos=True)")
    check_fits(model, len(prompt_ids), max_new_tokens)
    n_heads = model.n_future
    detok = Detokenizer(tokenizer, prompt_ids) if tokenizer is not None else None
    criteria = StopCriteria(detok, eos_id, stop, max_new_tokens)
    stats = SpeculativeStats(accepted_per_head=[0] * (n_heads - 1), proposed_per_head=[0] * (n_heads - 1))
    device = next(model.parameters()).device

    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    cache = model.new_cache(1, len(prompt_ids) + max_new_tokens, device=device)
    hidden = _run_heads(model, prompt, 0, cache)
    guesses = [int(model.unembed(hidden[0][0, -1]).argmax())] + _proposals(model, hidden, -1)
    stats.forward_passes += 1
    pos = len(prompt_ids)
    out: list[int] = []
    reason: str | None = None
    while True:
        # guesses[0] is certain (it is what greedy decoding emits next); guesses[1:] are proposals.
        out.append(guesses[0])
        reason = criteria.finish_reason(out)
        if reason is not None:
            break
        block = guesses[: min(n_heads, max_new_tokens - len(out))]
        hidden = _run_heads(model, torch.tensor([block], dtype=torch.long, device=device), pos, cache)
        stats.forward_passes += 1
        # greedy[i] is what greedy decoding emits after block[:i+1]; proposal block[i+1] stands if they agree.
        greedy = model.unembed(hidden[0][0]).argmax(dim=-1).tolist()
        n_accepted = 0
        while n_accepted < len(block) - 1 and block[n_accepted + 1] == greedy[n_accepted]:
            n_accepted += 1
        for j in range(len(block) - 1):
            stats.proposed_per_head[j] += 1
            stats.accepted_per_head[j] += int(j < n_accepted)
        for t in block[1 : 1 + n_accepted]:
            out.append(t)
            reason = criteria.finish_reason(out)
            if reason is not None:
                break
        if reason is not None:
            break
        guesses = [greedy[n_accepted]] + _proposals(model, hidden, n_accepted)
        pos += 1 + n_accepted
    stats.tokens = len(out)
    return criteria.completion(out, reason), stats
