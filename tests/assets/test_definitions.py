"""The code location: every module of the `assets` package, resources, DAGSTER_HOME, and the `wmtp` CLI."""

from __future__ import annotations

import os
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
    in_package = {
        a.key.to_user_string()
        for a in dg.load_assets_from_package_module(assets)
        if isinstance(a, dg.AssetsDefinition)
    }
    assert in_package <= keys
    assert set(defs.resources) >= {"storage", "params", "mlflow", "launcher"}
    assert defs.resources["storage"].asset_dir("models", "base_model") == tmp_path / "storage/models/base_model"
    assert defs.resources["mlflow"].tracking_uri == f"sqlite:///{tmp_path / 'storage/mlflow/mlflow.db'}"
    assert defs.resolve_job_def(MAIN_JOB) is not None


def test_new_module_in_assets_joins_the_graph(tmp_path, monkeypatch):
    # A throwaway module inside the package directory must be picked up by the package loader.
    module = Path(assets.__file__).parent / "zz_probe_b.py"
    module.write_text("import dagster as dg\n\n@dg.asset(group_name='probe')\ndef probe_b_asset():\n    return 1\n")
    try:
        code = (
            "from dagster_defs.definitions import build_definitions;"
            "d = build_definitions('/tmp/unused', '/tmp/unused.yaml');"
            "print(sorted(k.to_user_string() for k in d.resolve_asset_graph().get_all_asset_keys()))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert "probe_b_asset" in out
    finally:
        module.unlink()


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


def test_wmtp_help_lists_the_pipeline_and_library_commands(repo_root):
    out = _wmtp("--help", cwd=repo_root)
    assert out.returncode == 0
    for command in ("materialize", "dvc-yaml", "demo", "ui", "convert-meta", "import-hf"):
        assert command in out.stdout
    for command in ("materialize", "dvc-yaml", "demo", "ui"):
        assert _wmtp(command, "--help", cwd=repo_root).returncode == 0


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
