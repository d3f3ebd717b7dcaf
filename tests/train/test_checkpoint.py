"""DCP checkpoints: a 2-rank FSDP2 resume is bit-identical, plus layout, pruning, world-1 and hashing."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.conftest import free_port
from wmtp_core.train.checkpoint import (
    METADATA,
    TRAINER_STATE,
    CheckpointError,
    checkpoint_sha256,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_dir,
)

WORLD = 2
TOTAL_STEPS = 10


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4)
    )


def warmup_cosine(step: int, warmup: int = 2) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (TOTAL_STEPS - warmup)))


def make_training(model: nn.Module):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
    return opt, sched


def train_step(model: nn.Module, opt, sched) -> None:
    # Every generator the checkpoint restores feeds the batch, so a wrong or missing RNG restore changes it.
    x = torch.randn(4, 8) * (1 + random.random())
    y = torch.from_numpy(np.random.rand(4, 4).astype(np.float32))
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    sched.step()



def _fsdp_setup(rank: int, port: int, seed: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    model = make_model()
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt, sched = make_training(model)
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)
    return model, opt, sched


def _save_full_params(model: nn.Module, path: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save(full, path)


def _first_run(rank: int, port: int, root: str, out: str) -> None:
    """Train 6 steps, saving after 2, 3 and 6 (keep=2 prunes step 2); full params at step 3 and 6."""
    model, opt, sched = _fsdp_setup(rank, port, seed=1)
    try:
        for step in range(1, 7):
            train_step(model, opt, sched)
            if step in (2, 3, 6):
                save_checkpoint(
                    root, step, model, opt, sched, state={"step": step, "run_id": f"run-on-{rank}"}
                )
            if step == 3:
                _save_full_params(model, Path(out) / "params_step3.pt")
        _save_full_params(model, Path(out) / "params_A.pt")
    finally:
        dist.destroy_process_group()


def _resumed_run(rank: int, port: int, root: str, out: str) -> None:
    """Fresh processes with other seeds: load step 3, train 3 steps."""
    model, opt, sched = _fsdp_setup(rank, port, seed=999)
    try:
        state = load_checkpoint(step_dir(root, 3), model, opt, sched)
        assert state == {"step": 3, "run_id": "run-on-0"}, state  # rank 0's state, on every rank
        for _ in range(3):
            train_step(model, opt, sched)
        _save_full_params(model, Path(out) / "params_B.pt")
    finally:
        dist.destroy_process_group()


def test_two_rank_fsdp2_checkpoints(tmp_path):
    """One test, not a module fixture shared by several: with pytest 9.2 + xdist 3.8 `xdist_group` has no effect
    (xdist sets `item._nodeid`, pytest 9 reads `item._id`), so split tests would each spawn the 2 ranks again."""
    root, out = tmp_path / "ckpt", tmp_path / "out"
    out.mkdir()
    mp.spawn(_first_run, args=(free_port(), str(root), str(out)), nprocs=WORLD, join=True)
    # An unfinished later save (crash before .metadata): latest_checkpoint and resume must skip it.
    broken = step_dir(root, 9)
    broken.mkdir()
    (broken / "__0_0.distcp").write_bytes(b"partial")
    mp.spawn(_resumed_run, args=(free_port(), str(root), str(out)), nprocs=WORLD, join=True)

    _check_resume_is_bit_identical(out)
    _check_layout_pruning_and_incomplete_ignored(root)
    _check_loads_into_one_process(root, out)


def _check_resume_is_bit_identical(out: Path) -> None:
    a = torch.load(out / "params_A.pt")
    b = torch.load(out / "params_B.pt")
    step3 = torch.load(out / "params_step3.pt")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert not torch.equal(a[name], step3[name]), name  # the 3 steps after the resume did train


def _check_layout_pruning_and_incomplete_ignored(root: Path) -> None:
    names = sorted(p.name for p in root.iterdir())
    assert names == ["step_00000003", "step_00000006", "step_00000009"]  # step 2 pruned, no temporary left
    ckpt = root / "step_00000006"
    assert latest_checkpoint(root) == ckpt
    assert sorted(p.name for p in ckpt.iterdir()) == [METADATA, "__0_0.distcp", "__1_0.distcp", TRAINER_STATE]
    assert json.loads((ckpt / TRAINER_STATE).read_text()) == {
        "step": 6,
        "world_size": 2,
        "state": {"step": 6, "run_id": "run-on-0"},
    }
    with pytest.raises(CheckpointError, match=r"step_00000009: incomplete checkpoint"):
        load_checkpoint(root / "step_00000009", *_plain_training())


def _check_loads_into_one_process(root: Path, out: Path) -> None:
    """DCP reshards: the FSDP2 shards of 2 ranks load into an unsharded model; the RNG is left alone."""
    model, opt, sched = _plain_training()
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match=r"saved by 2 ranks, loading into 1"):
        state = load_checkpoint(root / "step_00000003", model, opt, sched)
    assert state["step"] == 3
    assert torch.equal(torch.rand(3), expected_draw)
    step3 = torch.load(out / "params_step3.pt")
    for name, p in model.state_dict().items():
        assert torch.equal(p, step3[name]), name
    assert sched.last_epoch == 3
    assert all(float(s["step"]) == 3 for s in opt.state.values())


def _plain_training():
    model = make_model()
    opt, sched = make_training(model)
    return model, opt, sched


def test_world_one_round_trip_and_keep(tmp_path):
    torch.manual_seed(3)
    model, opt, sched = _plain_training()
    for step in range(1, 4):
        train_step(model, opt, sched)
        saved = save_checkpoint(
            tmp_path, step, model, opt, sched, state={"epoch": 0, "row": step * 4}, keep=2
        )
    assert saved == step_dir(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000003"]
    rng_after_save = torch.get_rng_state()
    expected = [p.detach().clone() for p in model.parameters()]
    train_step(model, opt, sched)
    expected_next = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(123)
    model2, opt2, sched2 = _plain_training()
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, sched2)
    assert state == {"epoch": 0, "row": 12}
    assert torch.equal(torch.get_rng_state(), rng_after_save)
    assert all(torch.equal(p, q) for p, q in zip(model2.parameters(), expected, strict=True))
    train_step(model2, opt2, sched2)
    assert all(torch.equal(p, q) for p, q in zip(model2.parameters(), expected_next, strict=True))

    # Saving the same step again replaces it whole.
    save_checkpoint(tmp_path, 3, model2, opt2, sched2, state={"again": True})
    assert load_checkpoint(step_dir(tmp_path, 3), *_plain_training()) == {"again": True}


def test_errors_name_the_checkpoint(tmp_path):
    model, opt, sched = _plain_training()
    with pytest.raises(CheckpointError, match=r"step_00000001: checkpoint directory does not exist"):
        load_checkpoint(tmp_path / "step_00000001", model, opt, sched)
    with pytest.raises(TypeError, match=r"`state` must be JSON-able"):
        save_checkpoint(tmp_path, 1, model, opt, sched, state={"path": tmp_path})
    assert latest_checkpoint(tmp_path / "nothing") is None

    save_checkpoint(tmp_path, 1, model, opt, sched, state={})
    wider = nn.Sequential(
        nn.Linear(8, 64), nn.GELU(), nn.Dropout(0.2), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 4)
    )
    # DCP's CheckpointException is a BaseException; it comes out as a CheckpointError naming the directory.
    with pytest.raises(
        CheckpointError, match=r"step_00000001: does not fit .*rank 0: ValueError: Size mismatch"
    ):
        load_checkpoint(step_dir(tmp_path, 1), wider, *make_training(wider))


def test_checkpoint_sha256_is_stable(tmp_path):
    model, opt, sched = _plain_training()
    path = save_checkpoint(tmp_path, 1, model, opt, sched, state={"a": 1})
    digest = checkpoint_sha256(path)
    assert len(digest) == 64 and digest == checkpoint_sha256(path)
    (path / TRAINER_STATE).write_text((path / TRAINER_STATE).read_text() + " ")
    assert checkpoint_sha256(path) != digest
