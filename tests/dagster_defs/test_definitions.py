"""The code location: every module of the `assets` package, resources, DAGSTER_HOME, and the `wmtp` CLI."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

import assets
from dagster_defs.definitions import MAIN_JOB, build_definitions
from dagster_defs.resources import dagster_home


def test_definitions_hold_every_asset_module_and_the_resources(tmp_path):
    defs = build_definitions(str(tmp_path / "storage"), str(tmp_path / "params.yaml"))
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"codecontests_raw", "tokenizer", "base_model", "reference_model"} <= keys
    # Every asset defined in any module of the package is in the graph, with no list to maintain.
    in_modules = set()
    for info in pkgutil.iter_modules(assets.__path__, "assets."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            # Factories (one asset per model and task) leave lists of definitions in the module.
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, dg.AssetsDefinition):
                    in_modules |= {k.to_user_string() for k in item.keys}
    assert in_modules == keys
    assert set(defs.resources) >= {"storage", "params", "mlflow", "launcher"}
    assert (
        defs.resources["storage"].asset_dir("models", "base_model") == tmp_path / "storage/models/base_model"
    )
    assert defs.resources["mlflow"].tracking_uri == f"sqlite:///{tmp_path / 'storage/mlflow/mlflow.db'}"
    # The main job (`wmtp demo`) runs every asset and every check.
    main = defs.resolve_job_def(MAIN_JOB)
    assert {k.to_user_string() for k in main.asset_layer.executable_asset_keys} == keys
    checks = {k.to_user_string() for k in defs.resolve_asset_graph().asset_check_keys}
    assert {k.to_user_string() for k in main.asset_layer.asset_graph.asset_check_keys} == checks
    assert len(checks) >= 8


def test_dagster_home_is_created_with_telemetry_off(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = dagster_home(tmp_path / "storage")
    assert home == tmp_path / "storage" / "dagster_home"
    assert yaml.safe_load((home / "dagster.yaml").read_text()) == {"telemetry": {"enabled": False}}
    instance = dg.DagsterInstance.from_config(str(home))
    assert not instance.telemetry_enabled


def _wmtp(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("wmtp")
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_wmtp_help_lists_the_pipeline_and_library_commands():
    from click.testing import CliRunner

    from dagster_defs.cli import build_cli

    cli = build_cli()
    runner = CliRunner()
    out = runner.invoke(cli, ["--help"])
    assert out.exit_code == 0
    for command in ("materialize", "dvc-yaml", "demo", "ui", "convert-meta", "import-hf"):
        assert command in out.output
    for command in ("materialize", "dvc-yaml", "demo", "ui"):
        assert runner.invoke(cli, [command, "--help"]).exit_code == 0


def test_materialize_with_bad_params_names_the_key_and_writes_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text("tokenizer:\n  vocab_size: 1024\n  vocabulary: 12\n")
    out = _wmtp("materialize", "codecontests_raw", cwd=tmp_path, env={"DAGSTER_HOME": ""})
    assert out.returncode != 0
    assert "tokenizer.vocabulary: unknown key" in out.stderr
    assert not (tmp_path / "storage").exists()


def test_materialize_rejects_an_unknown_asset():
    from click.testing import CliRunner

    from dagster_defs.cli import build_cli

    out = CliRunner().invoke(build_cli(), ["materialize", "no_such_asset"])
    assert out.exit_code != 0 and "unknown asset(s) ['no_such_asset']" in out.output


def test_mlflow_resource_defaults_to_sqlite_under_storage_with_explicit_artifacts(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts must not land in ./mlruns of the working directory
    resource = build_definitions(str(tmp_path / "storage"), str(tmp_path / "params.yaml")).resources["mlflow"]
    experiment_id = resource.experiment_id()
    assert resource.experiment_id() == experiment_id  # found, not created twice
    (tmp_path / "note.txt").write_text("logged")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", resource.tracking_uri)  # the fluent API below reads it
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("pass_at_1", 0.5)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    assert (tmp_path / "storage/mlflow/mlflow.db").is_file()
    artifacts = tmp_path / "storage/mlflow/artifacts" / run.info.run_id / "artifacts" / "note.txt"
    assert artifacts.read_text() == "logged"
    assert not (tmp_path / "mlruns").exists()
    assert mlflow.get_run(run.info.run_id).data.metrics == {"pass_at_1": 0.5}


def test_launcher_resolves_backend_from_device():
    from dagster_defs.resources import LauncherResource

    cpu = LauncherResource(nproc_per_node=2, nnodes=1, device="cpu")
    assert (cpu.resolved_device(), cpu.resolved_backend()) == ("cpu", "gloo")
    assert LauncherResource(device="cuda").resolved_backend() == "nccl"
    assert cpu.rendezvous().args()[:2] == ["--nproc-per-node=2", "--nnodes=1"]
    # The default is 2 CPU processes on gloo, so the embedded default runs the distributed path.
    assert LauncherResource(device="cpu").resolved_nproc_per_node() == 2
    several = LauncherResource(nproc_per_node=4, nnodes=2, device="cpu", rdzv_endpoint="10.0.0.1:29400").rendezvous()
    assert "--rdzv-endpoint=10.0.0.1:29400" in several.args() and "--standalone" not in several.args()
