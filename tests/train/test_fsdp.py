"""2-process FSDP2 (gloo) training steps equal one process holding the whole global batch.

Each case runs two AdamW steps (PITFALLS.md: a wrong FSDP recipe for the head-by-head loss is silently wrong only
at step 2), comparing the gathered gradients of both steps and the parameters after them. AdamW is nearly blind
to a constant gradient scale, so the gradients themselves are compared, not only the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.distributed.tensor import DTensor

from tests.conftest import free_port
from wmtp_core.data.collate import IGNORE_INDEX
from wmtp_core.model import ModelArgs, Transformer, ValueHead
from wmtp_core.train.distributed import (
    Trainable,
    all_reduce_sum,
    apply_fsdp,
    full_state_dict,
    policy_state_dict,
    value_head_state_dict,
)
from wmtp_core.train.loss import mtp_backward, valid_target_counts

pytestmark = pytest.mark.xdist_group("train_fsdp")

WORLD = 2
STEPS = 2
LR = 1e-3
VOCAB = 256
ARGS = ModelArgs(
    dim=64, n_layers=5, n_heads=4, n_future_tokens=3, vocab_size=VOCAB, multiple_of=32, max_seq_len=128
)


@dataclass(frozen=True)
class Case:
    rows_per_micro: int  # per rank and micro-batch
    micro_batches: int  # per rank and optimizer step
    weighted: bool  # random token weights via `weigh`
    value_head: bool  # value loss via `prepare`
    frozen_trunk: bool = False  # critic training: no CE, only the value head trains
    activation_checkpointing: bool = False
    bf16: bool = (
        False  # FSDP computes in bf16 and reduces in fp32 (the CUDA setting) against an fp32 reference
    )


CASES = {
    "weighted_value": Case(rows_per_micro=2, micro_batches=1, weighted=True, value_head=True),
    "accumulation": Case(
        rows_per_micro=2, micro_batches=2, weighted=False, value_head=True, activation_checkpointing=True
    ),
    "critic_frozen_trunk": Case(
        rows_per_micro=2, micro_batches=1, weighted=False, value_head=True, frozen_trunk=True
    ),
    "bf16_accumulation": Case(rows_per_micro=2, micro_batches=2, weighted=True, value_head=True, bf16=True),
}


def global_batch(case: Case, step: int) -> dict[str, Tensor]:
    """Rows of different lengths and prompt lengths, labels -100 on prompt and padding, weights and rewards."""
    n = case.rows_per_micro * case.micro_batches * WORLD
    g = torch.Generator().manual_seed(100 + step)
    lengths = torch.randint(12, 48, (n,), generator=g)
    prompts = (lengths.float() * torch.rand(n, generator=g) * 0.6).long()
    width = int(lengths.max())
    tokens = torch.randint(0, VOCAB, (n, width), generator=g)
    positions = torch.arange(width)
    response = (positions >= prompts[:, None]) & (positions < lengths[:, None])
    return {
        "tokens": tokens,
        "labels": torch.where(response, tokens, IGNORE_INDEX),
        "lengths": lengths,
        "weights": torch.rand(n, width, ARGS.n_future_tokens, generator=g) * 4.9 + 0.1,
        "reward": (torch.rand(n, generator=g) > 0.5).float(),
    }


def micro_batches(case: Case, step: int, rank: int, world: int) -> list[dict[str, Tensor]]:
    """This rank's micro-batches, each cut to its own longest row; world 1 gets the whole batch at once."""
    batch = global_batch(case, step)
    n = batch["tokens"].shape[0]
    if world == 1:
        groups = [torch.arange(n)]
    else:
        per_rank = case.rows_per_micro * case.micro_batches
        mine = torch.arange(rank * per_rank, (rank + 1) * per_rank)
        groups = list(mine.split(case.rows_per_micro))
    out = []
    for rows in groups:
        width = int(batch["lengths"][rows].max())
        out.append(
            {key: value[rows][:, :width] if value.dim() > 1 else value[rows] for key, value in batch.items()}
        )
    return out


def build(case: Case) -> Trainable:
    policy = Transformer(ARGS)
    policy.init_weights(torch.Generator().manual_seed(7))
    head = None
    if case.value_head:
        head = ValueHead(ARGS.dim)
        head.init_weights(torch.Generator().manual_seed(8))
    trainable = Trainable(policy, head)
    if case.frozen_trunk:
        policy.requires_grad_(False)
    return trainable


def full_grads(trainable: Trainable) -> dict[str, Tensor]:
    """Every gradient as a full tensor (a collective under FSDP: every rank calls it)."""
    out = {}
    for name, p in trainable.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            out[name] = g.detach().clone()
    return out


def train(case: Case, rank: int, world: int) -> dict:
    """Two optimizer steps; returns the gradients of each step and the full state dict after them."""
    trainable = build(case)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        apply_fsdp(
            trainable,
            init_device_mesh("cpu", (world,)),
            activation_checkpointing=case.activation_checkpointing,
            param_dtype=torch.bfloat16 if case.bf16 else None,
        )
    # eps well above the gradients' rounding noise: AdamW's first step is about lr * sign(g), so with the default
    # 1e-8 a gradient of 1e-9 that differs in its last bits moves a weight by a visibly different amount, and
    # the two runs would diverge by float noise alone. Real recipe errors (a stale gathered copy at step 2, a
    # missing reduction) change gradients by orders of magnitude more.
    params = [p for p in trainable.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, eps=1e-4, weight_decay=0.1)
    n_future = ARGS.n_future_tokens
    heads = [] if case.frozen_trunk else None
    step_grads, losses = [], []
    for step in range(STEPS):
        batches = micro_batches(case, step, rank, world)
        # Global denominators: every micro-batch of the step, every rank.
        counts = torch.zeros(n_future + 1, dtype=torch.float64)
        for b in batches:
            counts[:n_future] += valid_target_counts(b["labels"], n_future)
            counts[n_future] += (b["labels"] != IGNORE_INDEX).sum()
        counts = all_reduce_sum(counts).float()
        den_heads, den_value = counts[:n_future], counts[n_future]
        loss = torch.zeros(())
        for i, b in enumerate(batches):
            w = b["weights"]
            weigh = (lambda k, ce, valid, w=w: w[..., k - 1]) if case.weighted else None
            prepare = None
            if case.value_head:

                def prepare(hd: Tensor, b=b, den_value=den_value) -> Tensor:
                    values = trainable.value_head(trainable.policy.norm(hd))
                    mask = b["labels"] != IGNORE_INDEX
                    return 0.5 * (((values - b["reward"][:, None]) ** 2) * mask).sum() / den_value

            result = mtp_backward(
                trainable,
                b["tokens"],
                b["labels"],
                denominators=den_heads,
                weigh=weigh,
                prepare=prepare,
                heads=heads,
                loss_scale=float(world),
                sync=i == len(batches) - 1,
            )
            loss += result.loss
        losses.append(all_reduce_sum(loss))
        step_grads.append(full_grads(trainable))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"grads": step_grads, "losses": losses, "state": full_state_dict(trainable)}


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for name, case in CASES.items():
            result = train(case, rank, world)
            if rank == 0:
                torch.save(result, Path(out_dir) / f"{name}.pt")
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def assert_close_dicts(got: dict[str, Tensor], want: dict[str, Tensor], what: str, tol: float = 1e-5) -> None:
    """Every tensor equal to `tol` of its own scale (max |want|): summation order differs between the runs."""
    assert got.keys() == want.keys(), f"{what}: names differ: {sorted(got.keys() ^ want.keys())}"
    for name in want:
        scale = want[name].abs().max().item()
        torch.testing.assert_close(
            got[name], want[name], rtol=0, atol=tol * scale, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


@pytest.mark.parametrize("name", list(CASES))
def test_two_rank_steps_equal_one_process(sharded_results: Path, name: str):
    case = CASES[name]
    got = torch.load(sharded_results / f"{name}.pt")
    torch.set_num_threads(1)
    want = train(case, rank=0, world=1)
    # bf16 compute against the fp32 reference: a smoke test of the CUDA setting's code path (no-sync gradient
    # accumulation upcasts to the fp32 reduce dtype), with a tolerance bf16's 8-bit mantissa allows.
    tol = 5e-2 if case.bf16 else 1e-5
    for step in range(STEPS):
        assert_close_dicts(got["grads"][step], want["grads"][step], f"step {step + 1} gradient", tol)
        torch.testing.assert_close(got["losses"][step], want["losses"][step], rtol=tol, atol=0)
    if case.bf16:
        # AdamW moves a weight by about lr * sign(g); where bf16 flips the sign of a tiny gradient, the weights
        # differ by up to 2 lr per step.
        for key, value in want["state"].items():
            torch.testing.assert_close(got["state"][key], value, rtol=0, atol=2 * LR * STEPS, msg=key)
    else:
        assert_close_dicts(got["state"], want["state"], f"parameters after {STEPS} steps")
    if case.frozen_trunk:
        assert set(got["grads"][0]) == {"value_head.proj.weight", "value_head.proj.bias"}


def test_gathered_state_loads_under_meta_names(sharded_results: Path):
    # Activation checkpointing ran in the "accumulation" case: names must be unchanged.
    state = torch.load(sharded_results / "accumulation.pt")["state"]
    Transformer(ARGS).load_state_dict(policy_state_dict(state), strict=True)
    ValueHead(ARGS.dim).load_state_dict(value_head_state_dict(state), strict=True)
    assert all(not key.startswith("policy.") for key in policy_state_dict(state))
