"""What each recipe adds to the memory-efficient MTP step: its token weights and its auxiliary loss.

One function per micro-batch, `recipe_step`, with a plain `if` per recipe (seven alternatives read better as
code than as a registry):

- baseline, reference: uniform weights on every valid target.
- critic: no cross-entropy; the value head regresses R (is_correct) at every response token (MSE, gamma 1),
  plus an optional Bradley-Terry term on the final values of a correct and an incorrect row of one problem.
- verifiable: TD errors of the value head (detached) -> `td_weights` -> every head that predicts the token;
  total loss = weighted CE + value_coef x value loss, the value loss clipped around the critic asset's values.
- random_matched / shuffled: as verifiable, with the TD weights replaced by LogNormal draws of the same mean and
  std, or permuted among each row's response tokens: the controls that separate the critic's signal from "any
  non-uniform weighting".
- rho1: excess loss of each head over the tuned next-token reference (no gradients) -> `rho1_weights`.

Every sum is divided by a global count the caller all-reduced over ranks and micro-batches (`Denominators`), so a
step's gradient is the one a single process holding the whole global batch would compute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmtp_core.data.collate import IGNORE_INDEX
from wmtp_core.train.loss import mtp_backward, valid_target_counts
from wmtp_core.train.stats import StatSums
from wmtp_core.weighting import (
    lognormal_matched,
    per_head,
    reference_excess,
    rho1_weights,
    shuffle_within_rows,
    td_errors,
    td_weights,
)

CE_RECIPES = ("baseline", "reference", "verifiable", "rho1", "random_matched", "shuffled")
VALUE_RECIPES = ("critic", "verifiable", "random_matched", "shuffled")


@dataclass
class Denominators:
    """Global counts of one optimizer step: valid targets per head, response tokens, correct/incorrect pairs."""

    heads: Tensor  # [K] float
    response: Tensor  # [] float
    pairs: Tensor  # [] float

    @staticmethod
    def local(batches: list[dict], n_heads: int, pairwise: bool) -> Tensor:
        """This rank's counts as one vector [K + 2] (all-reduce it, then `from_vector`)."""
        total = torch.zeros(n_heads + 2, dtype=torch.float64, device=batches[0]["labels"].device)
        for b in batches:
            labels = b["labels"]
            total[:n_heads] += valid_target_counts(labels, n_heads)
            total[n_heads] += (labels != IGNORE_INDEX).sum()
            if pairwise:
                total[n_heads + 1] += correct_incorrect_pairs(b["problem_ids"], b["reward"]).shape[0]
        return total

    @staticmethod
    def from_vector(v: Tensor, n_heads: int) -> Denominators:
        """Counts on the vector's device, as float32 like the losses they divide."""
        v = v.clamp_min(1.0).float()  # an empty count contributes a zero sum; never divide by zero
        return Denominators(heads=v[:n_heads], response=v[n_heads], pairs=v[n_heads + 1])


def freeze(policy: nn.Module, recipe: str, cfg: dict) -> None:
    """Switch off the gradients of what `recipe` does not train: the whole policy for a critic with freeze_trunk
    (only the value head learns), the trunk, embeddings, final norm and unembedding with `trainable: heads`."""
    if recipe == "critic" and cfg.get("freeze_trunk", True):
        policy.requires_grad_(False)
    elif cfg.get("trainable", "all") == "heads":
        policy.requires_grad_(False)
        policy.layers[-1].requires_grad_(True)
        policy.extra_heads.requires_grad_(True)


def correct_incorrect_pairs(problem_ids: Tensor, reward: Tensor) -> Tensor:
    """[P, 2] row indices (correct, incorrect) of every pair of rows of one problem in a batch."""
    same = problem_ids[:, None] == problem_ids[None, :]
    ordered = (reward[:, None] > 0.5) & (reward[None, :] <= 0.5)
    return torch.nonzero(same & ordered)


def final_positions(response_mask: Tensor) -> Tensor:
    """Index of each row's last response token (its EOS), [B]."""
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return torch.where(response_mask, positions, -1).amax(dim=1).clamp_min(0)


def value_loss(values: Tensor, target: Tensor, mask: Tensor, denominator: Tensor,
               anchor: Tensor | None = None, clip: float | None = None) -> Tensor:  # fmt: skip
    """Sum of squared errors over the masked tokens / denominator; with `anchor` and `clip`, PPO's clipped form:
    max((v - R)^2, (anchor + clamp(v - anchor, -clip, clip) - R)^2), a trust region around the anchor values."""
    err = (values - target) ** 2
    if anchor is not None and clip is not None:
        clipped = anchor + (values - anchor).clamp(-clip, clip)
        err = torch.maximum(err, (clipped - target) ** 2)
    return (err * mask).sum() / denominator


@dataclass
class StepContext:
    """What a recipe needs besides the batch: models that do not train, the process group, a generator."""

    recipe: str
    cfg: dict
    n_heads: int
    reference: nn.Module | None = None  # rho1: the tuned reference, eval mode, no gradients
    anchor: nn.Module | None = None  # weighted recipes: a frozen copy of the critic's value head
    group: object | None = None  # process group for global Rho-1 selection and weight moments
    generator: torch.Generator | None = None  # the controls' random draws
    autocast: Callable[[], object] = field(default=lambda: torch.autocast("cpu", enabled=False))


def reference_ce(reference: nn.Module, tokens: Tensor, labels: Tensor) -> Tensor:
    """Next-token CE of the reference at every position t (predicting token t+1), 0 where t+1 is no target."""
    with torch.no_grad():
        logits = reference(tokens).squeeze(2).float()  # [B, T, V]
        target = torch.full_like(labels, IGNORE_INDEX)
        target[:, :-1] = labels[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    return ce


def recipe_step(trainable: nn.Module, batch: dict, den: Denominators, ctx: StepContext, stats: StatSums, *,
                loss_scale: float, sync: bool, sharded: bool) -> None:  # fmt: skip
    """Forward and backward of one micro-batch; the gradients accumulate, `stats` collects what to log."""
    recipe, cfg, K = ctx.recipe, ctx.cfg, ctx.n_heads
    tokens, labels, reward = batch["input_ids"], batch["labels"], batch["reward"]
    response = labels != IGNORE_INDEX
    policy = trainable.policy
    token_w: dict[str, Tensor] = {}
    ref_aligned = None
    if recipe == "rho1":
        ce_ref = reference_ce(ctx.reference, tokens, labels)
        # reference_excess(0, ce_ref) = -ce_ref aligned as head k at t sees it (position t+k-1).
        ref_aligned = -reference_excess(torch.zeros(*labels.shape, K, device=labels.device), ce_ref)
        stats.add_masked("reference/ce", ce_ref, _next_valid(labels))

    def prepare(hd: Tensor) -> Tensor | None:
        if recipe not in VALUE_RECIPES:
            return None
        hn = policy.norm(hd)
        values = trainable.value_head(hn).float()
        target = reward[:, None].expand_as(values)
        anchor = ctx.anchor(hn.detach()).float() if ctx.anchor is not None else None
        loss = value_loss(values, target, response, den.response, anchor, cfg.get("value_clip"))
        stats.add("value/loss", loss.detach() * 1.0)
        stats.add_explained_variance("value", values.detach(), target, response)
        if recipe == "critic" and cfg.get("pairwise"):
            pairs = correct_incorrect_pairs(batch["problem_ids"], reward)
            if len(pairs):
                final = values[torch.arange(len(values)), final_positions(response)]
                bt = -F.logsigmoid(final[pairs[:, 0]] - final[pairs[:, 1]]).sum() / den.pairs
                stats.add("value/pairwise_loss", bt.detach())
                loss = loss + cfg.get("pairwise_coef", 1.0) * bt
        if recipe == "critic":
            return loss
        td = td_errors(values.detach(), response, reward, gamma=cfg["gamma"])
        w = td_weights(td, response, beta=cfg["beta"], min_weight=cfg["min_weight"], max_weight=cfg["max_weight"])
        stats.add_masked("td", td, response)
        if recipe == "random_matched":
            w = lognormal_matched(w, response, ctx.generator, cfg["min_weight"], cfg["max_weight"], ctx.group)
        elif recipe == "shuffled":
            w = shuffle_within_rows(w, response, ctx.generator)
        stats.add_weights("weights", w, response, cfg["min_weight"], cfg["max_weight"])
        stats.add_histogram("weights", w, response, _edges(0.0, cfg["max_weight"], 50),
                            f"{recipe} token weights (one per token, shared by every head)")  # fmt: skip
        token_w["heads"] = per_head(w, K)
        return cfg["value_coef"] * loss

    def weigh(k: int, ce: Tensor, valid: Tensor) -> Tensor | None:
        if "heads" in token_w:
            return token_w["heads"][..., k - 1]
        if ref_aligned is not None:
            excess = torch.where(valid, ce - ref_aligned[..., k - 1], torch.zeros_like(ce))
            w = rho1_weights(excess[..., None], valid[..., None], ratio=cfg["ratio"], mode=cfg["mode"],
                             temperature=cfg["temperature"],
                             group=ctx.group if cfg.get("global_selection", True) else None)[..., 0]  # fmt: skip
            stats.add_masked(f"rho1/excess/head{k}", excess, valid)
            stats.add_masked(f"rho1/selected/head{k}", (w > 0).float(), valid)
            for kept, what in ((True, "selected"), (False, "rejected")):
                stats.add_histogram(f"rho1/head{k}/{what}", excess, valid & ((w > 0) == kept), EXCESS_EDGES,
                                    f"head {k}: excess loss over the reference of the {what} tokens")  # fmt: skip
            stats.add_histogram(f"rho1/head{k}/weights", w, valid, _edges(0.0, 4.0, 40), f"head {k}: Rho-1 weights")
            return w
        return None

    heads = list(range(1, K + 1)) if recipe in CE_RECIPES else []
    with ctx.autocast():
        result = mtp_backward(trainable, tokens, labels, denominators=den.heads, weigh=weigh, prepare=prepare,
                              heads=heads, loss_scale=loss_scale, sync=sync, sharded=sharded)  # fmt: skip
    for k in heads:
        stats.add(f"loss/head{k}", result.head_loss[k - 1])
        stats.add(f"ce/head{k}", result.ce_sum[k - 1] / den.heads[k - 1])


def _edges(lo: float, hi: float, bins: int) -> list[float]:
    return [lo + (hi - lo) * i / bins for i in range(bins + 1)]


# Excess loss (nats) of a head over the reference; values beyond count in the end bins.
EXCESS_EDGES = _edges(-5.0, 5.0, 50)


def _next_valid(labels: Tensor) -> Tensor:
    """Positions t whose next token t+1 is a target (where the reference's CE counts)."""
    out = torch.zeros_like(labels, dtype=torch.bool)
    out[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return out
