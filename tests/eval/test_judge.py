"""Judging real completions in the sandbox: reference solutions pass, wrong ones do not, results are stored."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from wmtp_core.eval.cli import evaluate_completions
from wmtp_core.eval.judge import judge_completions, judge_references
from wmtp_core.eval.report import report_command
from wmtp_core.eval.results import JUDGING_KEYS, METRICS_KEYS, TABLES
from wmtp_core.storage import verify
from wmtp_core.tasks.humaneval import humaneval_tasks
from wmtp_core.tasks.mbpp import mbpp_tasks
from wmtp_core.tasks.taskset import TaskError

WORKERS = 2


@pytest.mark.slow
def test_all_164_humaneval_canonical_solutions_pass() -> None:
    judgement = judge_references(humaneval_tasks(), workers=WORKERS, progress=False)
    failed = judgement.samples.filter(~pl.col("passed")).select("task_id", "status", "stderr_tail").rows()
    assert failed == []
    assert judgement.metrics["pass_at_k"] == {"1": 1.0} and judgement.metrics["isolation"] == "namespaces"


@pytest.mark.slow
def test_mbpp_reference_solutions_pass(mbpp_jsonl: Path) -> None:
    passed, failures = 0, []
    for split in ("prompt", "test", "validation", "train"):
        # Task 123 needs over 20 s; a short timeout keeps the test quick and it is the one allowed miss.
        judgement = judge_references(mbpp_tasks(mbpp_jsonl, split=split), workers=WORKERS, timeout_s=5, progress=False)
        passed += int(judgement.samples["passed"].sum())
        failures += judgement.samples.filter(~pl.col("passed")).select("task_id", "status").rows()
    assert passed >= 973, failures
    assert set(failures) <= {("123", "timeout")}


def test_judge_completions_scores_pass_at_k() -> None:
    tasks = humaneval_tasks(limit=3)
    completions = []
    for i, task in enumerate(tasks):
        # Task i gets i correct samples out of 3.
        completions += [{"task_id": task.task_id, "completion": task.reference}] * i
        completions += [{"task_id": task.task_id, "completion": "    return None\n"}] * (3 - i)
    judgement = judge_completions(tasks, completions, ks=[1, 2], workers=WORKERS, progress=False)
    assert judgement.per_task["c"].to_list() == [0, 1, 2]
    assert judgement.pass_at_k[1] == pytest.approx((0 + 1 / 3 + 2 / 3) / 3)
    assert judgement.pass_at_k[2] == pytest.approx((0 + 2 / 3 + 1) / 3)
    assert sorted(judgement.metrics) == sorted(JUDGING_KEYS)
    assert judgement.metrics["limit"] == 3 and judgement.metrics["n_tasks_available"] == 164
    assert (judgement.metrics["n_samples"], judgement.metrics["n_completions"]) == (3, 9)
    assert judgement.metrics["outcomes"]["passed"] == 3
    samples = judgement.samples
    assert samples.columns == ["task_id", "sample", "completion", "status", "passed", "stderr_tail", "wall_s"]
    assert samples.height == 9 and samples["sample"].to_list() == [0, 1, 2] * 3
    assert set(samples["status"]) <= {"passed", "failed", "error"}
    assert judgement.curve["k"].to_list() == [1, 2, 3]


def test_every_task_needs_completions_unless_limited() -> None:
    tasks = humaneval_tasks()
    with pytest.raises(TaskError, match="no completions for 163 of 164"):
        judge_completions(tasks, [{"task_id": "HumanEval/0", "completion": "    pass\n"}], progress=False)
    with pytest.raises(TaskError, match="'HumanEval/999' is not a humaneval/test task"):
        judge_completions(tasks, [{"task_id": "HumanEval/999", "completion": ""}], progress=False)


def test_evaluate_completions_writes_an_evaluation_the_report_reads(tmp_path: Path, mbpp_jsonl: Path) -> None:
    tasks = mbpp_tasks(mbpp_jsonl, limit=2)
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": int(t.task_id), "completion": t.reference} for t in tasks]
    rows += [{"task_id": f"MBPP/{t.task_id}", "completion": "def nothing():\n    pass\n"} for t in tasks]
    rows.append({"task_id": 500, "completion": "ignored: beyond the limit"})
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        evaluate_completions,
        ["mbpp", str(samples), str(out), "--tasks", str(mbpp_jsonl), "--limit", "2", "--k", "1,2", "--workers", "2",
         "--timeout", "5"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    printed = result.output[result.output.rindex('{"model"'):]
    assert json.loads(printed) == metrics
    # The format `wmtp evaluate` writes: the same files and metrics keys, the sampling ones null.
    assert sorted(metrics) == sorted(METRICS_KEYS)
    assert metrics["model"] == "samples" and metrics["completions"] == str(samples)
    assert metrics["pass_at_k"] == {"1": 0.5, "2": 1.0} and metrics["n_samples"] == 2
    assert metrics["limit"] == 2 and metrics["n_tasks_available"] == 500 and metrics["outcomes"]["passed"] == 2
    assert metrics["temperature"] is None and metrics["speculative"] is None
    assert sorted(verify(out)["files"]) == sorted([f"{name}.parquet" for name in TABLES] + ["metrics.json"])
    stored = pl.read_parquet(out / "samples.parquet")
    assert stored.height == 4 and stored.columns[-2:] == ["finish_reason", "n_tokens"]
    assert pl.read_parquet(out / "speculative.parquet").height == 0
    report = CliRunner().invoke(report_command, [str(out), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "| samples | mbpp | 2 of 500 (limit 2) | 2 |" in report.output
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["samples"]["mbpp"] == {
        "pass@1": 0.5, "pass@2": 1.0}  # fmt: skip
    help_text = CliRunner().invoke(evaluate_completions, ["--help"]).output
    assert "--limit" in help_text and "--timeout" in help_text
