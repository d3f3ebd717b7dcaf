"""dvc.yaml is generated from the Dagster asset graph: the committed file is current and DVC sees the same edges."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from dagster_defs.definitions import defs
from dagster_defs.dvcgen import edges, render, stages
from wmtp_core.config import load_params

DVC = str(Path(sys.executable).with_name("dvc"))


def test_committed_dvc_yaml_is_the_generated_one(repo_root):
    assert (repo_root / "dvc.yaml").read_text() == render(defs), "dvc.yaml is stale: run `wmtp dvc-yaml`"


def test_every_stage_materializes_one_asset_and_names_existing_files(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    load_params(repo_root / "params.yaml")
    for name, stage in stages(defs).items():
        assert stage["cmd"] == f"wmtp materialize {name}"
        (out,) = stage["outs"]
        assert out.startswith("storage/") and out.endswith(f"/{name}")
        for dep in stage["deps"]:
            assert dep.startswith("storage/") or (repo_root / dep).exists(), f"{name}: dep {dep} missing"
        for key in stage.get("params", []):
            value = params
            for part in key.split("."):  # dotted keys name a block inside a section (train.rho1)
                assert isinstance(value, dict) and part in value, (
                    f"{name}: params.yaml has no key {key!r} (DVC needs it written out)"
                )
                value = value[part]


def test_dvc_dag_has_the_dagster_edges(repo_root, tmp_path):
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"), "DVC_NO_ANALYTICS": "1"}
    dot = subprocess.run(
        [DVC, "dag", "--dot"], cwd=repo_root, env=env, capture_output=True, text=True, check=True
    )
    dvc_edges = set(re.findall(r'"([^"]+)" -> "([^"]+)"', dot.stdout))
    assert dvc_edges == edges(defs)
    assert edges(defs), "the graph has edges"


def test_check_flag_fails_on_a_stale_file(tmp_path):
    from click.testing import CliRunner

    from dagster_defs.cli import build_cli

    cli, runner = build_cli(), CliRunner()
    stale = tmp_path / "dvc.yaml"
    stale.write_text(render(defs).replace("wmtp materialize tokenizer", "true"))
    out = runner.invoke(cli, ["dvc-yaml", "--check", "--file", str(stale)])
    assert out.exit_code != 0 and "dvc.yaml is stale" in out.output
    fresh = tmp_path / "fresh.yaml"
    assert runner.invoke(cli, ["dvc-yaml", "--file", str(fresh)]).exit_code == 0
    assert fresh.read_text() == render(defs)
    assert runner.invoke(cli, ["dvc-yaml", "--check", "--file", str(fresh)]).exit_code == 0


def test_training_stages_depend_on_the_code_torchrun_runs():
    # The worker runs in torchrun's processes, reached only through the launcher: its code (and the weighting,
    # the loss, the loop) must still re-run every training stage, and nothing else.
    trainer_code = {"wmtp_core/train/worker.py", "wmtp_core/train/loop.py", "wmtp_core/train/loss.py",
                    "wmtp_core/weighting.py"}  # fmt: skip
    for name, stage in stages(defs).items():
        if stage["outs"][0].startswith("storage/training/"):
            assert trainer_code <= set(stage["deps"]), name
            assert {"train.defaults", f"train.{name.removeprefix('policy_')}"} <= set(stage["params"]) or (
                name in ("critic", "reference_tuned")
            )
        else:
            assert not trainer_code & set(stage["deps"]), name
