"""Parallelism applied to the unchanged model from outside (as torchtitan does): process group, FSDP2, gathers.

`Trainable` bundles the policy and the optional value head into the one module that FSDP shards, the optimizer
steps and the checkpoint saves. Everything here also runs in a single process without torch.distributed, so the
same trainer code serves `python -m ...` and `torchrun`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from wmtp_core.model.transformer import Transformer
from wmtp_core.model.value_head import ValueHead


class Trainable(nn.Module):
    """The policy and its optional value head as one module: FSDP root, optimizer unit, checkpoint unit.

    Training never calls `Transformer.forward` (the loss runs the trunk once and the heads one at a time), and
    FSDP2's root hooks fire only on the root's own `forward`, so the root must be a module whose forward is the
    trunk. Parameter names are `policy.<Meta name>` and `value_head.proj.*`.
    """

    def __init__(self, policy: Transformer, value_head: ValueHead | None = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids [B, T] -> h_trunk [B, T, dim] (not normed)."""
        return self.policy.trunk(tokens)


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def policy_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The policy's entries of a `Trainable` state dict under Meta's names (for `wmtp_core.model.io.save`).

    Activation checkpointing here is the composable kind, which renames nothing, so stripping `policy.` is all.
    """
    return _strip(state, "policy.")


def value_head_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The value head's entries of a `Trainable` state dict, as `ValueHead.state_dict()` names them."""
    return _strip(state, "value_head.")


def apply_fsdp(
    trainable: Trainable,
    mesh: DeviceMesh | None = None,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype = torch.float32,
    activation_checkpointing: bool = False,
) -> Trainable:
    """Shard `trainable` in place with FSDP2 and return it.

    Groups: each trunk block; head 1 (`policy.layers[-1]`); each extra head; `[policy.norm, policy.output]` kept
    unsharded after forward (every head's unembed reuses it, PITFALLS.md); the value head alone; the root
    (`tok_embeddings`).

    Why the value head has a group of its own: in the root group (tok_embeddings), the value loss's backward failed
    in policy and frozen-trunk runs alike (`setStorage ... out of bounds for storage of size 0`): FSDP2's
    end-of-backward callback runs post-backward on every group, resharded the root group and freed the gathered
    value-head weight that the value loss's graph had saved. In its own group FSDP2 gathers it again for its
    backward, and its gradient is reduced by whichever backward ends the step (see `loss.mtp_backward`), also
    when the trunk is frozen and no trunk backward runs.

    `param_dtype` None means bf16 on CUDA and the parameters' own dtype elsewhere (CPU tests run in fp32);
    gradients are reduced in `reduce_dtype`. With `activation_checkpointing`, every block (trunk and heads)
    recomputes its activations in backward; the composable `checkpoint` is used because it keeps parameter names
    unchanged (the `checkpoint_wrapper` module would insert `_checkpoint_wrapped_module.` into every name).
    Parameters with `requires_grad=False` are fine (FSDP2 shards them and reduces only existing gradients).
    """
    if not isinstance(trainable, Trainable):
        raise TypeError(f"apply_fsdp(trainable=...): expected a Trainable, got {type(trainable).__name__}")
    if isinstance(trainable, FSDPModule):
        raise ValueError("apply_fsdp(trainable=...): this Trainable is already sharded")
    device = next(trainable.parameters()).device
    if mesh is None:
        if not dist.is_initialized():
            raise RuntimeError(
                "apply_fsdp: torch.distributed is not initialised (call init_distributed first)"
            )
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if param_dtype is None and device.type == "cuda":
        param_dtype = torch.bfloat16
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    policy = trainable.policy
    blocks = [*policy.layers, *policy.extra_heads]
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    # norm and output are shared by every head: one group that stays gathered between the head passes.
    fully_shard([policy.norm, policy.output], mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    if trainable.value_head is not None:
        # ValueHead.forward returns a squeeze (a view); FSDP2 warns in case of in-place edits, which no caller makes.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPValueHead\) returned a view")
        fully_shard(trainable.value_head, mesh=mesh, mp_policy=mp)
    fully_shard(trainable, mesh=mesh, mp_policy=mp)
    # FSDP2's default backward prefetch follows the forward order it recorded, and the end of every backward
    # clears that record: after the head-by-head backwards the trunk's backward would gather each block only
    # when it is reached. Name the trunk's order explicitly so each block's all-gather overlaps the one after.
    trunk = list(policy.layers[:-1])
    if trunk:
        trainable.set_modules_to_backward_prefetch([trunk[-1]])
        for later, earlier in zip(trunk[1:], trunk[:-1], strict=True):
            later.set_modules_to_backward_prefetch([earlier])
    return trainable


@dataclass(frozen=True)
class DistEnv:
    """Process coordinates as torchrun sets them (rank 0 of world 1 when not launched by torchrun)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """RANK, WORLD_SIZE and LOCAL_RANK from the environment; a malformed value is an error naming it."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(name)
        try:
            values[name] = default if raw is None else int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r}: expected an integer") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ValueError(
            f"environment: RANK={values['RANK']} outside 0..WORLD_SIZE-1={values['WORLD_SIZE'] - 1}"
        )
    return DistEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def device_for(local_rank: int) -> torch.device:
    """The CUDA device of this local rank when CUDA is present, else the CPU (gloo)."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> DistEnv:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU unless `backend` says otherwise).

    A no-op returning world 1 when not launched by torchrun (no WORLD_SIZE, or WORLD_SIZE=1 without MASTER_ADDR),
    so a single process needs no rendezvous.
    """
    env = dist_env()
    if dist.is_initialized():
        return env
    if env.world_size == 1 and "MASTER_ADDR" not in os.environ:
        return env
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device_for(env.local_rank))
    dist.init_process_group(backend=backend)
    return env


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group (safe when never joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum `tensor` over ranks in place (e.g. the per-head counts of valid targets); identity in one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def full_state_dict(trainable: nn.Module) -> dict[str, Tensor]:
    """Every parameter gathered to full CPU tensors on rank 0 (`{}` on the others); every rank must call it.

    Works for FSDP-sharded and plain modules alike (without torch.distributed, the one process gets it all).
    """
    return get_model_state_dict(trainable, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
