"""Resumable training state: model, optimizer, LR scheduler, trainer state and per-rank RNG, via torch DCP.

Layout of one checkpoint, `root/step_{step:08d}/`:

    .metadata            DCP's index, written last by rank 0; a directory without it is incomplete
    __{rank}_0.distcp    DCP shards, one file per rank
    trainer_state.json   {"step", "world_size", "state"}: the trainer's JSON-able state as rank 0 passed it

Inside DCP the keys are `model.*` and `optim.*` (from `get_state_dict`, so FSDP2 shards and Adam moments are both
saved under fully qualified names), `scheduler.*`, and `rng_rank{r}.*` for every rank r. The RNG key differs per
rank on purpose: DCP saves a key present on every rank only once, and every rank would then restore one rank's
generator.

Every rank calls `save_checkpoint` and `load_checkpoint`; both also work without torch.distributed initialised.
`save_checkpoint` writes into a temporary sibling, all ranks meet at a barrier, and rank 0 renames it into place:
a crash leaves either the previous checkpoints or an ignored temporary directory. Saving is synchronous on purpose
(`dcp.async_save` on the default gloo group hangs while training runs collectives).

A different world size at load time: DCP reshards the model and optimizer (the checkpoint stores global shapes,
keys are parameter names, not ranks), so a 2-rank checkpoint loads into 1 or 4 ranks. What cannot carry over is
the RNG: rank r of a different world draws a different data stream anyway, so RNG states are then left as they
are, with a warning, and the resume is no longer bit-identical.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from wmtp_core.storage import sha256_file

METADATA = ".metadata"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"step_(\d{8})")


class CheckpointError(RuntimeError):
    """A training checkpoint is missing, incomplete or does not fit the run loading it."""


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / METADATA).is_file() and (Path(path) / TRAINER_STATE).is_file()


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete `step_XXXXXXXX` directory under root, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root, or None (no root, nothing saved, or only incomplete ones)."""
    found = _complete_checkpoints(Path(root))
    return found[-1][1] if found else None


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _quiet_single_process():
    # Without a process group DCP warns on every call that it assumes a single process, which is the intent here.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.distributed is disabled, unavailable or uninitialized.*"
        )
        yield


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], where: Path) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        if not torch.cuda.is_available():
            raise CheckpointError(f"{where}: saved CUDA RNG states but CUDA is not available to restore them")
        torch.cuda.set_rng_state_all(state["cuda"])


def _training_state_dict(module: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(module, optimizer)
    return {"model": model_sd, "optim": optim_sd, "scheduler": scheduler.state_dict()}


def save_checkpoint(
    root: str | Path,
    step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Save the training state at `step` to `root/step_{step:08d}` and return that path. Every rank calls it.

    `state` must be JSON-able; rank 0's copy is the one saved (e.g. the MLflow run id, known only there). After
    the new checkpoint is in place, rank 0 removes all but the newest `keep` complete checkpoints.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the checkpoint just written must be kept")
    rank, world = _rank_world()
    root = Path(root).absolute()
    final = step_dir(root, step)
    tmp = final.with_name(f".{final.name}.tmp")
    # Checked on every rank before the first collective, so a bad state fails everywhere instead of hanging.
    try:
        trainer_state = json.dumps(
            {"step": step, "world_size": world, "state": state}, indent=2, sort_keys=True
        )
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_checkpoint(step={step}): `state` must be JSON-able ({e})") from e

    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save of this step
        tmp.mkdir(parents=True)
        (tmp / TRAINER_STATE).write_text(trainer_state + "\n")
    _barrier()

    to_save = _training_state_dict(module, optimizer, scheduler)
    to_save[f"rng_rank{rank}"] = _rng_state()
    try:
        with _quiet_single_process():
            dcp.save(to_save, checkpoint_id=tmp)
    except CheckpointException as e:
        raise CheckpointError(f"{tmp}: saving step {step} failed ({_failures(e)})") from e
    _barrier()  # every rank's shards and rank 0's .metadata are on disk

    if rank == 0:
        old = final.with_name(f".{final.name}.old")
        # Saving a step again (resumed right at it): the old copy goes only once the new one is in place.
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        for _, path in _complete_checkpoints(root)[:-keep]:
            shutil.rmtree(path)
    _barrier()  # no rank returns before the checkpoint it names exists
    return final


def _failures(e: CheckpointException) -> str:
    # DCP's own exception derives from BaseException (an `except Exception` misses it) and its text is a traceback
    # per rank; the last line of each says what went wrong.
    return "; ".join(
        f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in sorted(e.failures.items())
    )


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The `trainer_state.json` of a checkpoint: {"step", "world_size", "state"}. Raises CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    if not (path / METADATA).is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint, no {METADATA} (the save did not finish)")
    if not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint, no {TRAINER_STATE}")
    try:
        return json.loads((path / TRAINER_STATE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / TRAINER_STATE}: not valid JSON ({e})") from e


def load_checkpoint(
    path: str | Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG from `path`; return the trainer `state` saved.

    Every rank calls it, with the module already wrapped (or not) as it will train. Loading into a different world
    size works (DCP reshards) but leaves the RNG as it is, with a warning: see the module docstring.
    """
    path = Path(path).absolute()
    saved = read_trainer_state(path)
    rank, world = _rank_world()
    same_world = saved.get("world_size") == world
    if not same_world:
        warnings.warn(
            f"{path}: saved by {saved.get('world_size')} ranks, loading into {world}: model and optimizer are "
            "resharded, RNG states are not restored (the resume is not bit-identical)",
            stacklevel=2,
        )

    to_load = _training_state_dict(module, optimizer, scheduler)
    rng_key = f"rng_rank{rank}"
    if same_world:
        to_load[rng_key] = _rng_state()  # a template of the right structure; DCP fills it in place
    try:
        with _quiet_single_process():
            dcp.load(to_load, checkpoint_id=path)
    except CheckpointException as e:
        raise CheckpointError(
            f"{path}: does not fit the model, optimizer or scheduler loading it ({_failures(e)})"
        ) from e
    set_state_dict(module, optimizer, model_state_dict=to_load["model"], optim_state_dict=to_load["optim"])
    scheduler.load_state_dict(to_load["scheduler"])
    if same_world:
        _set_rng_state(to_load[rng_key], path)
    return saved["state"]


def checkpoint_sha256(path: str | Path) -> str:
    """One SHA256 over a checkpoint directory: every file's relative path, size and content, in sorted order."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint directory does not exist")
    h = hashlib.sha256()
    for p in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = p.relative_to(root).as_posix()
        h.update(f"{rel}\0{p.stat().st_size}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()
