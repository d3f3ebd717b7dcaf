"""The trainer in one process (no torchrun) on the demo data and micro models, and the checks made before a job
starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from wmtp_core import model as wm
from wmtp_core.config import load_params
from wmtp_core.train.job import TrainJobError, plan_job
from wmtp_core.train.loop import HISTORY_FILE, train


def params_with(root: Path, edit) -> Path:
    params = yaml.safe_load((root / "params.yaml").read_text())
    edit(params)
    path = root / "edited.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.slow
def test_baseline_overfits_eight_rows(inputs_root: Path, tmp_path: Path):
    def edit(p):
        p["sampling"]["stage2"]["n_samples"] = 8
        p["train"]["defaults"].update(max_steps=40, batch_size=8, lr=3e-3, warmup_ratio=0.0, min_lr_ratio=1.0,
                                      eval_every=40, checkpoint_every=1000)  # fmt: skip

    params = load_params(_copy_params(inputs_root, tmp_path, edit))
    job = plan_job("baseline", params, inputs_root / "storage", out_dir=tmp_path / "out",
                   checkpoint_dir=tmp_path / "ckpt")  # fmt: skip
    summary = train(job)
    history = [json.loads(line) for line in (tmp_path / "out" / HISTORY_FILE).read_text().splitlines()]
    losses = [row["loss/total"] for row in history]
    assert len(losses) == 40 and summary["steps"] == 40 and summary["rows"] == 8
    assert min(losses) <= 0.5 * losses[0], losses
    model = wm.load(tmp_path / "out" / "model")  # the written policy loads like any model directory
    assert model.n_future == 4
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").glob("step_*"))


def _copy_params(inputs_root: Path, tmp_path: Path, edit) -> Path:
    shutil.copy(inputs_root / "params.yaml", tmp_path / "params.yaml")
    return params_with(tmp_path, edit)


def test_weighted_recipes_need_the_critic(inputs_root: Path, tmp_path: Path):
    params = load_params(inputs_root / "params.yaml")
    for recipe in ("verifiable", "random_matched", "shuffled"):
        with pytest.raises(TrainJobError, match="materialize `critic` first"):
            plan_job(recipe, params, inputs_root / "storage", out_dir=tmp_path / "out")
    with pytest.raises(TrainJobError, match="materialize `reference_tuned` first"):
        plan_job("rho1", params, inputs_root / "storage", out_dir=tmp_path / "out")


def test_a_reference_with_another_tokenizer_stops_rho1(training_root: Path, tmp_path: Path):
    storage = training_root / "storage"
    params = load_params(training_root / "params.yaml")
    tuned = storage / "training" / "reference_tuned"
    wm.save(wm.make_micro("reference", 512), tuned, name="reference_tuned", source="test", tokenizer_sha256="0" * 64)
    with pytest.raises(TrainJobError, match="vocab_size 512"):
        plan_job("rho1", params, storage, out_dir=tmp_path / "out")
    vocab = wm.read_args(storage / "models" / "reference_model").vocab_size
    wm.save(wm.make_micro("reference", vocab), tuned, name="reference_tuned", source="test",
            tokenizer_sha256="0" * 64)  # fmt: skip
    with pytest.raises(TrainJobError, match="made for tokenizer SHA256 0000"):
        plan_job("rho1", params, storage, out_dir=tmp_path / "out")


def test_an_infeasible_sample_stops_before_any_process_starts(inputs_root: Path, tmp_path: Path):
    path = _copy_params(inputs_root, tmp_path, lambda p: p["sampling"]["stage2"].update(n_samples=5000))
    with pytest.raises(TrainJobError, match=r"sampling.stage2 for train.baseline: .*n_samples"):
        plan_job("baseline", load_params(path), inputs_root / "storage", out_dir=tmp_path / "out")
