"""Per-token weights for the weighted MTP loss: TD errors of a value head, Rho-1 selection, and their controls.

Every function is a pure, vectorised tensor function (no per-token Python loops), so researchers can call them from
a notebook on a saved batch. Shapes: `[B, T]` is one value per token position; `[B, T, K]` is one value per
position and head, where head k (1-based) at position t predicts token t+k (see `per_head`).

- `td_errors` / `td_weights`: the `verifiable` experiment, `clip(exp(delta / beta), 0.1, 5)`.
- `rho1_weights` with `reference_excess` and `head_valid`: the `rho1` experiment, top 60% of excess loss per head.
- `lognormal_matched` / `shuffle_within_rows`: the `random_matched` and `shuffled` controls, which keep the weights'
  moments (or each row's multiset of weights) but break their link to the tokens.
- `weight_stats`: scalars to log.

Functions that take `group` (a `torch.distributed` ProcessGroup) compute over the global batch of every rank in it,
with the same result on each rank as one process holding the whole batch would give.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

RHO1_MODES = ("select", "soft")


def _check_shape(name: str, tensor: Tensor, shape: tuple[int, ...], expected: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {expected} = {tuple(shape)}, got {tuple(tensor.shape)}")


def _check_ndim(name: str, tensor: Tensor, ndim: int, expected: str) -> None:
    if tensor.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor {expected}, got shape {tuple(tensor.shape)}")


def _shift_left(x: Tensor, k: int, fill: float | bool) -> Tensor:
    """`out[:, t] = x[:, t + k]` along dim 1, `fill` where t + k runs past the end."""
    if k == 0:
        return x
    out = torch.full_like(x, fill)
    if k < x.shape[1]:
        out[:, : x.shape[1] - k] = x[:, k:]
    return out


# ---------------------------------------------------------------------------------------------------------------
# TD errors (verifiable)


def td_errors(values: Tensor, response_mask: Tensor, rewards: Tensor, gamma: float = 1.0) -> Tensor:
    """TD(0) errors of the value head on each response token, zero elsewhere. Returns float [B, T].

    `values[b, t]` is V(s_t), the value of the prefix ending with token t. `response_mask[b, t]` is true on the
    response's tokens, EOS included: one contiguous run per row after a non-empty prompt, padding after it.
    `rewards[b]` is the row's terminal reward R (is_correct in {0, 1}).

    For a response token t, `delta = gamma * V(s_t) - V(s_{t-1})`: the change in value that emitting token t
    caused. The row's last response token (EOS) is terminal, V(terminal) = 0 and the reward arrives there:
    `delta = R - V(s_{t-1})`. A row whose response is EOS alone gets just that terminal delta.
    """
    _check_ndim("values", values, 2, "[B, T]")
    _check_shape("response_mask", response_mask, values.shape, "values.shape [B, T]")
    _check_shape("rewards", rewards, values.shape[:1], "[B]")
    if response_mask.dtype != torch.bool:
        raise ValueError(f"response_mask: expected a bool tensor, got {response_mask.dtype}")
    mask = response_mask
    # V(s_{t-1}) needs a token before the response: a response at position 0 would have no prompt to score.
    at_zero = mask[:, 0] if mask.shape[1] else mask.new_zeros(mask.shape[0])
    after = torch.zeros_like(mask)
    after[:, :-1] = mask[:, 1:]
    before = torch.zeros_like(mask)
    before[:, 1:] = mask[:, :-1]
    starts = (mask & ~before).sum(1)
    bad_start, bad_runs = at_zero.any(), (starts > 1).any()
    if bool(bad_start | bad_runs):
        rows = at_zero.nonzero().flatten().tolist()
        if rows:
            raise ValueError(
                f"response_mask: row {rows[0]} has a response token at position 0; expected a non-empty prompt "
                "before the response (V(s_{t-1}) is undefined there)"
            )
        row = (starts > 1).nonzero().flatten().tolist()[0]
        raise ValueError(
            f"response_mask: row {row} has {int(starts[row])} response runs; expected one contiguous run"
        )

    previous = torch.zeros_like(values)
    previous[:, 1:] = values[:, :-1]
    terminal = mask & ~after
    target = torch.where(terminal, rewards.to(values.dtype)[:, None], gamma * values)
    return torch.where(mask, target - previous, torch.zeros_like(values))


def td_weights(
    td: Tensor, response_mask: Tensor, beta: float = 0.9, min_weight: float = 0.1, max_weight: float = 5.0
) -> Tensor:
    """Token weights from TD errors: `clip(exp(td / beta), min_weight, max_weight)` on the mask, zero elsewhere.

    A token that raised the value (td > 0) weighs more than 1, one that lowered it less. The weights are not
    normalised: the loss divides by the number of valid tokens, not by the sum of the weights.
    """
    if not beta > 0:
        raise ValueError(f"beta: expected > 0 (a temperature), got {beta}")
    if min_weight < 0:
        raise ValueError(f"min_weight: expected >= 0, got {min_weight}")
    if min_weight > max_weight:
        raise ValueError(f"min_weight: expected <= max_weight ({max_weight}), got {min_weight}")
    _check_shape("response_mask", response_mask, td.shape, "td.shape")
    weights = torch.exp(td / beta).clamp(min_weight, max_weight)
    return torch.where(response_mask.bool(), weights, torch.zeros_like(weights))


# ---------------------------------------------------------------------------------------------------------------
# Alignment of token quantities with heads


def per_head(token_weights: Tensor, n_heads: int) -> Tensor:
    """Spread token weights [B, T] over heads: `out[b, t, k-1] = token_weights[b, t+k]`, 0 where t+k >= T.

    Head k at position t predicts token t+k, so a token's weight applies to every head that predicts it.
    """
    _check_ndim("token_weights", token_weights, 2, "[B, T]")
    if n_heads < 1:
        raise ValueError(f"n_heads: expected >= 1, got {n_heads}")
    return torch.stack([_shift_left(token_weights, k, 0.0) for k in range(1, n_heads + 1)], dim=-1)


def head_valid(labels: Tensor, n_heads: int, ignore_index: int = -100) -> Tensor:
    """Which (position, head) pairs have a target: bool [B, T, K], `labels[b, t+k] != ignore_index`.

    `labels` are aligned with the input ids (not shifted): `labels[b, t]` is token t when it is a response token,
    else `ignore_index`.
    """
    _check_ndim("labels", labels, 2, "[B, T]")
    if n_heads < 1:
        raise ValueError(f"n_heads: expected >= 1, got {n_heads}")
    target = labels != ignore_index
    return torch.stack([_shift_left(target, k, False) for k in range(1, n_heads + 1)], dim=-1)


def reference_excess(policy_ce: Tensor, reference_ce: Tensor) -> Tensor:
    """Rho-1's excess loss per head: `policy_ce[b, t, k-1] - reference_ce[b, t+k-1]`, 0 where t+k-1 >= T.

    `policy_ce[b, t, k-1]` is head k's CE at position t (predicting token t+k); `reference_ce[b, s]` is the
    next-token reference model's CE at position s (predicting token s+1). Both then score the same token x_{t+k}.
    """
    _check_ndim("policy_ce", policy_ce, 3, "[B, T, K]")
    _check_shape("reference_ce", reference_ce, policy_ce.shape[:2], "policy_ce.shape[:2] [B, T]")
    n_heads = policy_ce.shape[2]
    reference = torch.stack([_shift_left(reference_ce, k - 1, 0.0) for k in range(1, n_heads + 1)], dim=-1)
    positions = torch.arange(policy_ce.shape[1], device=policy_ce.device)[:, None]
    heads = torch.arange(n_heads, device=policy_ce.device)[None, :]
    in_range = (positions + heads < policy_ce.shape[1])[None]
    excess = policy_ce - reference.to(policy_ce.dtype)
    return torch.where(in_range, excess, torch.zeros_like(excess))


# ---------------------------------------------------------------------------------------------------------------
# Rho-1 selection


def _all_gather_columns(columns: Tensor, group: ProcessGroup) -> tuple[Tensor, int]:
    """Concatenate every rank's [K, N_r] along N in rank order. Returns the [K, sum N_r] tensor and this rank's
    column offset in it. Ranks may hold different N_r; padding added for the collective is dropped again."""
    world = dist.get_world_size(group)
    shape = torch.tensor(columns.shape, dtype=torch.long, device=columns.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    shapes_list = [s.tolist() for s in shapes]
    heads = {s[0] for s in shapes_list}
    if len(heads) != 1:
        raise ValueError(
            f"excess: expected the same number of heads K on every rank, got {[s[0] for s in shapes_list]}"
        )
    sizes = [s[1] for s in shapes_list]
    width = max(max(sizes), 1)
    padded = columns.new_full((columns.shape[0], width), float("-inf"))
    padded[:, : columns.shape[1]] = columns
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    full = torch.cat([part[:, :size] for part, size in zip(parts, sizes, strict=True)], dim=1)
    return full, sum(sizes[: dist.get_rank(group)])


def _keep_counts(n_valid: list[int], ratio: float) -> list[int]:
    # ceil(ratio * n) in floats is off by one when the product lands just above an integer (0.6 * 5 is
    # 3.0000000000000004). The ratio's shortest decimal is what the user wrote; with it as an exact fraction the
    # ceiling is integer arithmetic.
    fraction = Fraction(repr(float(ratio)))
    return [-(-n * fraction.numerator // fraction.denominator) for n in n_valid]


def _select_top(scores: Tensor, ratio: float) -> Tensor:
    """Exactly ceil(ratio * n_k) ones per row k of scores [K, N] (invalid entries are -inf): the largest scores;
    among tied scores at the threshold, the earliest columns."""
    n_valid = torch.isfinite(scores).sum(1).tolist()
    counts = _keep_counts(n_valid, ratio)
    # One k-th value per head (K is a handful); everything per token stays vectorised.
    thresholds = torch.stack(
        [
            -torch.kthvalue(-row, count).values if count else row.new_tensor(float("inf"))
            for row, count in zip(scores, counts, strict=True)
        ]
    )[:, None]
    above = scores > thresholds
    tied = scores == thresholds
    missing = torch.tensor(counts, device=scores.device)[:, None] - above.sum(1, keepdim=True)
    keep = above | (tied & (tied.cumsum(1) <= missing))
    return keep.to(scores.dtype)


def _soft(logits: Tensor) -> Tensor:
    """Softmax over each row of logits [K, N] (invalid entries are -inf), scaled to mean 1 over the valid ones."""
    valid = torch.isfinite(logits)
    n_valid = valid.sum(1, keepdim=True)
    probabilities = torch.softmax(logits, dim=1)  # NaN on a row with no valid entry; masked below
    return torch.where(valid, probabilities * n_valid, torch.zeros_like(probabilities))


def rho1_weights(
    excess: Tensor,
    valid: Tensor,
    ratio: float = 0.6,
    mode: str = "select",
    temperature: float = 1.0,
    group: ProcessGroup | None = None,
) -> Tensor:
    """Rho-1 token weights per head from excess losses. `excess` float and `valid` bool, both [B, T, K].

    - `select` (Rho-1): for each head k, exactly `ceil(ratio * n_k)` of its n_k valid tokens weigh 1.0, those with
      the largest excess loss; all others weigh 0. Ties at the threshold go to the earliest tokens in (b, t)
      order, so the count is exact and the choice deterministic.
    - `soft`: for each head, `softmax(|excess| / temperature)` over its valid tokens, times n_k (mean 1 over
      the valid tokens).

    Invalid tokens always weigh 0; a head with no valid token gives zeros. With `group`, the selection or softmax
    runs over the valid tokens of every rank together (ranks may hold different B and T): each rank gets its slice
    of what one process holding the concatenated batch (rank order) would compute, ties included.
    """
    if mode not in RHO1_MODES:
        raise ValueError(f"mode: expected one of {RHO1_MODES}, got {mode!r}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a fraction in (0, 1], got {ratio}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    _check_ndim("excess", excess, 3, "[B, T, K]")
    _check_shape("valid", valid, excess.shape, "excess.shape [B, T, K]")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid: expected a bool tensor, got {valid.dtype}")
    if not bool(torch.isfinite(excess[valid]).all()):
        raise ValueError("excess: expected finite values on every valid token, got NaN or inf")

    batch, length, heads = excess.shape
    work_dtype = torch.promote_types(excess.dtype, torch.float32)
    scores = excess.to(work_dtype) if mode == "select" else excess.to(work_dtype).abs() / temperature
    scores = scores.masked_fill(~valid, float("-inf"))
    columns = scores.permute(2, 0, 1).reshape(heads, batch * length)
    offset = 0
    if group is not None:
        columns, offset = _all_gather_columns(columns, group)
    weights = _select_top(columns, ratio) if mode == "select" else _soft(columns)
    mine = weights[:, offset : offset + batch * length]
    return mine.reshape(heads, batch, length).permute(1, 2, 0).to(excess.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Controls: the same weights, cut loose from their tokens


def lognormal_matched(
    weights: Tensor,
    mask: Tensor,
    generator: torch.Generator | None = None,
    min_weight: float = 0.1,
    max_weight: float = 5.0,
    group: ProcessGroup | None = None,
) -> Tensor:
    """The `random_matched` control: i.i.d. LogNormal weights with the mean and std of `weights` over `mask`.

    The moments are the population mean and std over the masked tokens (of every rank in `group` when given).
    The LogNormal has `sigma^2 = ln(1 + std^2 / mean^2)`, `mu = ln(mean) - sigma^2 / 2`, so before clipping its
    mean and std are those; draws are then clipped to [min_weight, max_weight] and zeroed outside the mask.
    All weights equal (std 0) gives the mean everywhere on the mask; an empty mask gives zeros.
    """
    if min_weight > max_weight:
        raise ValueError(f"min_weight: expected <= max_weight ({max_weight}), got {min_weight}")
    _check_shape("mask", mask, weights.shape, "weights.shape")
    mask = mask.bool()
    exact = weights.to(torch.float64)
    stats = torch.stack([mask.sum().to(torch.float64), exact[mask].sum(), exact[mask].square().sum()])
    if group is not None:
        dist.all_reduce(stats, group=group)
    count, total, total_sq = stats.tolist()
    if count == 0:
        return torch.zeros_like(weights)
    mean = total / count
    if not mean > 0:
        raise ValueError(f"weights: expected a positive mean over the mask for a LogNormal, got {mean}")
    variance = max(total_sq / count - mean * mean, 0.0)
    sigma_sq = math.log1p(variance / (mean * mean))
    mu = math.log(mean) - sigma_sq / 2
    draw_dtype = torch.promote_types(weights.dtype, torch.float32)
    z = torch.randn(weights.shape, generator=generator, device=weights.device, dtype=draw_dtype)
    drawn = torch.exp(mu + math.sqrt(sigma_sq) * z) if sigma_sq > 0 else torch.full_like(z, mean)
    drawn = drawn.clamp(min_weight, max_weight).to(weights.dtype)
    return torch.where(mask, drawn, torch.zeros_like(drawn))


def shuffle_within_rows(weights: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The `shuffled` control: each row's weights permuted at random among that row's masked positions.

    Each row keeps its multiset of masked weights exactly; positions outside the mask get 0.
    """
    _check_ndim("weights", weights, 2, "[B, T]")
    _check_shape("mask", mask, weights.shape, "weights.shape [B, T]")
    mask = mask.bool()
    # Random keys with unmasked positions sorted last: the first n_b entries of `source` are row b's masked
    # positions in random order, the first n_b of `target` the same positions in order; pair them up.
    keys = torch.rand(weights.shape, generator=generator, device=weights.device).masked_fill(~mask, 2.0)
    source = keys.argsort(dim=1)
    target = (~mask).to(torch.uint8).argsort(dim=1, stable=True)
    in_row = torch.arange(weights.shape[1], device=weights.device)[None, :] < mask.sum(1, keepdim=True)
    moved = torch.where(in_row, weights.gather(1, source), torch.zeros_like(weights))
    return torch.zeros_like(weights).scatter(1, target, moved)


def weight_stats(
    weights: Tensor, mask: Tensor, min_weight: float | None = None, max_weight: float | None = None
) -> dict[str, float]:
    """Scalars of the weights over the masked tokens, for logging.

    - mean, std (population), min, max;
    - clipped_fraction: fraction of masked tokens at or beyond `min_weight` or `max_weight` (those given; 0.0
      when neither is);
    - entropy: Shannon entropy in nats of the weights normalised to a distribution over the masked tokens
      (ln n for uniform weights; lower when a few tokens carry the weight). Weights are expected >= 0.

    An empty mask gives NaN for every entry.
    """
    _check_shape("mask", mask, weights.shape, "weights.shape")
    raw = weights[mask.bool()]
    if raw.numel() == 0:
        return dict.fromkeys(("mean", "std", "min", "max", "clipped_fraction", "entropy"), math.nan)
    # Compared in the weights' own dtype: a float32 weight clamped to 0.1 is above the float64 0.1.
    clipped = torch.zeros_like(raw, dtype=torch.bool)
    if min_weight is not None:
        clipped |= raw <= min_weight
    if max_weight is not None:
        clipped |= raw >= max_weight
    selected = raw.to(torch.float64)
    p = selected / selected.sum()
    entropy = -torch.special.xlogy(p, p).sum()
    values = torch.stack(
        [
            selected.mean(),
            selected.std(correction=0),
            selected.min(),
            selected.max(),
            clipped.to(torch.float64).mean(),
            entropy,
        ]
    ).tolist()
    return dict(zip(("mean", "std", "min", "max", "clipped_fraction", "entropy"), values, strict=True))
