"""The `wmtp` entry point: every command listed, input errors reported in one line without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dagster_defs.cli import build_cli


@pytest.fixture(scope="module")
def wmtp():
    return build_cli()


def test_every_command_has_help(wmtp) -> None:
    runner = CliRunner()
    assert set(wmtp.commands) >= {"convert-meta", "import-hf", "export-hf", "make-micro", "prepare-codecontests",
                                  "check-labels", "evaluate-completions", "evaluate", "experiment-report",
                                  "materialize", "dvc-yaml", "status", "demo", "ui", "train-tokenizer",
                                  "check-processed"}  # fmt: skip
    for name in wmtp.commands:
        result = runner.invoke(wmtp, [name, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.output, name


def test_input_errors_name_the_file_without_a_traceback(wmtp, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WMTP_DEBUG", raising=False)
    runner = CliRunner()
    checkpoint = tmp_path / "meta"
    checkpoint.mkdir()
    (checkpoint / "params.json").write_text('{"dim": 8}')
    (checkpoint / "consolidated.pth").write_bytes(b"not a checkpoint")
    result = runner.invoke(wmtp, ["convert-meta", str(checkpoint), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"Error: {checkpoint / 'consolidated.pth'}: unreadable PyTorch checkpoint" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()

    completions = tmp_path / "samples.jsonl"
    completions.write_text('{"task_id": "HumanEval/0", "completion": "    return True\\n"}\n{broken\n')
    result = runner.invoke(wmtp, ["evaluate-completions", "humaneval", str(completions), str(tmp_path / "judged")])
    assert result.exit_code == 1 and f"Error: {completions}:2: not valid JSON" in result.output

    # WMTP_DEBUG=1 lets the exception through, for a traceback.
    monkeypatch.setenv("WMTP_DEBUG", "1")
    result = runner.invoke(wmtp, ["convert-meta", str(checkpoint), str(tmp_path / "out")])
    assert type(result.exception).__name__ == "CheckpointError"


def test_version_prints_the_package_version(wmtp) -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(wmtp, ["--version"])
    assert result.exit_code == 0 and result.output == f"wmtp {version('wmtp')}\n"


def test_lineage_is_a_command_with_help(wmtp) -> None:
    result = CliRunner().invoke(wmtp, ["lineage", "--help"])
    assert result.exit_code == 0 and "lineage [OPTIONS] ASSET" in result.output
    assert "--json" in result.output
