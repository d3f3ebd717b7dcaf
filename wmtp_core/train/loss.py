"""The weighted multi-token-prediction loss, memory-efficient (Gloeckle et al. 2024, section 2).

Head k (1-based) at position t predicts token t+k. Its loss is

    loss_k = sum_{b,t} w[b,t,k] * CE_k(b,t) * valid[b,t,k] / N_k,    valid[b,t,k] = labels[b, t+k] != -100

with CE in fp32, and the total is the sum over heads. `mtp_backward` runs the trunk once, detaches its output,
then runs forward + backward one head at a time, so only one head's [B, T, vocab] logits are ever alive, and
finally backpropagates the gradient gathered at h_trunk through the trunk once. It runs in the training step,
never inside a module's forward (a backward inside forward broke FSDP in an earlier implementation).

Contract for a multi-process optimizer step (every micro-batch on every rank):

- `denominators[k-1]` = N_k, the GLOBAL count of valid targets of head k over all ranks and all micro-batches of
  the optimizer step (`valid_target_counts` summed over micro-batches, then `distributed.all_reduce_sum`).
- `loss_scale` = world size. FSDP2 averages gradients over ranks; scaling every rank's loss by the world size
  turns that average into the sum, i.e. the gradient of the global-batch loss. In one process (no FSDP) pass 1.
- Any auxiliary loss returned by `prepare` is normalised the same way (by a global count) and is scaled by
  `loss_scale` too.

With these, the gradients after the step equal those of one process holding the whole global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule

from wmtp_core.data.collate import IGNORE_INDEX
from wmtp_core.model.transformer import Transformer
from wmtp_core.train.distributed import Trainable

# weigh(k, ce, valid) -> weights [B, T] (or None for uniform): ce is head k's detached per-token CE [B, T] (fp32,
# 0 where invalid), valid the boolean mask of its targets. Weights are treated as constants (detached).
Weigh = Callable[[int, Tensor, Tensor], Tensor | None]
# prepare(h_detached) -> auxiliary loss (already normalised) or None; runs before the heads.
Prepare = Callable[[Tensor], Tensor | None]


def head_targets(labels: Tensor, k: int) -> Tensor:
    """Targets of head k at every position: `labels[:, t+k]`, -100 where t+k falls beyond the sequence. [B, T]."""
    if k < 1:
        raise ValueError(f"head_targets: head k={k}, expected k >= 1 (head k predicts token t+k)")
    targets = torch.full_like(labels, IGNORE_INDEX)
    if k < labels.shape[1]:
        targets[:, :-k] = labels[:, k:]
    return targets


def valid_target_counts(labels: Tensor, n_future: int) -> Tensor:
    """Number of valid targets of heads 1..n_future in `labels` [B, T]: float64 [n_future] (sum these over
    micro-batches and ranks to get the `denominators`)."""
    return torch.stack(
        [(head_targets(labels, k) != IGNORE_INDEX).sum() for k in range(1, n_future + 1)]
    ).double()


def token_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token cross-entropy in fp32 (logits upcast), 0 where the target is -100: [B, T]."""
    ce = F.cross_entropy(
        logits.flatten(0, -2).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return ce.view(targets.shape)


@dataclass
class MTPStepResult:
    """What one micro-batch's `mtp_backward` measured, all detached tensors (no host sync inside the step).

    `head_loss[k-1]` is head k's weighted loss as it entered backward but before `loss_scale` (0 for heads not
    run); `ce_sum[k-1]` its unweighted CE summed over valid targets; `n_valid[k-1]` its local count of valid
    targets; `aux_loss` what `prepare` returned (detached, before `loss_scale`), or None.
    """

    head_loss: Tensor
    ce_sum: Tensor
    n_valid: Tensor
    aux_loss: Tensor | None = None

    @property
    def loss(self) -> Tensor:
        """The micro-batch's objective: weighted head losses plus the auxiliary loss."""
        total = self.head_loss.sum()
        return total if self.aux_loss is None else total + self.aux_loss


def _policy_of(model: nn.Module) -> Transformer:
    policy = model.policy if isinstance(model, Trainable) else model
    if not isinstance(policy, Transformer):
        raise TypeError(f"model: expected a Trainable or a Transformer, got {type(model).__name__}")
    return policy


def _denominators(denominators: Tensor | Sequence[float] | None, labels: Tensor, n_future: int) -> Tensor:
    if denominators is None:
        return valid_target_counts(labels, n_future).float().clamp_min(1.0).to(labels.device)
    den = torch.as_tensor(denominators, dtype=torch.float32, device=labels.device).flatten()
    if den.numel() != n_future:
        raise ValueError(f"denominators: {den.numel()} values, expected one per head ({n_future})")
    # A head with no valid target anywhere contributes a zero sum; dividing it by 1 keeps it zero, not NaN.
    return den.clamp_min(1.0)


def naive_mtp_loss(
    model: nn.Module,
    tokens: Tensor,
    labels: Tensor,
    weights: Tensor | None = None,
    denominators: Tensor | Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference implementation: all heads' logits at once. Returns (total, per_head [K]), both with graphs.

    `model` is a Trainable or a Transformer; `weights` [B, T, K] (None: uniform); `denominators` [K] (None: this
    batch's own valid counts). Peak memory holds K heads' logits; used by tests and the benchmark.
    """
    policy = _policy_of(model)
    n_future = policy.n_future
    h = model(tokens) if isinstance(model, Trainable) else policy.trunk(tokens)
    latents = torch.stack([policy.head(h, k) for k in range(1, n_future + 1)], dim=2)
    logits = policy.unembed(latents)  # [B, T, K, V]
    targets = torch.stack([head_targets(labels, k) for k in range(1, n_future + 1)], dim=2)
    ce = token_ce(logits, targets)  # [B, T, K]
    valid = targets != IGNORE_INDEX
    if weights is not None:
        if weights.shape != ce.shape:
            raise ValueError(f"weights: shape {tuple(weights.shape)}, expected [B, T, K] = {tuple(ce.shape)}")
        ce = ce * torch.where(valid, weights.detach().float(), 0.0)
    per_head = ce.sum(dim=(0, 1)) / _denominators(denominators, labels, n_future)
    return per_head.sum(), per_head


def mtp_backward(
    trainable: Trainable,
    tokens: Tensor,
    labels: Tensor,
    *,
    denominators: Tensor | Sequence[float] | None,
    weigh: Weigh | None = None,
    prepare: Prepare | None = None,
    heads: Sequence[int] | None = None,
    loss_scale: float = 1.0,
    sync: bool = True,
    sharded: bool | None = None,
) -> MTPStepResult:
    """Forward and backward of one micro-batch, one head at a time; gradients accumulate into `.grad`.

    1. `h = trainable(tokens)` (the root forward runs the trunk once); heads read `hd = h.detach()`.
    2. `prepare(hd)` (optional) returns an auxiliary loss, e.g. the value loss on `value_head(policy.norm(hd))`;
       it is also the place to compute the weights that `weigh` hands out.
    3. For k in `heads` (default 1..n_future; `[]` for no cross-entropy, e.g. critic training): head k's logits,
       per-token CE, `w = weigh(k, ce.detach(), valid)`, `loss_k = sum(w * ce * valid) / denominators[k-1]`,
       `(loss_k * loss_scale).backward()`. Then the auxiliary loss's backward.
    4. `h.backward(hd.grad)` once (skipped when the trunk has no trainable parameter).

    See the module docstring for `denominators` and `loss_scale`. `sync=False` on the non-final micro-batches of a
    gradient-accumulation step skips the gradient reduce-scatter (FSDP only). `sharded` None: detect FSDP2.

    Under FSDP2 (PITFALLS.md): its end-of-backward callback runs after every `.backward()` and, in it, every
    group's post-backward. So the head and auxiliary backwards run with gradient sync off and the shared
    norm/output group kept gathered; both are restored before the last backward of the step, which then does
    the one reduce-scatter of every accumulated gradient and reshards every group (a group left gathered after
    the step would feed its stale copy to the next forward, after `optimizer.step()` updated the shards).
    """
    policy = _policy_of(trainable)
    if not isinstance(trainable, Trainable):
        raise TypeError(f"mtp_backward(trainable=...): expected a Trainable, got {type(trainable).__name__}")
    n_future = policy.n_future
    heads = list(range(1, n_future + 1)) if heads is None else list(heads)
    bad = [k for k in heads if not 1 <= k <= n_future]
    if bad or len(set(heads)) != len(heads):
        raise ValueError(f"heads={heads}: expected distinct heads in 1..{n_future}")
    if tokens.shape != labels.shape:
        raise ValueError(
            f"labels: shape {tuple(labels.shape)}, expected that of tokens {tuple(tokens.shape)}"
        )
    if heads and denominators is None:
        raise ValueError("denominators: required when heads run (the global count of valid targets per head)")
    den = _denominators(denominators, labels, n_future) if heads else None
    is_fsdp = isinstance(trainable, FSDPModule)
    if sharded is None:
        sharded = is_fsdp
    elif sharded != is_fsdp:
        raise ValueError(f"sharded={sharded}, but the trainable is {'' if is_fsdp else 'not '}FSDP-sharded")

    head_loss = torch.zeros(n_future, device=labels.device)
    ce_sum = torch.zeros(n_future, device=labels.device)
    n_valid = torch.zeros(n_future, device=labels.device)

    h = trainable(tokens)
    hd = h.detach().requires_grad_(h.requires_grad)
    if sharded:
        _gather_every_group_once(trainable)
        _defer_sync(trainable, policy)
    aux = prepare(hd) if prepare is not None else None
    if aux is not None and aux.dim() != 0:
        raise ValueError(f"prepare: returned a tensor of shape {tuple(aux.shape)}, expected a scalar loss")
    aux_backward = aux is not None and aux.requires_grad
    # The last backward of this call must run with the caller's sync and everything resharding afterwards.
    trunk_backward = h.requires_grad and bool(heads)

    for i, k in enumerate(heads):
        targets = head_targets(labels, k)
        valid = targets != IGNORE_INDEX
        ce = token_ce(policy.unembed(policy.head(hd, k)), targets)
        w = weigh(k, ce.detach(), valid) if weigh is not None else None
        weighted = ce if w is None else ce * torch.where(valid, torch.as_tensor(w).detach().float(), 0.0)
        loss_k = weighted.sum() / den[k - 1]
        head_loss[k - 1] = loss_k.detach()
        ce_sum[k - 1] = ce.detach().sum()
        n_valid[k - 1] = valid.sum()
        if loss_k.requires_grad:
            if sharded and not trunk_backward and not aux_backward and i == len(heads) - 1:
                _restore_sync(trainable, policy, sync)
            (loss_k * loss_scale).backward()
        del ce, weighted, loss_k  # free this head's logits before the next head's forward

    if aux_backward:
        if sharded and not trunk_backward:
            _restore_sync(trainable, policy, sync)
        (aux * loss_scale).backward()
    if h.requires_grad and hd.grad is not None:
        if sharded:
            _restore_sync(trainable, policy, sync)
        h.backward(hd.grad)
    if sharded:
        # Whatever ran, leave the step with sync restored and every group sharded (a no-op when resharded).
        _restore_sync(trainable, policy, sync)
        policy.norm.reshard()
        trainable.reshard()
    return MTPStepResult(head_loss, ce_sum, n_valid, None if aux is None else aux.detach())


def _gather_every_group_once(trainable: FSDPModule) -> None:
    """Work around an FSDP2 (torch 2.13) crash on the first step: with `reduce_dtype` set and gradient sync off,
    the end-of-backward callback of the first head's backward runs post-backward on every group, and a group
    never gathered yet (head 2, the value head, ...) has no unsharded parameter to look at (AttributeError
    '_unsharded_param'). Gathering and releasing each group once, after the first root forward, creates them."""
    if getattr(trainable, "_wmtp_gathered_once", False):
        return
    for module in trainable.modules():
        if isinstance(module, FSDPModule) and module is not trainable:
            module.unshard()
            module.reshard()
    trainable._wmtp_gathered_once = True


def _defer_sync(trainable: FSDPModule, policy: Transformer) -> None:
    trainable.set_requires_gradient_sync(False)
    policy.norm.set_reshard_after_backward(False, recurse=False)  # norm and output are one group


def _restore_sync(trainable: FSDPModule, policy: Transformer, sync: bool) -> None:
    trainable.set_requires_gradient_sync(sync)
    policy.norm.set_reshard_after_backward(True, recurse=False)
