"""Token weights: hand-computed TD errors, Rho-1 selection, head alignment, the controls, and the global batch
over 2 gloo ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import free_port
from wmtp_core.weighting import (
    head_valid,
    lognormal_matched,
    per_head,
    reference_excess,
    rho1_weights,
    shuffle_within_rows,
    td_errors,
    td_weights,
    weight_stats,
)

T, F = True, False


# --- TD errors --------------------------------------------------------------------------------------------------


def test_td_one_token_response_is_terminal_only():
    values = torch.tensor([[0.1, 0.5, 0.2, 0.0]])
    mask = torch.tensor([[F, F, T, F]])  # the response is EOS alone
    td = td_errors(values, mask, torch.tensor([1.0]))
    assert torch.allclose(td, torch.tensor([[0.0, 0.0, 1.0 - 0.5, 0.0]]))


def test_td_rows_of_different_lengths_with_padding_and_gamma():
    values = torch.tensor([[0.2, 0.4, 0.6, 0.8, 0.3], [0.5, 0.1, 0.7, 0.9, 0.9]])
    mask = torch.tensor([[F, T, T, T, F], [F, T, T, F, F]])
    td = td_errors(values, mask, torch.tensor([1.0, 0.0]), gamma=0.9)
    expected = torch.tensor(
        [
            [0.0, 0.9 * 0.4 - 0.2, 0.9 * 0.6 - 0.4, 1.0 - 0.6, 0.0],  # EOS at 3: R - V(s_2); padding 0
            [0.0, 0.9 * 0.1 - 0.5, 0.0 - 0.1, 0.0, 0.0],
        ]
    )
    assert torch.allclose(td, expected)


def test_td_rejects_bad_masks_and_shapes():
    values = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="row 1 .*position 0"):
        td_errors(values, torch.tensor([[F, T, T, F], [T, T, F, F]]), torch.zeros(2))
    with pytest.raises(ValueError, match="row 0 has 2 response runs"):
        td_errors(values, torch.tensor([[F, T, F, T], [F, T, F, F]]), torch.zeros(2))
    with pytest.raises(ValueError, match="rewards"):
        td_errors(values, torch.zeros(2, 4, dtype=torch.bool), torch.zeros(3))
    with pytest.raises(ValueError, match="response_mask"):
        td_errors(values, torch.zeros(2, 5, dtype=torch.bool), torch.zeros(2))


def test_td_weights_clip_both_ends_and_zero_off_mask():
    td = torch.tensor([[math.log(2.0), -5.0, 5.0, 3.0]])
    mask = torch.tensor([[T, T, T, F]])
    w = td_weights(td, mask, beta=1.0)
    # exp(-5) = 0.0067 is raised to 0.1, exp(5) = 148 lowered to 5
    assert torch.allclose(w, torch.tensor([[2.0, 0.1, 5.0, 0.0]]))
    assert torch.allclose(td_weights(td, mask, beta=0.5)[0, 0], torch.tensor(4.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"beta": 0.0}, "beta"), ({"min_weight": 6.0}, "min_weight"), ({"min_weight": -0.1}, "min_weight")],
)
def test_td_weights_reject_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        td_weights(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), **kwargs)


# --- alignment with heads ---------------------------------------------------------------------------------------


def test_per_head_a_token_weight_reaches_every_head_that_predicts_it():
    out = per_head(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), n_heads=3)
    assert out.shape == (1, 4, 3)
    assert out[0].tolist() == [[2, 3, 4], [3, 4, 0], [4, 0, 0], [0, 0, 0]]


def test_head_valid_looks_at_the_predicted_token():
    labels = torch.tensor([[-100, -100, 7, 8]])
    assert head_valid(labels, n_heads=2)[0].tolist() == [[F, T], [T, T], [T, F], [F, F]]


def test_reference_excess_compares_the_same_target_token():
    policy = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]])  # [B=1, T=3, K=2]
    reference = torch.tensor([[1.0, 2.0, 3.0]])
    # head k at t predicts x_{t+k}; the reference predicts it at position t+k-1
    assert reference_excess(policy, reference)[0].tolist() == [[9, 18], [28, 37], [47, 0]]


# --- Rho-1 ------------------------------------------------------------------------------------------------------


def test_rho1_select_per_head_exact_counts_ties_and_invalid():
    excess = torch.tensor(
        [
            [
                [0.5, 0.2, 1.0],
                [0.1, 0.2, 1.0],
                [0.9, 0.2, 1.0],
                [0.3, 0.1, 1.0],
                [0.7, 10.0, 1.0],  # head 2's 10.0 is invalid: never selected
            ]
        ]
    )
    valid = torch.ones_like(excess, dtype=torch.bool)
    valid[0, 4, 1] = False
    w = rho1_weights(excess, valid, ratio=0.6)
    assert w[0, :, 0].tolist() == [1, 0, 1, 0, 1]  # 0.6 * 5 = 3.0000000000000004 -> 3: 0.9, 0.7, 0.5
    assert w[0, :, 1].tolist() == [1, 1, 1, 0, 0]  # ceil(0.6 * 4) = 3: the three tied 0.2
    assert w[0, :, 2].tolist() == [1, 1, 1, 0, 0]  # all tied: exactly 3, the earliest
    assert rho1_weights(excess, valid, ratio=0.3)[0, :, 0].tolist() == [0, 0, 1, 0, 1]  # ceil(1.5) = 2
    assert rho1_weights(excess, valid, ratio=1.0).equal(valid.float())


def test_rho1_select_exact_counts_on_a_batch_full_of_ties():
    g = torch.Generator().manual_seed(0)
    excess = torch.randint(0, 3, (4, 9, 3), generator=g).float()
    valid = torch.rand(4, 9, 3, generator=g) < 0.7
    valid[..., 2] = False  # a head with no valid token
    for ratio in (0.1, 0.25, 0.6, 0.9):
        w = rho1_weights(excess, valid, ratio=ratio)
        n = valid.sum((0, 1)).tolist()
        assert w.sum((0, 1)).tolist() == [float(math.ceil(round(ratio * k, 9))) for k in n]
        assert not w[~valid].any()
        for k in range(2):  # every selected excess >= every unselected valid one
            chosen, rest = excess[..., k][w[..., k] == 1], excess[..., k][(w[..., k] == 0) & valid[..., k]]
            assert rest.numel() == 0 or chosen.min() >= rest.max()


def test_rho1_soft_is_a_softmax_with_mean_one_over_valid_tokens():
    excess = torch.tensor([[[-1.0, 3.0], [2.0, 0.0], [0.5, 1.0]]])  # [1, 3, 2]
    valid = torch.tensor([[[T, F], [T, F], [F, F]]])
    w = rho1_weights(excess, valid, mode="soft", temperature=2.0)
    a, b = math.exp(1.0 / 2.0), math.exp(2.0 / 2.0)  # |excess| / temperature
    assert torch.allclose(w[0, :, 0], torch.tensor([2 * a / (a + b), 2 * b / (a + b), 0.0]))
    assert w[0, :, 1].tolist() == [0, 0, 0]  # no valid token
    assert torch.allclose(w[valid].mean(), torch.tensor(1.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"temperature": 0.0}, "temperature"),
     ({"mode": "quantile"}, "mode")],
)  # fmt: skip
def test_rho1_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        rho1_weights(torch.zeros(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool), **kwargs)


def test_rho1_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="valid: expected shape"):
        rho1_weights(torch.zeros(1, 2, 2), torch.ones(1, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="excess: expected a 3-d"):
        rho1_weights(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))


# --- controls and stats -----------------------------------------------------------------------------------------


def test_lognormal_matched_moments():
    g = torch.Generator().manual_seed(1)
    weights = 2.0 + torch.rand(400, 500, generator=g) * 2.0  # mean 3, std 2/sqrt(12) = 0.577
    mask = torch.rand(400, 500, generator=g) < 0.8
    out = lognormal_matched(weights, mask, generator=g, min_weight=0.0, max_weight=1e9)
    target, drawn = weights[mask].double(), out[mask].double()
    assert (out[~mask] == 0).all()
    assert drawn.mean().item() == pytest.approx(target.mean().item(), rel=0.02)
    assert drawn.std().item() == pytest.approx(target.std().item(), rel=0.03)
    clipped = lognormal_matched(weights, mask, generator=g, min_weight=2.5, max_weight=3.5)
    assert clipped[mask].min() >= 2.5 and clipped[mask].max() <= 3.5


def test_lognormal_matched_constant_and_empty():
    mask = torch.tensor([[T, T, F], [F, T, F]])
    out = lognormal_matched(torch.full((2, 3), 1.5), mask)
    assert out.tolist() == [[1.5, 1.5, 0.0], [0.0, 1.5, 0.0]]
    assert not lognormal_matched(torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.bool)).any()


def test_shuffle_within_rows_preserves_each_row_multiset():
    g = torch.Generator().manual_seed(2)
    weights = torch.rand(5, 40, generator=g)
    mask = torch.rand(5, 40, generator=g) < 0.6  # not contiguous on purpose
    mask[4] = False
    out = shuffle_within_rows(weights, mask, generator=g)
    assert (out[~mask] == 0).all()
    for b in range(5):
        assert out[b][mask[b]].sort().values.equal(weights[b][mask[b]].sort().values)
    assert not out[mask].equal(weights[mask])  # it did move something


def test_weight_stats_by_hand():
    weights = torch.tensor([[1.0, 2.0, 5.0, 0.1, 100.0]])
    mask = torch.tensor([[T, T, T, T, F]])
    stats = weight_stats(weights, mask, min_weight=0.1, max_weight=5.0)
    values = [1.0, 2.0, 5.0, 0.1]
    mean = sum(values) / 4
    p = [v / sum(values) for v in values]
    assert stats == pytest.approx(
        {
            "mean": mean,
            "std": math.sqrt(sum((v - mean) ** 2 for v in values) / 4),
            "min": 0.1,
            "max": 5.0,
            "clipped_fraction": 0.5,
            "entropy": -sum(q * math.log(q) for q in p),
        }
    )
    assert weight_stats(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool))["entropy"] == pytest.approx(
        math.log(6)
    )
    assert weight_stats(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool))["clipped_fraction"] == 0.0


# --- the global batch over ranks --------------------------------------------------------------------------------

SHAPES = [(3, 7), (2, 11)]  # (B, T) per rank: different batch sizes and lengths
HEADS = 3


def _rank_inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank `rank`'s excess [B, T, K] (small integers: many ties across ranks), valid, weights [B, T], mask."""
    batch, length = SHAPES[rank]
    g = torch.Generator().manual_seed(100 + rank)
    excess = torch.randint(-2, 3, (batch, length, HEADS), generator=g).float()
    valid = torch.rand(batch, length, HEADS, generator=g) < 0.7
    weights = (1.0 + 2.0 * rank) * (0.5 + torch.rand(batch, length, generator=g))  # ranks differ in mean
    mask = torch.rand(batch, length, generator=g) < 0.8
    return excess, valid, weights, mask


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's rows concatenated in rank order, padded (invalid, masked out) to the longest T."""
    longest = max(length for _, length in SHAPES)
    parts = [_rank_inputs(rank) for rank in range(len(SHAPES))]

    def pad(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((x.shape[0], longest, *x.shape[2:]))
        out[:, : x.shape[1]] = x
        return out

    return tuple(torch.cat([pad(part[i]) for part in parts]) for i in range(4))  # type: ignore[return-value]


def _global_batch_worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        excess, valid, weights, mask = _rank_inputs(rank)
        g_excess, g_valid, g_weights, g_mask = _global_batch()
        batch, length = SHAPES[rank]
        first = sum(b for b, _ in SHAPES[:rank])
        mine = (slice(first, first + batch), slice(0, length))

        select = rho1_weights(excess, valid, ratio=0.6, group=dist.group.WORLD)
        assert select.equal(rho1_weights(g_excess, g_valid, ratio=0.6)[mine]), f"rank {rank}: select"
        assert not select.equal(rho1_weights(excess, valid, ratio=0.6)), (
            f"rank {rank}: the group changed nothing"
        )
        soft = rho1_weights(excess, valid, mode="soft", temperature=0.7, group=dist.group.WORLD)
        expected = rho1_weights(g_excess, g_valid, mode="soft", temperature=0.7)[mine]
        assert torch.allclose(soft, expected, atol=1e-6), f"rank {rank}: soft"

        # The draws are this rank's own; the LogNormal's parameters must come from the global mean and std.
        out = lognormal_matched(
            weights, mask, torch.Generator().manual_seed(7), 0.0, 1e9, group=dist.group.WORLD
        )
        selected = g_weights[g_mask].double()
        mean, var = selected.mean().item(), selected.var(correction=0).item()
        sigma_sq = math.log1p(var / mean**2)
        z = torch.randn(weights.shape, generator=torch.Generator().manual_seed(7))
        expected = torch.where(mask, torch.exp(math.log(mean) - sigma_sq / 2 + math.sqrt(sigma_sq) * z), 0.0)
        assert torch.allclose(out, expected, rtol=1e-5), f"rank {rank}: lognormal_matched moments"
    finally:
        dist.destroy_process_group()



def test_global_batch_over_two_ranks_equals_one_process():
    mp.spawn(_global_batch_worker, args=(len(SHAPES), free_port()), nprocs=len(SHAPES), join=True)
