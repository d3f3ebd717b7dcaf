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
        in_modules |= {
            k.to_user_string()
            for v in vars(module).values()
            if isinstance(v, dg.AssetsDefinition)
            for k in v.keys
        }
    assert in_modules == keys
    assert set(defs.resources) >= {"storage", "params", "mlflow", "launcher"}
    assert (
        defs.resources["storage"].asset_dir("models", "base_model") == tmp_path / "storage/models/base_model"
    )
    assert defs.resources["mlflow"].tracking_uri == f"sqlite:///{tmp_path / 'storage/mlflow/mlflow.db'}"
    assert defs.resolve_job_def(MAIN_JOB) is not None


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


def test_materialize_rejects_an_unknown_asset(tmp_path, repo_root):
    (tmp_path / "params.yaml").write_text((repo_root / "params.yaml").read_text())
    out = _wmtp("materialize", "no_such_asset", cwd=tmp_path)
    assert out.returncode != 0 and "unknown asset(s) ['no_such_asset']" in out.stderr
