"""Judging programs that test themselves (HumanEval/MBPP completions plus their assertions) in the sandbox."""

from __future__ import annotations

import pytest

from wmtp_core.sandbox.function_tests import judge_program
from wmtp_core.tasks.humaneval import humaneval_tasks


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


@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"])
def test_exit_before_tests_fails(body: str) -> None:
    verdict = judge_program(f"{body}\nassert False, 'the test that never ran'\n", timeout_s=5)
    assert verdict.status == "failed"
    assert "before all tests ran" in verdict.stderr_tail


def test_only_the_fresh_end_of_tests_marker_counts() -> None:
    # Printing after the tests is fine (the marker is printed after the program); a guessed marker is not.
    assert judge_program("assert 1 + 1 == 2\nprint('done')\n", timeout_s=5).passed
    verdict = judge_program("print('WMTP-ALL-TESTS-RAN-0')\nimport os\nos._exit(0)\n", timeout_s=5)
    assert verdict.status == "failed"
