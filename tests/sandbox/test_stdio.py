"""Judging stdin/stdout programs (CodeContests solutions) on tests, in the sandbox."""

from __future__ import annotations

import secrets

import pytest

from tests.sandbox.conftest import processes_with
from wmtp_core.sandbox.stdio import IOTest, judge_stdio, outputs_match

DOUBLE = "print(2 * int(input()))\n"
TESTS = [IOTest("public_tests[0]", "2\n", "4\n"), IOTest("private_tests[0]", "5\n", "10\n")]




@pytest.mark.parametrize(
    ("actual", "expected", "same"),
    [
        ("1 2 3\n", "1 2 3", True),
        ("1 2 3   \n\n\n", "1 2 3\n", True),
        ("1\r\n2\r\n", "1\n2\n", True),
        ("1  2\t3", "1 2 3", True),
        ("YES", "yes", False),
        ("1 2", "1 2 3", False),
        ("12", "1 2", False),
        ("", "\n", True),
    ],
)
def test_outputs_compare_as_whitespace_separated_tokens(actual: str, expected: str, same: bool) -> None:
    assert outputs_match(actual, expected) is same


def test_correct_program_passes_every_test() -> None:
    verdict = judge_stdio(DOUBLE, TESTS, timeout_s=10)
    assert verdict.passed
    assert [o.test for o in verdict.outcomes] == ["public_tests[0]", "private_tests[0]"]
    assert verdict.first_failure is None


def test_trailing_whitespace_in_program_output_is_accepted() -> None:
    source = "x = int(input())\nprint(2 * x, end='   \\n\\n\\n')\n"
    assert judge_stdio(source, TESTS, timeout_s=10).passed


def test_wrong_answer_names_the_failing_test() -> None:
    source = "x = int(input())\nprint(4 if x == 2 else x * 3)\n"
    verdict = judge_stdio(source, TESTS, timeout_s=10)
    assert not verdict.passed
    assert [(o.test, o.status) for o in verdict.outcomes] == [
        ("public_tests[0]", "passed"),
        ("private_tests[0]", "wrong_answer"),
    ]
    assert verdict.first_failure.test == "private_tests[0]"


def test_runtime_error_keeps_the_stderr_tail() -> None:
    verdict = judge_stdio("x = int(input())\nprint(x // 0)\n", TESTS[:1], timeout_s=10)
    failure = verdict.first_failure
    assert failure.status == "runtime_error"
    assert "ZeroDivisionError" in failure.stderr_tail


def test_timeout_stops_at_the_first_failure_and_kills_every_process() -> None:
    token = f"1000.{secrets.randbelow(10**9)}"  # a sleep duration nobody else uses marks the program's child
    source = f"import subprocess\nsubprocess.Popen(['sleep', '{token}'], start_new_session=True)\nwhile True:\n    pass\n"
    verdict = judge_stdio(source, TESTS, timeout_s=1.0, stop_on_failure=True)
    assert [(o.test, o.status) for o in verdict.outcomes] == [("public_tests[0]", "timeout")]
    assert processes_with(token) == []


def test_background_children_die_when_the_program_exits() -> None:
    token = f"1000.{secrets.randbelow(10**9)}"
    source = f"import subprocess\nsubprocess.Popen(['sleep', '{token}'], start_new_session=True)\n{DOUBLE}"
    assert judge_stdio(source, TESTS[:1], timeout_s=10).passed
    assert processes_with(token) == []


def test_output_beyond_the_file_size_limit_is_a_runtime_error() -> None:
    # The default sandbox caps a program's output at 16 MiB: a program printing in a loop cannot exhaust memory.
    verdict = judge_stdio("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", TESTS[:1], timeout_s=10)
    assert verdict.first_failure.status == "runtime_error"
    assert "File too large" in verdict.first_failure.stderr_tail  # Python ignores SIGXFSZ: the write fails
