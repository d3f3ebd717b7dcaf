"""The 7B_1T_4 preset: it validates, WMTP_PARAMS selects it everywhere (DVC included), its memory plan fits
4 GPUs of 80 GiB, and its training settings run (2 gloo processes, a tiny model in place of 7B_1T_4)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from click.testing import CliRunner
from torch.distributed.tensor import DTensor

from dagster_defs.dvcgen import render
from dagster_defs.resources import build_resources
from tests.conftest import LLAMA2_SHA256, REPO, free_port
from wmtp_core.config import load_params, params_file
from wmtp_core.data.collate import IGNORE_INDEX
from wmtp_core.model import ModelArgs, Transformer
from wmtp_core.storage import read_manifest
from wmtp_core.train import memory_plan
from wmtp_core.train.cli import launch_command
from wmtp_core.train.distributed import Trainable, all_reduce_sum, apply_fsdp
from wmtp_core.train.loop import HISTORY_FILE, RESULT_FILE, _param_groups
from wmtp_core.train.recipes import Denominators, StepContext, recipe_step
from wmtp_core.train.stats import StatSums

PRESET = "presets/7b_1t_4.yaml"
DVC = str(Path(sys.executable).with_name("dvc"))
# Llama-2 7B's count: 32 blocks (28 trunk + 4 heads for 7B_1T_4) of 4 attention and 3 FFN matrices and
# 2 norms, the embedding and the unembedding (32000 x 4096 each), the final norm.
LLAMA_7B_PARAMETERS = 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 2 * 32000 * 4096 + 4096


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        assert isinstance(tree, dict) and part in tree, f"no key {dotted!r}"
        tree = tree[part]
    return tree


def _keys(tree, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict) or prefix == "sampling.stage2.bins":  # bins: names are values, not keys
        return {prefix}
    return {k for key, value in tree.items() for k in _keys(value, f"{prefix}.{key}" if prefix else key)}


# ---- the file ----------------------------------------------------------------------------------------------


def test_preset_validates_without_the_weights_and_says_what_it_trains():
    params = load_params(REPO / PRESET)  # nothing is read: the weights are not on this machine
    external = REPO / "external"
    assert not (external / "multi-token-prediction").exists()
    assert params.base_model.source == "meta"
    assert params.base_model.meta_dir == external / "multi-token-prediction" / "7B_1T_4"
    assert params.tokenizer.path == external / "multi-token-prediction" / "tokenizer.model"
    assert params.tokenizer.sha256 == LLAMA2_SHA256
    assert params.reference_model.source == "hf"
    assert params.reference_model.hf_dir == external / "Sheared-LLaMA-2.7B"
    assert params.codecontests_raw.path == external / "code_contests"
    for recipe in ("baseline", "verifiable", "rho1", "reference"):
        cfg = params.train.recipe(recipe)
        assert cfg.mixed_precision == "bfloat16" and cfg.activation_checkpointing and cfg.grad_accum > 1
    e = params.evaluation
    assert (e.n_samples, e.k, e.max_new_tokens, e.limit, e.temperature) == (200, [1, 10, 100], 512, None, 0.8)
    # Complete: every key the default params.yaml writes out, the preset writes out too (and no other).
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    preset = yaml.safe_load((REPO / PRESET).read_text())
    assert _keys(preset) == _keys(default)


def test_wmtp_params_selects_the_preset_for_the_resources(monkeypatch):
    monkeypatch.setenv("WMTP_ROOT", str(REPO))
    monkeypatch.delenv("WMTP_PARAMS", raising=False)
    assert params_file() == REPO / "params.yaml"
    assert build_resources()["params"].path == str(REPO / "params.yaml")
    monkeypatch.setenv("WMTP_PARAMS", PRESET)  # relative to the project root
    assert build_resources()["params"].path == str(REPO / PRESET)
    assert build_resources()["params"].load().base_model.source == "meta"
    monkeypatch.setenv("WMTP_PARAMS", str(REPO / PRESET))  # or absolute
    assert params_file() == REPO / PRESET


def test_dvc_yaml_variant_reads_stage_params_from_the_preset(monkeypatch, tmp_path):
    from dagster_defs.definitions import defs

    monkeypatch.delenv("WMTP_PARAMS", raising=False)
    assert render(defs) == render(defs, REPO / "params.yaml")  # the committed file is the default's
    monkeypatch.setenv("WMTP_PARAMS", PRESET)
    text = render(defs)
    assert text.splitlines()[1] == f"# Stage params from {PRESET} (WMTP_PARAMS), not params.yaml."
    stages = yaml.safe_load(text)["stages"]
    preset = yaml.safe_load((REPO / PRESET).read_text())
    for name, stage in stages.items():
        assert stage["cmd"] == f"WMTP_PARAMS={PRESET} wmtp materialize {name}"
        if "params" in stage:
            ((file, keys),) = stage["params"][0].items()
            assert file == PRESET and len(stage["params"]) == 1
            for key in keys:
                _lookup(preset, key)
    assert "external/multi-token-prediction/7B_1T_4" in stages["base_model"]["deps"]
    assert "external/Sheared-LLaMA-2.7B" in stages["reference_model"]["deps"]
    (tmp_path / "p.yaml").write_text("{}")
    for wrong, why in (("presets/no_such.yaml", "no such params file"), (str(tmp_path / "p.yaml"), "inside")):
        monkeypatch.setenv("WMTP_PARAMS", wrong)
        with pytest.raises(ValueError, match=why):
            render(defs)

    # DVC itself reads the stage params from the preset: commit a project holding the variant and the preset,
    # edit one value in the preset, and `dvc params diff` names it.
    (tmp_path / "presets").mkdir()
    (tmp_path / PRESET).write_text((REPO / PRESET).read_text())
    (tmp_path / "dvc.yaml").write_text(text)
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"), "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost"}  # fmt: skip
    setup = (["git", "init", "-q"], [DVC, "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"])
    for command in setup:
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)
    edited = yaml.safe_load((tmp_path / PRESET).read_text())
    edited["train"]["defaults"]["grad_accum"] = 4
    (tmp_path / PRESET).write_text(yaml.safe_dump(edited, sort_keys=False))
    shown = subprocess.run([DVC, "params", "diff", "--json"], cwd=tmp_path, env=env, check=True,
                           capture_output=True, text=True)  # fmt: skip
    changed = json.loads(shown.stdout)
    assert changed == {PRESET: {"train.defaults.grad_accum": {"old": 8, "new": 4, "diff": -4}}}


# ---- memory ---------------------------------------------------------------------------------------------


def test_memory_plan_of_7b_1t_4_on_four_gpus():
    params = load_params(REPO / PRESET)
    plans = {p.recipe: p for p in memory_plan.plan(params, world_size=4)}
    baseline, verifiable = plans["baseline"], plans["verifiable"]
    assert baseline.parameters == LLAMA_7B_PARAMETERS == 6_738_415_616
    assert abs(baseline.parameters - 6.74e9) / 6.74e9 < 0.01
    assert verifiable.parameters == LLAMA_7B_PARAMETERS + 4096 + 1  # the value head
    assert baseline.largest_group_params == 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096  # one block

    lines = baseline.lines
    n = LLAMA_7B_PARAMETERS
    assert lines["parameters (sharded, fp32)"] == 4 * n // 4  # every sharded dim divides by 4: no padding
    assert lines["gradients (sharded, fp32)"] == 4 * n // 4
    assert lines["AdamW moments (sharded, 2 x fp32)"] == 8 * n // 4
    assert lines["gradients held unsharded (fp32)"] == 4 * n  # grad_accum > 1: FSDP2 accumulates unsharded
    block, unembed = baseline.largest_group_params, 32000 * 4096 + 4096
    assert lines["gathered parameters"] == 2 * (2 * block + unembed)  # bf16: two blocks and norm + output
    assert lines["reference (whole)"] == 0 and plans["rho1"].lines["reference (whole)"] > 5e9  # 2.7B in bf16
    # The value head's weight [1, 4096] cannot be split on dim 0: every rank holds it whole.
    assert verifiable.lines["parameters (sharded, fp32)"] == 4 * (n // 4 + 4096 + 1)
    critic = plans["critic"].lines  # frozen trunk: only the value head trains
    assert critic["gradients (sharded, fp32)"] == 4 * (4096 + 1)
    assert critic["AdamW moments (sharded, 2 x fp32)"] == 8 * (4096 + 1)

    gpu = 80 * memory_plan.GIB
    totals = {r: p.total / memory_plan.GIB for r, p in plans.items()}
    assert all(p.total <= gpu for p in plans.values()), totals
    assert all(memory_plan.plan_recipe(r, params, 1).total > gpu for r in ("baseline", "rho1"))


def test_memory_plan_command_exits_non_zero_when_it_does_not_fit():
    runner = CliRunner()
    fits = runner.invoke(memory_plan.memory_plan_command, ["--params", str(REPO / PRESET)])
    assert fits.exit_code == 0, fits.output
    assert "6,738,415,616 parameters" in fits.output and "fits 80 GiB" in fits.output
    one = runner.invoke(memory_plan.memory_plan_command, ["--params", str(REPO / PRESET),
                                                          "--world-size", "1"])  # fmt: skip
    assert one.exit_code == 1 and "would not fit in 80 GiB per GPU at world size 1" in one.output


# ---- the preset's training settings on a tiny model ------------------------------------------------------

TINY = ModelArgs(dim=64, n_layers=6, n_heads=4, n_future_tokens=4, vocab_size=256, multiple_of=32,
                 max_seq_len=64)  # fmt: skip
WORLD, STEPS = 2, 1  # one optimizer step of grad_accum micro-batches: after it, the shards are still fp32


def _micro_batch(step: int, rank: int, i: int, rows: int) -> dict:
    g = torch.Generator().manual_seed(1000 * step + 100 * rank + i)
    tokens = torch.randint(0, TINY.vocab_size, (rows, 24), generator=g)
    labels = tokens.clone()
    labels[:, :6] = IGNORE_INDEX  # the prompt
    return {"input_ids": tokens, "labels": labels, "reward": torch.ones(rows)}


def _preset_steps(rank: int, port: int, out: str) -> None:
    """The Trainer's step with the preset's `train.baseline` settings and its CUDA dtype policy, forced."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        cfg = load_params(REPO / PRESET).train.baseline
        torch.manual_seed(cfg.seed)
        policy = Transformer(TINY)
        policy.init_weights(torch.Generator().manual_seed(cfg.seed))
        # On CUDA the Trainer passes bf16 for `mixed_precision: bfloat16` (on CPU it would compute in fp32).
        param_dtype = torch.bfloat16 if cfg.mixed_precision in ("bfloat16", "auto") else None
        trainable = apply_fsdp(Trainable(policy), param_dtype=param_dtype,
                               activation_checkpointing=cfg.activation_checkpointing)  # fmt: skip
        blocks = [*policy.layers, *policy.extra_heads]
        calls = {"root": 0, **{i: 0 for i in range(len(blocks))}}
        compute_dtypes: set[torch.dtype] = set()
        trainable.register_forward_pre_hook(lambda m, a: calls.__setitem__("root", calls["root"] + 1))
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
            block.attention.wq.register_forward_pre_hook(lambda m, a: compute_dtypes.add(m.weight.dtype))
        optimizer = torch.optim.AdamW(_param_groups(trainable, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        ctx = StepContext(recipe="baseline", cfg=cfg.model_dump(), n_heads=TINY.n_future_tokens,
                          group=dist.group.WORLD,
                          autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))  # fmt: skip
        losses, grad_dtypes = [], set()
        for step in range(STEPS):
            batches = [_micro_batch(step, rank, i, cfg.batch_size) for i in range(cfg.grad_accum)]
            den = Denominators.from_vector(all_reduce_sum(Denominators.local(batches, 4, False)), 4)
            stats = StatSums()
            for i, batch in enumerate(batches):
                recipe_step(trainable, batch, den, ctx, stats, loss_scale=float(WORLD),
                            sync=i == cfg.grad_accum - 1, sharded=True)  # fmt: skip
            torch.nn.utils.clip_grad_norm_(list(trainable.parameters()), cfg.grad_clip)
            grad_dtypes |= {p.grad.dtype for p in trainable.parameters()}
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            figures = stats.reduce(dist.group.WORLD)
            losses.append(sum(figures[f"loss/head{k}"] for k in range(1, 5)))
        result = {
            "losses": losses,
            "calls": calls,
            "compute_dtypes": sorted(str(d) for d in compute_dtypes),
            "grad_dtypes": sorted(str(d) for d in grad_dtypes),
            "param_dtypes": sorted({str(p.dtype) for p in trainable.parameters()}),
            "sharded": all(isinstance(p, DTensor) for p in trainable.parameters()),
            "cfg": {"grad_accum": cfg.grad_accum, "activation_checkpointing": cfg.activation_checkpointing},
        }
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_preset_training_settings_run_on_a_tiny_model(tmp_path):
    out = tmp_path / "result.json"
    mp.spawn(_preset_steps, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    result = json.loads(out.read_text())
    ga = result["cfg"]["grad_accum"]
    assert ga == 8 and result["cfg"]["activation_checkpointing"]
    assert len(result["losses"]) == STEPS and all(math.isfinite(x) and x > 0 for x in result["losses"])
    # Gradient accumulation: the root ran once per micro-batch, grad_accum micro-batches per optimizer step.
    assert result["calls"]["root"] == STEPS * ga
    # Activation checkpointing on every block, trunk and heads: each forward runs again in backward.
    blocks = {k: v for k, v in result["calls"].items() if k != "root"}
    assert len(blocks) == TINY.n_layers and set(blocks.values()) == {2 * STEPS * ga}
    # bf16 compute on all-gathered weights; fp32 master shards and fp32 (reduce-dtype) gradients.
    assert result["compute_dtypes"] == ["torch.bfloat16"]
    assert result["sharded"] and result["param_dtypes"] == ["torch.float32"]
    assert result["grad_dtypes"] == ["torch.float32"]


@pytest.mark.slow
def test_wmtp_launch_trains_with_the_preset_train_section(training_root: Path, monkeypatch):
    """`wmtp launch` on one node (2 gloo processes), the micro inputs, the preset's `train:` for one step."""
    params = yaml.safe_load((training_root / "params.yaml").read_text())
    params["train"] = yaml.safe_load((REPO / PRESET).read_text())["train"]
    params["train"]["defaults"].update(max_steps=1, epochs=None, eval_rows=4)
    params_path = training_root / "preset_train.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.delenv("WMTP_STORAGE", raising=False)
    monkeypatch.delenv("WMTP_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = CliRunner().invoke(launch_command, ["baseline", "--params", str(params_path), "--device", "cpu",
                                              "--nproc-per-node", "2"])  # fmt: skip
    assert out.exit_code == 0, out.output
    final = training_root / "storage" / "training" / "policy_baseline"  # storage/ beside the params file
    assert f"wrote {final}" in out.output
    manifest = read_manifest(final)
    assert manifest["params"]["grad_accum"] == 8 and manifest["params"]["activation_checkpointing"]
    result = json.loads((final / RESULT_FILE).read_text())
    assert result["steps"] == 1 and result["world_size"] == 2
    history = [json.loads(line) for line in (final / HISTORY_FILE).read_text().splitlines()]
    assert all(math.isfinite(row["loss/total"]) for row in history)
    assert json.loads((final / "model" / "metadata.json").read_text())["dtype"] == "bfloat16"  # save_dtype
    launch_dir = training_root / "storage" / "checkpoints" / "policy_baseline.launch"
    assert not (launch_dir / "output").exists() and not (training_root / "storage" / "checkpoints" /
                                                         "policy_baseline").exists()  # fmt: skip
