"""The memory-efficient MTP loss: values and every gradient equal the naive all-heads loss (one process, fp32)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from wmtp_core.data.collate import IGNORE_INDEX
from wmtp_core.model import ValueHead, make_micro
from wmtp_core.train.distributed import Trainable
from wmtp_core.train.loss import head_targets, mtp_backward, naive_mtp_loss, valid_target_counts

VOCAB = 256


def make_batch(lengths: list[int], prompts: list[int], width: int, seed: int) -> tuple[Tensor, Tensor]:
    """Right-padded rows: tokens everywhere, labels on the response only (prompt and padding -100)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (len(lengths), width), generator=g)
    labels = torch.full_like(tokens, IGNORE_INDEX)
    for b, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        labels[b, p:n] = tokens[b, p:n]
    return tokens, labels


def make_trainable(kind: str = "policy", value_head: bool = False) -> Trainable:
    policy = make_micro(kind, VOCAB, seed=3)
    head = None
    if value_head:
        head = ValueHead(policy.args.dim)
        head.init_weights(torch.Generator().manual_seed(4))
    return Trainable(policy, head)


def value_loss(trainable: Trainable, h: Tensor, labels: Tensor, reward: Tensor) -> Tensor:
    """MSE of V(s_t) against the row's reward over response tokens (the critic's loss)."""
    values = trainable.value_head(trainable.policy.norm(h))
    mask = labels != IGNORE_INDEX
    return (((values - reward[:, None]) ** 2) * mask).sum() / mask.sum()


def grads(model: torch.nn.Module) -> dict[str, Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def assert_grads_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        if want[name] is None:
            assert got[name] is None, f"{name}: unexpected gradient"
            continue
        assert got[name] is not None, f"{name}: no gradient"
        torch.testing.assert_close(
            got[name], want[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )


BATCH = make_batch(lengths=[40, 27, 33], prompts=[10, 5, 31], width=40, seed=0)


def test_head_targets_shift_and_pad():
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 8, IGNORE_INDEX]])
    assert head_targets(labels, 1).tolist() == [[5, 6, 7, -100], [-100, 8, -100, -100]]
    assert head_targets(labels, 3).tolist() == [[7, -100, -100, -100], [-100, -100, -100, -100]]
    assert head_targets(labels, 9).eq(IGNORE_INDEX).all()
    assert valid_target_counts(labels, 2).tolist() == [4.0, 3.0]
    with pytest.raises(ValueError, match="k=0"):
        head_targets(labels, 0)


@pytest.mark.parametrize("weighting", ["uniform", "random"])
@pytest.mark.parametrize("kind", ["policy", "reference"])
def test_memory_efficient_equals_naive(kind: str, weighting: str):
    tokens, labels = BATCH
    ref = make_trainable(kind)
    eff = copy.deepcopy(ref)
    n_future = ref.policy.n_future
    # Denominators that are not this batch's counts, as for one micro-batch of a larger global batch.
    den = valid_target_counts(labels, n_future) * 2.5
    weights = None
    if weighting == "random":
        weights = torch.rand(*labels.shape, n_future, generator=torch.Generator().manual_seed(1)) * 4.9 + 0.1

    want_total, want_per_head = naive_mtp_loss(ref, tokens, labels, weights, den)
    want_total.backward()
    weigh = None if weights is None else (lambda k, ce, valid: weights[..., k - 1])
    got = mtp_backward(eff, tokens, labels, denominators=den, weigh=weigh)

    torch.testing.assert_close(got.head_loss, want_per_head.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(got.loss, want_total.detach(), rtol=1e-6, atol=0)
    assert got.n_valid.tolist() == valid_target_counts(labels, n_future).tolist()
    assert got.aux_loss is None
    assert_grads_equal(grads(eff), grads(ref))


def test_weigh_sees_detached_ce_and_mask():
    tokens, labels = BATCH
    trainable = make_trainable()
    seen = {}

    def weigh(k: int, ce: Tensor, valid: Tensor) -> Tensor | None:
        seen[k] = (ce.requires_grad, ce.dtype, bool((ce[~valid] == 0).all()), valid.sum().item())
        return None

    den = valid_target_counts(labels, 4)
    result = mtp_backward(trainable, tokens, labels, denominators=den, weigh=weigh)
    assert seen == {k: (False, torch.float32, True, den[k - 1].item()) for k in range(1, 5)}
    # Uniform weights: the weighted loss is the mean CE, and ce_sum / n_valid says the same.
    torch.testing.assert_close(result.head_loss, result.ce_sum / result.n_valid)


def test_prepare_adds_value_loss():
    tokens, labels = BATCH
    reward = torch.tensor([1.0, 0.0, 1.0])
    ref = make_trainable(value_head=True)
    eff = copy.deepcopy(ref)
    den = valid_target_counts(labels, 4)

    total, _ = naive_mtp_loss(ref, tokens, labels, denominators=den)
    v = value_loss(ref, ref(tokens), labels, reward)
    (total + 0.5 * v).backward()
    got = mtp_backward(
        eff, tokens, labels, denominators=den, prepare=lambda hd: 0.5 * value_loss(eff, hd, labels, reward)
    )
    torch.testing.assert_close(got.aux_loss, 0.5 * v.detach())
    torch.testing.assert_close(got.loss, (total + 0.5 * v).detach())
    assert_grads_equal(grads(eff), grads(ref))
    assert got.aux_loss is not None and eff.value_head.proj.weight.grad is not None


def test_critic_with_frozen_trunk_trains_only_the_value_head():
    tokens, labels = BATCH
    reward = torch.tensor([0.0, 1.0, 1.0])
    ref = make_trainable(value_head=True)
    ref.policy.requires_grad_(False)
    eff = copy.deepcopy(ref)

    value_loss(ref, ref(tokens), labels, reward).backward()
    got = mtp_backward(
        eff,
        tokens,
        labels,
        denominators=None,
        heads=[],
        prepare=lambda hd: value_loss(eff, hd, labels, reward),
    )
    assert got.head_loss.eq(0).all() and got.aux_loss is not None
    assert_grads_equal(grads(eff), grads(ref))
    assert all(p.grad is None for p in eff.policy.parameters())


def test_subset_of_heads_and_loss_scale():
    tokens, labels = BATCH
    ref = make_trainable()
    eff = copy.deepcopy(ref)
    den = valid_target_counts(labels, 4)
    # Heads 1 and 3 only: the naive loss with zero weight on heads 2 and 4, times the loss scale.
    weights = torch.ones(*labels.shape, 4)
    weights[..., 1] = weights[..., 3] = 0
    total, _ = naive_mtp_loss(ref, tokens, labels, weights, den)
    (3.0 * total).backward()
    got = mtp_backward(eff, tokens, labels, denominators=den, heads=[1, 3], loss_scale=3.0)
    assert got.head_loss[1] == 0 and got.head_loss[3] == 0
    torch.testing.assert_close(got.loss, total.detach())
    # Heads 2 and 4 are extra_heads.0 and .2: never run, so no gradient (the naive loss gives them zeros).
    skipped = ("policy.extra_heads.0.", "policy.extra_heads.2.")
    want = grads(ref)
    for name, g in want.items():
        if name.startswith(skipped):
            assert g is not None and g.abs().max() == 0, name
            want[name] = None
    assert_grads_equal(grads(eff), want)


def test_bad_arguments_name_the_parameter():
    tokens, labels = BATCH
    trainable = make_trainable()
    den = valid_target_counts(labels, 4)
    with pytest.raises(ValueError, match="heads="):
        mtp_backward(trainable, tokens, labels, denominators=den, heads=[0, 1])
    with pytest.raises(ValueError, match="denominators"):
        mtp_backward(trainable, tokens, labels, denominators=den[:3])
    with pytest.raises(ValueError, match="denominators"):
        mtp_backward(trainable, tokens, labels, denominators=None)
    with pytest.raises(ValueError, match="sharded=True"):
        mtp_backward(trainable, tokens, labels, denominators=den, sharded=True)
    with pytest.raises(TypeError, match="Trainable"):
        mtp_backward(trainable.policy, tokens, labels, denominators=den)
