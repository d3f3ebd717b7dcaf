"""Each recipe's step on a 4-head policy and on a one-head model: what trains, what is logged, what weights do."""

from __future__ import annotations

import copy

import pytest
import torch

from wmtp_core.data.collate import IGNORE_INDEX
from wmtp_core.model import ValueHead, make_micro
from wmtp_core.train.distributed import Trainable
from wmtp_core.train.params import TrainParams
from wmtp_core.train.recipes import (
    Denominators,
    StepContext,
    correct_incorrect_pairs,
    final_positions,
    recipe_step,
)
from wmtp_core.train.stats import StatSums

VOCAB = 96


def batch(seed: int = 0) -> dict:
    """Three rows of different lengths: prompt, response ending in EOS (id 2), padding; rows 0 and 1 share a
    problem, one correct and one not."""
    g = torch.Generator().manual_seed(seed)
    lengths, prompts = [14, 10, 7], [5, 4, 3]
    width = max(lengths)
    ids = torch.full((3, width), 2, dtype=torch.long)
    labels = torch.full((3, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for b, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        ids[b, :n] = torch.randint(3, VOCAB, (n,), generator=g)
        ids[b, n - 1] = 2
        labels[b, p:n] = ids[b, p:n]
        mask[b, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "reward": torch.tensor([1.0, 0.0, 1.0]),
            "problem_ids": torch.tensor([0, 0, 1]), "problem_names": ["a", "a", "b"]}  # fmt: skip


def models(n_future: int, recipe: str):
    kind = "policy" if n_future > 1 else "reference"
    policy = make_micro(kind, VOCAB, seed=3)
    value_head = None
    if recipe in ("critic", "verifiable", "random_matched", "shuffled"):
        value_head = ValueHead(policy.args.dim)
        value_head.init_weights(torch.Generator().manual_seed(4))
    return policy, value_head


@pytest.mark.parametrize("n_future", [4, 1])
@pytest.mark.parametrize("recipe", ["baseline", "reference", "critic", "verifiable", "rho1", "random_matched",
                                    "shuffled"])  # fmt: skip
def test_every_recipe_steps_on_multi_and_one_head_models(recipe: str, n_future: int):
    torch.manual_seed(0)
    policy, value_head = models(n_future, recipe)
    cfg = TrainParams().recipe(recipe).model_dump()
    if recipe == "critic":
        policy.requires_grad_(False)
        cfg["pairwise"] = True
    trainable = Trainable(policy, value_head)
    ctx = StepContext(recipe=recipe, cfg=cfg, n_heads=n_future,
                      reference=make_micro("reference", VOCAB, seed=5).eval() if recipe == "rho1" else None,
                      anchor=copy.deepcopy(value_head).requires_grad_(False) if value_head is not None else None)  # fmt: skip
    b = batch()
    den = Denominators.from_vector(Denominators.local([b], n_future, pairwise=recipe == "critic"), n_future)
    stats = StatSums()
    recipe_step(trainable, b, den, ctx, stats, loss_scale=1.0, sync=True, sharded=False)
    figures = stats.reduce()

    grads = {n: p.grad for n, p in trainable.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    if recipe == "critic":  # frozen trunk: only the value head learns, from MSE and the Bradley-Terry pair
        assert set(grads) == {"value_head.proj.weight", "value_head.proj.bias"}
        assert figures["value/pairwise_loss"] > 0 and "loss/head1" not in figures
    else:
        assert "policy.tok_embeddings.weight" in grads
        heads = [figures[f"loss/head{k}"] for k in range(1, n_future + 1)]
        assert all(h > 0 for h in heads)
    if recipe in ("verifiable", "random_matched", "shuffled"):
        assert "value_head.proj.weight" in grads
        assert {"weights/mean", "weights/std", "weights/min", "weights/max", "weights/clipped_fraction",
                "weights/entropy", "td/mean", "value/explained_variance"} <= set(figures)  # fmt: skip
    if recipe == "rho1":
        for k in range(1, n_future + 1):
            # ceil(0.6 * n_k) of each head's valid targets are selected
            n_valid = int(den.heads[k - 1])
            assert figures[f"rho1/selected/head{k}/mean"] == pytest.approx(-(-3 * n_valid // 5) / n_valid)
    stats.fold_histograms()
    hists = stats.histograms()
    if recipe in ("verifiable", "random_matched", "shuffled"):
        assert set(hists) == {"weights"}
        assert sum(hists["weights"]["counts"]) == int((b["labels"] != IGNORE_INDEX).sum())
        assert hists["weights"]["edges"][-1] == cfg["max_weight"]
    elif recipe == "rho1":
        for k in range(1, n_future + 1):
            selected = sum(hists[f"rho1/head{k}/selected"]["counts"])
            assert selected + sum(hists[f"rho1/head{k}/rejected"]["counts"]) == int(den.heads[k - 1])
            assert selected == -(-3 * int(den.heads[k - 1]) // 5)
    else:
        assert hists == {}


def test_uniform_recipes_give_the_mean_cross_entropy():
    policy, _ = models(4, "baseline")
    b = batch(1)
    den = Denominators.from_vector(Denominators.local([b], 4, False), 4)
    stats = StatSums()
    ctx = StepContext(recipe="baseline", cfg=TrainParams().baseline.model_dump(), n_heads=4)
    recipe_step(Trainable(policy), b, den, ctx, stats, loss_scale=1.0, sync=True, sharded=False)
    figures = stats.reduce()
    for k in range(1, 5):
        assert figures[f"loss/head{k}"] == pytest.approx(figures[f"ce/head{k}"], rel=1e-6)


def test_pairs_and_final_positions():
    b = batch()
    assert correct_incorrect_pairs(b["problem_ids"], b["reward"]).tolist() == [[0, 1]]
    assert final_positions(b["labels"] != IGNORE_INDEX).tolist() == [13, 9, 6]


def test_histograms_count_into_fixed_bins_and_survive_a_checkpoint():
    stats = StatSums()
    x = torch.tensor([[-1.0, 0.0, 0.49, 0.5, 0.99, 1.0, 7.0]])
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, 1] = False
    stats.add_histogram("w", x, mask, [0.0, 0.5, 1.0], "label")
    stats.add_histogram("w", x[:, :1], mask[:, :1], [0.0, 0.5, 1.0], "label")
    assert stats.histograms() == {}  # counted on this rank, not yet folded into the run's totals
    stats.reduce()
    # below the first edge and above the last clamp into the end bins; bins are left-closed, the last closed
    assert stats.histograms() == {"w": {"edges": [0.0, 0.5, 1.0], "counts": [3, 4], "label": "label"}}
    resumed = StatSums()
    resumed.load_histograms(stats.histograms())
    resumed.add_histogram("w", x[:, 3:4], mask[:, 3:4], [0.0, 0.5, 1.0], "label")
    resumed.fold_histograms()
    assert resumed.histograms()["w"]["counts"] == [3, 5]
