"""The training assets through Dagster: each launches torchrun (2 CPU processes, gloo) through Pipes.

One module-scoped materialization of all seven assets is shared: their files, metadata and MLflow runs are
checked, then a rank is killed mid-run and the next materialization resumes to the uninterrupted weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from mlflow import MlflowClient

from assets.training import training_assets
from dagster_defs.resources import build_resources
from tests.train.conftest import small_training
from wmtp_core import model as wm
from wmtp_core.storage import read_manifest, verify
from wmtp_core.train.job import ASSET, model_dir
from wmtp_core.train.loop import FAULT_ENV, WEIGHTS_FILE

pytestmark = pytest.mark.slow
VALUE_HEAD = {"critic", "policy_verifiable", "policy_random_matched", "policy_shuffled"}


def materialize(root: Path, selection: list[str] | None = None) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    """Materialize into `root`'s storage; returns the result and the run's log lines (rank 0's, through Pipes)."""
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            training_assets,
            resources=build_resources(root / "storage", root / "params.yaml"),
            selection=selection,
            raise_on_error=False,
            instance=instance,
        )
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, logs


@pytest.fixture(scope="module")
def trained(inputs_root: Path, tmp_path_factory) -> tuple[Path, dg.ExecuteInProcessResult, list[str]]:
    # The default store under storage/, whatever an earlier test in this worker left in the environment.
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("trained") / "project"
    shutil.copytree(inputs_root, root, symlinks=True)
    params = small_training(yaml.safe_load((root / "params.yaml").read_text()), max_steps=4, checkpoint_every=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return (root, *materialize(root))


def test_every_training_asset_materializes_through_torchrun(trained):
    root, result, logs = trained
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    storage = root / "storage"
    for recipe, name in ASSET.items():
        out = storage / "training" / name
        manifest = verify(out)
        assert manifest["params"]["recipe"] == recipe
        policy = wm.load(model_dir(out))
        assert policy.n_future == (1 if recipe == "reference" else 4)
        if name in VALUE_HEAD:
            wm.load_value_head(model_dir(out))
        meta = result.asset_materializations_for_node(name)[0].metadata
        assert meta["steps"].value == 4 and meta["world_size"].value == 2
        assert meta["mlflow_run_id"].value
        # Rank 0 reported these through Pipes; the asset added its storage metadata.
        if recipe != "critic":
            assert {"final/loss/head1", "final/valid/loss/head1", "final/tokens_per_s"} <= set(meta)
        assert "manifest_sha256" in meta and "loss_curves" in meta
        assert not (storage / "checkpoints" / name).exists()  # removed once the model is in place
    critic_meta = result.asset_materializations_for_node("critic")[0].metadata
    assert {"final/value/explained_variance", "final/valid/auc", "final/valid/pair_accuracy"} <= set(critic_meta)
    verifiable = result.asset_materializations_for_node("policy_verifiable")[0].metadata
    for key in ("mean", "std", "min", "max", "clipped_fraction", "entropy"):
        assert f"final/weights/{key}" in verifiable
    rho1 = result.asset_materializations_for_node("policy_rho1")[0].metadata
    assert rho1["final/rho1/selected/head2"].value == pytest.approx(0.6, abs=0.05)
    # The histograms of the weights each weighting produced, over every rank and step.
    for name in ("policy_verifiable", "policy_random_matched", "policy_shuffled"):
        hists = json.loads((storage / "training" / name / WEIGHTS_FILE).read_text())["histograms"]
        assert set(hists) == {"weights"} and sum(hists["weights"]["counts"]) > 0
    hists = json.loads((storage / "training" / "policy_rho1" / WEIGHTS_FILE).read_text())["histograms"]
    for k in range(1, 5):
        selected = sum(hists[f"rho1/head{k}/selected"]["counts"])
        assert selected / (selected + sum(hists[f"rho1/head{k}/rejected"]["counts"])) == pytest.approx(0.6, abs=0.01)
    assert not (storage / "training" / "policy_baseline" / WEIGHTS_FILE).exists()
    # Rank 0's log lines reached the run.
    assert any("policy_baseline: recipe baseline, 40 rows" in line for line in logs)


def test_each_recipe_has_an_mlflow_run_with_params_and_metrics(trained):
    root, result, _ = trained
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'storage' / 'mlflow' / 'mlflow.db'}")
    for recipe, name in ASSET.items():
        run_id = result.asset_materializations_for_node(name)[0].metadata["mlflow_run_id"].value
        run = client.get_run(run_id)
        assert client.get_experiment(run.info.experiment_id).name == f"wmtp/{recipe}"
        assert run.info.status == "FINISHED"
        assert run.data.params["recipe"] == recipe and float(run.data.params["lr"]) > 0
        assert run.data.params["world_size"] == "2"
        assert {"lr", "grad_norm", "tokens_per_s"} <= set(run.data.metrics)
        if recipe != "critic":
            history = client.get_metric_history(run_id, "loss/head1")
            assert [m.step for m in history] == [1, 2, 3, 4]
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"loss_curves.png", "config.json"} <= artifacts


def test_a_killed_rank_fails_the_run_and_the_next_one_resumes_to_the_same_weights(trained, monkeypatch):
    root, _, _ = trained
    # The verifiable policy: its resumed run must also restore the weight histograms of the steps before.
    out = root / "storage" / "training" / "policy_verifiable"
    before = read_manifest(out)
    uninterrupted = wm.load(model_dir(out)).state_dict()
    histograms = json.loads((out / WEIGHTS_FILE).read_text())

    monkeypatch.setenv(FAULT_ENV, "1:3")  # rank 1 SIGKILLs itself at step 3, after the step-2 checkpoint
    failed, _ = materialize(root, ["policy_verifiable"])
    assert not failed.success
    failure = next(e for e in failed.all_events if e.is_step_failure).step_failure_data
    text = failure.user_failure_data.description if failure.user_failure_data else failure.error.message
    assert "rank 1 was killed by signal SIGKILL" in text
    assert read_manifest(out) == before  # the previous version is untouched
    checkpoints = root / "storage" / "checkpoints" / "policy_verifiable"
    assert (checkpoints / "step_00000002" / ".metadata").is_file()

    monkeypatch.delenv(FAULT_ENV)
    resumed, logs = materialize(root, ["policy_verifiable"])
    assert resumed.success
    assert any("resuming from" in line and "step 2 of 4" in line for line in logs)
    after = wm.load(model_dir(out)).state_dict()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-6, msg=key)
    resumed_hist = json.loads((out / WEIGHTS_FILE).read_text())["histograms"]["weights"]
    assert resumed_hist["counts"] == histograms["histograms"]["weights"]["counts"]
    assert not checkpoints.exists()
