"""Judging real completions in the sandbox: reference solutions pass, wrong ones do not, results are stored."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from wmtp_core.eval.cli import evaluate_completions
from wmtp_core.eval.judge import judge_completions, judge_program, judge_references, write_judgement
from wmtp_core.eval.tasks import TaskError, humaneval_tasks, mbpp_tasks
from wmtp_core.storage import verify

WORKERS = 2


@pytest.mark.slow
def test_all_164_humaneval_canonical_solutions_pass() -> None:
    judgement = judge_references(humaneval_tasks(), workers=WORKERS, progress=False)
    failed = judgement.samples.filter(~pl.col("passed")).select("task_id", "status", "stderr_tail").rows()
    assert failed == []
    assert judgement.summary["pass_at_k"] == {"1": 1.0} and judgement.summary["isolation"] == "namespaces"


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


def test_outcomes_of_right_wrong_and_broken_completions() -> None:
    task = humaneval_tasks()["HumanEval/2"]  # truncate_number(number) -> fractional part
    assert judge_program(task.program(task.reference)).status == "passed"
    wrong = judge_program(task.program("    return number\n"))
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr_tail
    assert judge_program(task.program("    return undefined_name\n")).status == "error"
    assert judge_program(task.program("    return (\n")).status == "error"
    assert judge_program(task.program("    while True:\n        pass\n"), timeout_s=1).status == "timeout"
    early = judge_program(task.program("    return 0.5\nimport sys\nsys.exit(0)\n"))
    assert early.status == "failed"


def test_judge_completions_scores_pass_at_k_and_writes_parquet(tmp_path: Path) -> None:
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
    assert judgement.summary["limit"] == 3 and judgement.summary["n_tasks_total"] == 164
    out = write_judgement(judgement, tmp_path / "eval")
    verify(out)
    samples = pl.read_parquet(out / "samples.parquet")
    assert samples.columns == ["task_id", "sample", "completion", "status", "passed", "stderr_tail", "wall_s"]
    assert samples.height == 9 and samples["sample"].to_list() == [0, 1, 2] * 3
    assert set(samples["status"]) <= {"passed", "failed", "error"}
    assert pl.read_parquet(out / "pass_at_k.parquet")["k"].to_list() == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["pass_at_k"]["2"] == pytest.approx(judgement.pass_at_k[2])


def test_every_task_needs_completions_unless_limited() -> None:
    tasks = humaneval_tasks()
    with pytest.raises(TaskError, match="no completions for 163 of 164"):
        judge_completions(tasks, [{"task_id": "HumanEval/0", "completion": "    pass\n"}], progress=False)
    with pytest.raises(TaskError, match="'HumanEval/999' is not a humaneval/test task"):
        judge_completions(tasks, [{"task_id": "HumanEval/999", "completion": ""}], progress=False)


def test_evaluate_completions_command(tmp_path: Path, mbpp_jsonl: Path) -> None:
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
    summary = json.loads((out / "summary.json").read_text())
    printed = result.output[result.output.rindex('{"task_set"'):]
    assert json.loads(printed) == summary
    assert summary["pass_at_k"] == {"1": 0.5, "2": 1.0}
    assert summary["limit"] == 2 and summary["outcomes"]["passed"] == 2
    verify(out)
    assert pl.read_parquet(out / "samples.parquet").height == 4
    help_text = CliRunner().invoke(evaluate_completions, ["--help"]).output
    assert "--limit" in help_text and "--timeout" in help_text
