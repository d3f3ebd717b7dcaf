"""The experiment report: side-by-side pass@k, speculative acceptance, coverage, plots, DVC metrics."""

from __future__ import annotations

import json

import pytest

from wmtp_core.eval.params import ExperimentReportParams
from wmtp_core.eval.report import ReportError, load_evaluation, write_report


def _metrics(model, task, scores, *, limit=None, n_tasks=164, spec=None):
    return {
        "model": model,
        "task": task,
        "n_tasks": limit or n_tasks,
        "n_tasks_available": n_tasks,
        "limit": limit,
        "n_samples": 10,
        "pass_at_k": {str(k): v for k, v in scores.items()},
        "speculative": spec,
    }


def _spec(tpf, speedup, rates):
    return {
        "prompts": 8,
        "tokens_per_forward": tpf,
        "speedup": speedup,
        "identical_to_greedy": True,
        "acceptance_rate_per_head": rates,
    }


@pytest.fixture
def eval_dirs(tmp_path):
    evaluations = [
        _metrics("base_model", "humaneval", {1: 0.125, 10: 0.3}, spec=_spec(2.5, 1.9, [0.8, 0.6, 0.4])),
        _metrics(
            "base_model", "mbpp", {1: 0.2, 10: 0.45}, n_tasks=500, spec=_spec(2.1, 1.6, [0.7, 0.5, 0.3])
        ),
        _metrics("policy_rho1", "humaneval", {1: 0.15, 10: 0.35}, limit=20),
        _metrics("policy_rho1", "mbpp", {1: 0.25, 10: 0.5}, n_tasks=500),
    ]
    dirs = []
    for m in evaluations:
        d = tmp_path / f"eval_{m['model']}_{m['task']}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(m))
        dirs.append(d)
    return dirs


def test_side_by_side_table_and_coverage(eval_dirs, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    write_report(eval_dirs, out, ExperimentReportParams(title="Weights vs none"))
    md = (out / "report.md").read_text()
    assert md.startswith("# Weights vs none")
    assert "| model | humaneval pass@1 | humaneval pass@10 | mbpp pass@1 | mbpp pass@10 |" in md
    assert "| base_model | 0.125 | 0.300 | 0.200 | 0.450 |" in md
    assert "| policy_rho1 | 0.150 | 0.350 | 0.250 | 0.500 |" in md
    # The explicit limit is stated, both in a banner and per evaluation.
    assert "limit set explicitly" in md
    assert "| policy_rho1 | humaneval | 20 of 164 (limit 20) | 10 |" in md
    assert "| base_model | mbpp | all 500 | 10 |" in md
    assert "| base_model | humaneval | 8 | 2.50 | 1.90x | yes | 0.80, 0.60, 0.40 |" in md
    assert "| policy_rho1 | humaneval | – | – | – | – | not measured |" in md
    assert "![pass_at_k](pass_at_k.png)" in md and "![speculative](speculative.png)" in md


def test_json_outputs_and_plots(eval_dirs, tmp_path):
    summary = write_report(eval_dirs, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(summary))
    assert report["models"] == ["base_model", "policy_rho1"] and report["tasks"] == ["humaneval", "mbpp"]
    assert report["k"] == [1, 10]
    assert report["coverage"]["policy_rho1"]["humaneval"]["limit"] == 20
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["base_model"]["mbpp"] == {
        "pass@1": 0.2,
        "pass@10": 0.45,
        "tokens_per_forward": 2.1,
        "speculative_speedup": 1.6,
    }
    assert metrics["policy_rho1"]["humaneval"] == {"pass@1": 0.15, "pass@10": 0.35}
    for png in ("pass_at_k.png", "speculative.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_duplicate_and_incomplete_evaluations_are_refused(eval_dirs, tmp_path):
    with pytest.raises(ReportError, match="two evaluations of model 'base_model' on task 'mbpp'"):
        write_report([eval_dirs[1], eval_dirs[1]], tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(ReportError, match="missing keys"):
        load_evaluation(broken)
    with pytest.raises(ReportError, match="not found"):
        load_evaluation(tmp_path / "nowhere")
    with pytest.raises(ReportError, match="no evaluations"):
        write_report([], tmp_path)


def test_command_writes_a_verified_report_directory(eval_dirs, tmp_path):
    from click.testing import CliRunner

    from wmtp_core.eval.report import report_command
    from wmtp_core.storage import verify

    out = tmp_path / "experiment_report"
    result = CliRunner().invoke(report_command, [*map(str, eval_dirs), "--out", str(out), "--title", "cli"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# cli")
    manifest = verify(out)
    assert set(manifest["files"]) == {
        "report.md",
        "report.json",
        "metrics.json",
        "pass_at_k.png",
        "speculative.png",
    }
    assert "--out" in CliRunner().invoke(report_command, ["--help"]).output
