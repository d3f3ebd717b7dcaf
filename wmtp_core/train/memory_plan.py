"""Per-GPU memory of each training recipe under FSDP2, planned on the meta device before any GPU is rented.

The models are built on `torch.device("meta")` (shapes, no storage) from the params file's sources: Meta's
`params.json` when it is present, else the 7B_1T_4 architecture (`model.args.preset_7b_1t_4`); the reference's
`config.json`, else Sheared-LLaMA-2.7B's. FSDP2's groups are the ones `distributed.apply_fsdp` forms (each
block, norm + output, the value head, the root with the embedding). Per GPU, at world size W:

- **parameters**: the Trainer loads every policy in fp32, so FSDP2's shards are fp32 master weights (each
  parameter split on dim 0, padded to a multiple of W); mixed precision casts to bf16 only for the all-gather.
- **gradients**: sharded, fp32 (the shards' dtype), trainable parameters only (the critic's trunk is frozen).
- **AdamW**: two fp32 moments per trainable shard element.
- **gradients held unsharded**: `loss.mtp_backward` runs the heads' backwards with gradient sync off, so the
  head groups and norm/output keep full gradients until the trunk's backward; with `grad_accum > 1` every
  non-final micro-batch runs with sync off and FSDP2 accumulates *every* group's gradient unsharded, in the
  fp32 reduce dtype. That is the price of accumulating without a reduce-scatter per micro-batch.
- **gathered parameters** in the compute dtype (bf16 under `mixed_precision: bfloat16`/`auto` on CUDA): the
  largest group, the next one prefetched, and norm + output, which stay gathered through the head passes.
- **reference** (rho1): the tuned reference is held whole, in the compute dtype, on every rank.
- **activations**, an estimate for one micro-batch of `batch_size` rows of `max_tokens` tokens: 34 bytes per
  token and model dimension for a block in 16-bit (Korthikanti et al. 2022, without the attention-score term,
  which fused attention kernels never store); with activation checkpointing each trunk block keeps only its
  input, and one block is recomputed at a time; one head pass adds its block and its logits (the logits, their
  fp32 copy, the saved log-softmax and its gradient: 14 bytes a logit in bf16).
- **reserve**: the CUDA context, NCCL buffers and allocator fragmentation, as given.

    wmtp memory-plan --params presets/7b_1t_4.yaml --world-size 4 --gpu-gb 80
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch
from torch import nn

from wmtp_core.config import Params, load_params, params_file
from wmtp_core.model.args import ModelArgs, preset_7b_1t_4
from wmtp_core.model.micro import micro_args
from wmtp_core.model.transformer import Transformer
from wmtp_core.model.value_head import ValueHead
from wmtp_core.train.distributed import Trainable
from wmtp_core.train.params import RECIPES
from wmtp_core.train.recipes import CE_RECIPES, VALUE_RECIPES, freeze

GIB = 2**30
LLAMA2_VOCAB = 32000  # the vocabulary of the Llama-2 tokenizer the preset names (Meta's params.json says -1)
# princeton-nlp/Sheared-LLaMA-2.7B's config.json, its architecture (used when the directory is not at hand).
SHEARED_LLAMA_2_7B = {
    "model_type": "llama", "hidden_size": 2560, "intermediate_size": 6912, "num_attention_heads": 20,
    "num_key_value_heads": 20, "num_hidden_layers": 32, "vocab_size": 32000, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
}  # fmt: skip
ACTIVATION_BYTES_PER_TOKEN_DIM = 34  # per block, 16-bit (see the module docstring)
LOGIT_BYTES = {2: 14, 4: 12}  # per logit: logits, fp32 copy (none in fp32), saved log-softmax, gradient


def _vocab(params: Params) -> int:
    if params.tokenizer.path is None:
        return params.tokenizer.vocab_size
    if params.tokenizer.path.is_file():
        from wmtp_core.tokenizer import Tokenizer

        return Tokenizer(params.tokenizer.path).vocab_size
    return LLAMA2_VOCAB


def policy_args(params: Params) -> tuple[ModelArgs, str]:
    """The policy's architecture and its source: Meta's params.json, or 7B_1T_4's, or the micro policy."""
    vocab = _vocab(params)
    if params.base_model.source == "micro":
        return micro_args("policy", vocab), "micro policy"
    meta_json = params.base_model.meta_dir / "params.json"
    if meta_json.is_file():
        args, source = ModelArgs.from_json(meta_json), str(meta_json)
    else:
        args, source = preset_7b_1t_4(), "7B_1T_4 (params.json not present)"
    return (args.replace(vocab_size=vocab) if args.vocab_size < 1 else args), source


def reference_args(params: Params) -> tuple[ModelArgs, str]:
    """The reference's architecture: its config.json, or Sheared-LLaMA-2.7B's, or the micro reference."""
    import json

    from wmtp_core.model.convert import args_from_hf_config

    if params.reference_model.source == "micro":
        return micro_args("reference", _vocab(params)), "micro reference"
    config = params.reference_model.hf_dir / "config.json"
    if config.is_file():
        return args_from_hf_config(json.loads(config.read_text()), str(config)), str(config)
    return args_from_hf_config(SHEARED_LLAMA_2_7B), "Sheared-LLaMA-2.7B (config.json not present)"


def meta_trainable(args: ModelArgs, value_head: bool) -> Trainable:
    """The policy (and value head) on the meta device: every shape, no storage."""
    with torch.device("meta"):
        return Trainable(Transformer(args), ValueHead(args.dim) if value_head else None)


def fsdp_groups(trainable: Trainable) -> dict[str, list[nn.Parameter]]:
    """FSDP2's parameter groups as `apply_fsdp` forms them, named by module path; the root group last."""
    policy = trainable.policy
    groups: dict[str, list[nn.Parameter]] = {}
    for i, block in enumerate(policy.layers):
        groups[f"policy.layers.{i}"] = list(block.parameters())
    for j, block in enumerate(policy.extra_heads):
        groups[f"policy.extra_heads.{j}"] = list(block.parameters())
    groups["policy.norm+output"] = [*policy.norm.parameters(), *policy.output.parameters()]
    if trainable.value_head is not None:
        groups["value_head"] = list(trainable.value_head.parameters())
    grouped = {id(p) for ps in groups.values() for p in ps}
    groups["root"] = [p for p in trainable.parameters() if id(p) not in grouped]
    return groups


def shard_numel(p: nn.Parameter, world_size: int) -> int:
    """Elements of one rank's shard: FSDP2 splits dim 0 into world_size equal chunks (the last one padded)."""
    if p.dim() == 0:
        return 1
    return math.ceil(p.shape[0] / world_size) * (p.numel() // p.shape[0])


def _numel(ps: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in ps)


@dataclass(frozen=True)
class RecipePlan:
    """One recipe's per-GPU bytes, component by component."""

    recipe: str
    model: str  # where the architecture came from
    parameters: int  # every parameter of the trained module (policy + value head)
    trainable: int
    largest_group: str
    largest_group_params: int
    compute_bytes: int  # 2 (bf16) or 4 (fp32): gathered parameters and activations
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.lines.values())


COMPONENTS = (
    "parameters (sharded, fp32)",
    "gradients (sharded, fp32)",
    "AdamW moments (sharded, 2 x fp32)",
    "gradients held unsharded (fp32)",
    "gathered parameters",
    "reference (whole)",
    "activations (estimate)",
    "reserve",
)


def plan_recipe(recipe: str, params: Params, world_size: int, reserve_bytes: int = 0) -> RecipePlan:
    """Per-GPU memory of training `recipe` with `params` on `world_size` GPUs (see the module docstring)."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: expected a positive number of GPUs")
    cfg = params.train.recipe(recipe)
    args, source = reference_args(params) if recipe == "reference" else policy_args(params)
    trainable = meta_trainable(args, value_head=recipe in VALUE_RECIPES)
    freeze(trainable.policy, recipe, cfg.model_dump())
    frozen_trunk = not any(p.requires_grad for p in trainable.policy.layers[:-1].parameters())
    groups = fsdp_groups(trainable)
    compute = 4 if cfg.mixed_precision == "float32" else 2  # auto means bf16 on the GPUs planned for

    everything = list(trainable.parameters())
    trained = [p for p in everything if p.requires_grad]
    shards = sum(shard_numel(p, world_size) for p in everything)
    trained_shards = sum(shard_numel(p, world_size) for p in trained)

    policy = trainable.policy
    head_groups = [f"policy.layers.{len(policy.layers) - 1}", *(f"policy.extra_heads.{j}"
                   for j in range(len(policy.extra_heads))), "policy.norm+output", "value_head"]  # fmt: skip
    if cfg.grad_accum > 1:
        held = trained
    else:
        held = [p for g in head_groups for p in groups.get(g, []) if p.requires_grad]

    blocks = {name: _numel(ps) for name, ps in groups.items() if name != "policy.norm+output"}
    largest = max(blocks, key=blocks.__getitem__)
    by_size = sorted(blocks.values(), reverse=True)
    gathered = (by_size[0] + (by_size[1] if len(by_size) > 1 else 0) + _numel(groups["policy.norm+output"]))

    reference = 0
    if recipe == "rho1":
        ref_args, _ = reference_args(params)
        reference = _numel(list(meta_trainable(ref_args, value_head=False).parameters())) * compute

    lines = {
        COMPONENTS[0]: shards * 4,
        COMPONENTS[1]: trained_shards * 4,
        COMPONENTS[2]: trained_shards * 8,
        COMPONENTS[3]: _numel(held) * 4,
        COMPONENTS[4]: gathered * compute,
        COMPONENTS[5]: reference,
        COMPONENTS[6]: activation_bytes(args, cfg.batch_size, cfg.max_tokens, compute,
                                        checkpointing=cfg.activation_checkpointing,
                                        heads=recipe in CE_RECIPES, frozen_trunk=frozen_trunk),  # fmt: skip
        COMPONENTS[7]: reserve_bytes,
    }
    return RecipePlan(recipe=recipe, model=source, parameters=_numel(everything), trainable=_numel(trained),
                      largest_group=largest, largest_group_params=blocks[largest], compute_bytes=compute,
                      lines=lines)  # fmt: skip


def activation_bytes(args: ModelArgs, batch_size: int, max_tokens: int, compute_bytes: int, *,
                     checkpointing: bool, heads: bool, frozen_trunk: bool) -> int:  # fmt: skip
    """Peak activation bytes of one micro-batch: the trunk's saved tensors plus one head pass."""
    tokens = batch_size * max_tokens
    block = ACTIVATION_BYTES_PER_TOKEN_DIM * tokens * args.dim * compute_bytes // 2
    hidden = tokens * args.dim
    head_pass = block + tokens * args.vocab_size * LOGIT_BYTES[compute_bytes] if heads else 0
    if frozen_trunk:  # no graph through the trunk: one block's working set at a time, h_trunk, one head pass
        return block + hidden * compute_bytes + head_pass
    n_trunk = args.n_trunk_layers
    saved = n_trunk * hidden * compute_bytes + block if checkpointing else n_trunk * block
    h_trunk = hidden * (compute_bytes + 4)  # the detached trunk output and the fp32 gradient gathered at it
    return saved + h_trunk + head_pass


def plan(params: Params, world_size: int, reserve_bytes: int = 0,
         recipes: tuple[str, ...] = RECIPES) -> list[RecipePlan]:  # fmt: skip
    return [plan_recipe(r, params, world_size, reserve_bytes) for r in recipes]


def render(plans: list[RecipePlan], world_size: int, gpu_bytes: int) -> str:
    """A table of GiB per GPU: one row per component, one column per recipe, the total and whether it fits."""
    width = max(len(c) for c in COMPONENTS) + 1
    cols = [max(7, len(p.recipe) + 1) for p in plans]

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, cols, strict=True))

    out = [row("per GPU, GiB", [p.recipe for p in plans])]
    out += [row(name, [f"{p.lines[name] / GIB:.2f}" for p in plans]) for name in COMPONENTS]
    out.append(row("total", [f"{p.total / GIB:.2f}" for p in plans]))
    out.append(row(f"fits {gpu_bytes / GIB:g} GiB", ["yes" if p.total <= gpu_bytes else "NO" for p in plans]))
    models: dict[tuple, list[RecipePlan]] = {}
    for p in plans:
        models.setdefault((p.model, p.parameters, p.largest_group, p.compute_bytes), []).append(p)
    head = [f"FSDP2 over {world_size} GPU(s); models built on the meta device:"]
    for (model, parameters, group, compute), ps in models.items():
        dtype = "bf16" if compute == 2 else "fp32"
        head.append(f"  {', '.join(p.recipe for p in ps)}: {model}")
        head.append(f"    {parameters:,} parameters; largest FSDP group {group} "
                    f"({ps[0].largest_group_params:,}), all-gathered in {dtype}")
    return "\n".join(head + [""] + out)


@click.command("memory-plan")
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the params file [default: $WMTP_PARAMS or the project's params.yaml]")
@click.option("--world-size", type=int, default=4, show_default=True, help="GPUs FSDP2 shards over")
@click.option("--gpu-gb", type=float, default=80.0, show_default=True, help="memory of one GPU, GiB")
@click.option("--reserve-gb", type=float, default=4.0, show_default=True,
              help="GiB kept for the CUDA context, NCCL buffers and allocator fragmentation")
@click.option("--recipe", "recipes", type=click.Choice(RECIPES), multiple=True,
              help="plan these recipes (repeatable) [default: all]")
def memory_plan_command(params_path: Path | None, world_size: int, gpu_gb: float, reserve_gb: float,
                        recipes: tuple[str, ...]) -> None:  # fmt: skip
    """Print each recipe's memory per GPU under FSDP2, planned on the meta device; exit 1 if any won't fit."""
    params_path = params_path or params_file()
    params = load_params(params_path)
    gpu_bytes = int(gpu_gb * GIB)
    plans = plan(params, world_size, int(reserve_gb * GIB), recipes or RECIPES)
    click.echo(f"{os.path.relpath(params_path)}: " + render(plans, world_size, gpu_bytes))
    too_big = [p.recipe for p in plans if p.total > gpu_bytes]
    if too_big:
        raise click.ClickException(
            f"{', '.join(too_big)} would not fit in {gpu_gb:g} GiB per GPU at world size {world_size}: "
            "more GPUs, a smaller batch_size or grad_accum 1 would help"
        )
