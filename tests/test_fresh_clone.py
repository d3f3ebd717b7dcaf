"""The README's main command on a fresh clone, as a user runs it: `make demo` on the embedded default builds every
asset, records it in DVC, and the result can be inspected in the Dagster UI.

The clone reuses the installed environments (`.venv`, `.venv-dvc` linked in, their set-up steps marked done with
`make -o`) and runs its own code (PYTHONPATH), not the checkout's. No `../shared` beside it: the product never
needs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from dagster_defs.definitions import defs
from dagster_defs.dvcgen import stages
from tests.dagster_ui import running_ui, screenshot_asset_graph
from wmtp_core.storage import verify

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STAGES = stages(defs)
SETUP_TARGETS = (".venv/bin/.wmtp-installed", ".venv-dvc/.dvc-installed", ".venv/bin/dvc")


@dataclass
class Clone:
    repo: Path
    env: dict[str, str]
    demo_output: str

    def run(self, *args: str, timeout: float = 600) -> str:
        out = subprocess.run(args, cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out.stdout + out.stderr


@pytest.fixture(scope="module")
def clone(tmp_path_factory, repo_root: Path) -> Clone:
    repo = tmp_path_factory.mktemp("fresh") / "wmtp"
    subprocess.run(["git", "clone", "-q", "--no-local", str(repo_root), str(repo)], check=True)
    # Uncommitted work in the checkout is what is under test: bring it over the committed state.
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo_root,
                            capture_output=True, check=True).stdout.decode()  # fmt: skip
    for rel in filter(None, listed.split("\0")):
        src = repo_root / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    for venv in (".venv", ".venv-dvc"):
        (repo / venv).symlink_to(repo_root / venv)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "WMTP_ROOT", "WMTP_STORAGE", "WMTP_PARAMS", "MLFLOW_TRACKING_URI")}  # fmt: skip
    env.update(PYTHONPATH=str(repo), DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(repo.parent / "dvc-site"))
    make = ["make", *(f"--old-file={t}" for t in SETUP_TARGETS), "demo"]
    done = subprocess.run(make, cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"make demo exited {done.returncode}:\n{output[-6000:]}"
    return Clone(repo, env, output)


def test_make_demo_builds_every_asset_and_says_where_to_look(clone: Clone):
    storage = clone.repo / "storage"
    for name, stage in STAGES.items():
        manifest = verify(clone.repo / stage["outs"][0])
        assert manifest["files"], name
    with dg.DagsterInstance.from_config(str(storage / "dagster_home")) as instance:
        for name in STAGES:
            assert instance.get_latest_materialization_event(dg.AssetKey(name)) is not None, name
    # progress, one line per asset, then where the report is and how to open the UI
    assert len(re.findall(r"^\[\d+/\d+\] \w+ materialized", clone.demo_output, re.M)) == len(STAGES)
    assert f"report: {storage / 'evaluation' / 'experiment_report' / 'report.md'}" in clone.demo_output
    assert "wmtp ui" in clone.demo_output


def test_the_report_compares_every_policy_with_the_base_model(clone: Clone):
    out = clone.repo / "storage" / "evaluation" / "experiment_report"
    report = json.loads((out / "report.json").read_text())
    models = ["base_model", "policy_baseline", "policy_verifiable", "policy_rho1", "policy_random_matched",
              "policy_shuffled"]  # fmt: skip
    assert report["models"] == models
    assert report["tasks"] == ["humaneval", "mbpp"]
    text = (out / "report.md").read_text()
    for model in models:
        assert f"| {model} |" in text
    for png in report["plots"]:
        assert (out / png).stat().st_size > 10_000, png
    assert {"pass_at_k.png", "training_curves.png", "heldout_loss.png", "token_weights.png"} <= set(report["plots"])
    metrics = json.loads((out / "metrics.json").read_text())
    for model in models:
        for task in ("humaneval", "mbpp"):
            assert {"pass@1", "pass@2", "pass@4"} <= set(metrics[model][task])
    # every evaluated completion was judged in the sandbox
    samples = pl.read_parquet(clone.repo / "storage/evaluation/eval_policy_rho1_mbpp/samples.parquet")
    assert samples.height == 8 * 4 and samples["status"].is_not_null().all()


def test_dvc_records_the_demo_so_repro_has_nothing_to_do(clone: Clone):
    lock = yaml.safe_load((clone.repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert json.loads(clone.run("dvc", "status", "--json")) == {}
    output = clone.run("dvc", "repro")
    assert "Running stage" not in output and "Data and pipelines are up to date" in output


def test_dvc_metrics_and_plots_show_pass_at_k_and_loss_curves(clone: Clone):
    metrics = json.loads(clone.run("dvc", "metrics", "show", "--json"))
    # {workspace: {data: {file: {data: {...}}}}}
    files = next(iter(metrics.values()))["data"]
    report = files["storage/evaluation/experiment_report/metrics.json"]["data"]
    assert report["policy_rho1"]["mbpp"]["pass@1"] >= 0.0
    assert report["base_model"]["humaneval"]["pass@4"] >= 0.0
    for stage in STAGES:
        if stage.startswith("eval_"):
            assert "pass_at_k" in files[f"storage/evaluation/{stage}/metrics.json"]["data"]
    out = clone.repo.parent / "dvc_plots"
    clone.run("dvc", "plots", "show", "--out", str(out))
    html = (out / "index.html").read_text()
    for png in ("loss_curves.png", "pass_at_k.png", "training_curves.png", "token_weights.png"):
        assert png in html
    assert len(list(out.rglob("*.png"))) >= 11  # seven training runs' curves and the report's plots


def test_the_ui_shows_every_asset_of_the_graph(clone: Clone):
    names = sorted(STAGES)
    shot = clone.repo / "storage" / "evaluation" / "asset_graph.png"  # beside the report's directory
    with running_ui(BIN / "wmtp", clone.repo, clone.env) as ui:
        served = {n["assetKey"]["path"][-1] for n in ui.graphql("{ assetNodes { assetKey { path } } }")["assetNodes"]}
        assert served == set(names)
        rendered = screenshot_asset_graph(ui, names, shot)
    assert not ui.leftover, f"dagster dev left processes {ui.leftover}"
    assert rendered == set(names), f"not rendered: {sorted(set(names) - rendered)}"
    assert shot.stat().st_size > 50_000
    # kept for a person to look at (CI's artifacts, or the next session)
    keep = Path(os.environ.get("WMTP_SCREENSHOT_DIR", clone.repo.parent))
    shutil.copy2(shot, keep / "asset_graph.png")
