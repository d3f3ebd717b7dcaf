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


def _spec(tpf, speedup, rates, *, reason=None):
    """A speculative block as `wmtp_core.eval.timing.compare_with_greedy` records it."""
    return {
        "prompts": 8,
        "tokens_per_forward": tpf,
        "repeats": 5,
        "warmup": 1,
        "speedup_median": speedup,
        "speedup_min": speedup - 0.1,
        "speedup_max": speedup + 0.1,
        "speedup": None if reason else speedup,
        "speedup_not_meaningful": reason,
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
    return _write(tmp_path, evaluations)


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
    assert "| base_model | humaneval | 8 | 2.50 | 1.90x (1.80–2.00x, 5 repeats) | yes | 0.80, 0.60, 0.40 |" in md
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


def _write(tmp_path, evaluations):
    dirs = []
    for m in evaluations:
        d = tmp_path / f"eval_{m['model']}_{m['task']}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(m))
        dirs.append(d)
    return dirs


ONE_TOKEN_PER_FORWARD = (
    "1.00 tokens per forward (every proposal rejected): at one token per pass self-speculative decoding "
    "cannot beat greedy; only 9 ms of timed decoding per decoder (under 1 s): timer and scheduling noise"
)


def test_a_speedup_that_means_nothing_is_reported_as_its_reason(tmp_path, monkeypatch):
    from wmtp_core.eval import report

    rejected = _spec(1.0, 1.79, [0.0, 0.0, 0.0], reason=ONE_TOKEN_PER_FORWARD)
    good = _spec(2.5, 1.9, [0.8, 0.6, 0.4])
    dirs = _write(
        tmp_path,
        [
            _metrics("base_model", "mbpp", {1: 0.2}, n_tasks=500, spec=rejected),
            _metrics("base_model", "humaneval", {1: 0.1}, spec=good),
        ],
    )
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)  # keep the figure to look at what was drawn
    out = tmp_path / "report"
    out.mkdir()
    write_report(dirs, out)

    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| base_model | mbpp | 8 |"))
    assert f"| not meaningful: {ONE_TOKEN_PER_FORWARD} |" in row
    assert "1.79" not in md  # the measured ratio is no result, so it is not printed
    assert "| base_model | humaneval | 8 | 2.50 | 1.90x (1.80–2.00x, 5 repeats) |" in md

    summary = json.loads((out / "report.json").read_text())
    assert summary["speculative"]["base_model"]["mbpp"]["speedup"] is None
    assert summary["speculative"]["base_model"]["mbpp"]["speedup_not_meaningful"] == ONE_TOKEN_PER_FORWARD
    metrics = json.loads((out / "metrics.json").read_text())
    assert "speculative_speedup" not in metrics["base_model"]["mbpp"]
    assert metrics["base_model"]["mbpp"]["tokens_per_forward"] == 1.0
    assert metrics["base_model"]["humaneval"]["speculative_speedup"] == 1.9

    (spec_fig,) = [f for f in figures if f.axes[0].get_title() == "self-speculative decoding"]
    left = spec_fig.axes[0]
    assert [t.get_text() for t in left.texts] == ["speed-up\nnot meaningful"]
    points = [line for line in left.lines if line.get_marker() == "o"]
    assert [list(p.get_ydata()) for p in points] == [[1.9]]  # only the meaningful speed-up is drawn


def test_an_evaluation_timed_the_old_way_gets_no_speedup(tmp_path):
    """metrics.json written before repeated timing: one cold-vs-warm ratio, no spread, no recorded judgement."""
    old = {
        "prompts": 2,
        "tokens_per_forward": 1.0,
        "speedup": 1.79,
        "identical_to_greedy": True,
        "acceptance_rate_per_head": [0.0, 0.0, 0.0],
    }
    dirs = _write(tmp_path, [_metrics("base_model", "mbpp", {1: 0.0}, n_tasks=500, spec=old)])
    out = tmp_path / "report"
    out.mkdir()
    write_report(dirs, out)
    md = (out / "report.md").read_text()
    assert "| not meaningful: timed once, cold against warm, with no repeats or spread" in md
    assert "1.79x" not in md
    assert "speculative_speedup" not in json.loads((out / "metrics.json").read_text())["base_model"]["mbpp"]
