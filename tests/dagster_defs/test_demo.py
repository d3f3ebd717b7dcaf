"""What `wmtp demo` adds around the Dagster run: DVC's record of what it built, and the progress lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dagster as dg
import yaml

from dagster_defs.demo import dvc_executable, expect, progress, record_in_dvc


def _dvc_project(root: Path) -> None:
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([dvc_executable(), "init", "-q"], cwd=root, check=True)
    (root / "params.yaml").write_text("tokenizer:\n  vocab_size: 8\n")
    (root / "code.py").write_text("print('made')\n")
    stage = {"cmd": "python code.py", "deps": ["code.py"], "params": ["tokenizer"], "outs": ["storage/sources/out"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"out": stage}}))
    out = root / "storage" / "sources" / "out"
    out.mkdir(parents=True)
    (out / "data.txt").write_text("built outside DVC\n")


def test_record_in_dvc_writes_the_lock_so_status_is_clean(tmp_path):
    root = tmp_path / "project"
    _dvc_project(root)
    said = record_in_dvc(root, root / "storage")
    assert "dvc.lock" in said
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"out"}
    status = subprocess.run([dvc_executable(), "status", "--json"], cwd=root, capture_output=True, text=True)
    assert json.loads(status.stdout) == {}
    assert (root / "storage" / "sources" / "out" / "data.txt").read_text() == "built outside DVC\n"  # untouched


def test_record_in_dvc_says_why_it_records_nothing(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "not a DVC project" in record_in_dvc(plain, plain / "storage")
    root = tmp_path / "project"
    _dvc_project(root)
    assert "is not the DVC project's" in record_in_dvc(root, tmp_path / "elsewhere")
    assert not (root / "dvc.lock").exists()


def test_progress_counts_the_announced_assets_only(capsys):
    @dg.asset
    def first() -> None: ...

    @dg.asset(deps=[first])
    def second() -> None: ...

    @dg.asset_check(asset=second)
    def second_ok() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    job = dg.define_asset_job("j", hooks={progress})
    defs = dg.Definitions(assets=[first, second], asset_checks=[second_ok], jobs=[job])
    expect(["first", "second"])
    assert defs.resolve_job_def("j").execute_in_process().success
    lines = [line for line in capsys.readouterr().err.splitlines() if "materialized" in line]
    assert [line.split(" (")[0] for line in lines] == ["[1/2] first materialized", "[2/2] second materialized"]
