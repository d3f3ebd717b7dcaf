"""The label checker's judge: verdicts on real programs run in subprocesses, and label disagreements."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wmtp_core.data.codecontests_schema import SCHEMA
from wmtp_core.data.judge import (
    JudgeTest,
    SubprocessRunner,
    check_labels,
    judge_solution,
    outputs_match,
    problem_tests,
)

DOUBLE = "print(2 * int(input()))\n"
TESTS = [JudgeTest("public_tests[0]", "2\n", "4\n"), JudgeTest("private_tests[0]", "5\n", "10\n")]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has already died


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
    verdict = judge_solution(DOUBLE, TESTS, timeout_s=10)
    assert verdict.passed
    assert [o.test for o in verdict.outcomes] == ["public_tests[0]", "private_tests[0]"]
    assert verdict.first_failure is None


def test_trailing_whitespace_in_program_output_is_accepted() -> None:
    source = "x = int(input())\nprint(2 * x, end='   \\n\\n\\n')\n"
    assert judge_solution(source, TESTS, timeout_s=10).passed


def test_wrong_answer_names_the_failing_test() -> None:
    source = "x = int(input())\nprint(4 if x == 2 else x * 3)\n"
    verdict = judge_solution(source, TESTS, timeout_s=10)
    assert not verdict.passed
    assert [(o.test, o.status) for o in verdict.outcomes] == [
        ("public_tests[0]", "passed"),
        ("private_tests[0]", "wrong_answer"),
    ]
    assert verdict.first_failure.test == "private_tests[0]"


def test_runtime_error_keeps_the_stderr_tail() -> None:
    verdict = judge_solution("x = int(input())\nprint(x // 0)\n", TESTS[:1], timeout_s=10)
    failure = verdict.first_failure
    assert failure.status == "runtime_error"
    assert "ZeroDivisionError" in failure.stderr_tail


def test_timeout_kills_the_whole_process_group() -> None:
    # The program starts a grandchild and then spins; both must be gone after the verdict.
    source = (
        "import subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(child.pid, flush=True)\n"
        "while True:\n"
        "    pass\n"
    )
    result = SubprocessRunner()(source, "", 1.0)
    assert result.status == "timeout"
    grandchild = int(result.stdout.split()[0])
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), f"grandchild {grandchild} survived the timeout"
    verdict = judge_solution("while True:\n    pass\n", TESTS, timeout_s=0.5, stop_on_failure=True)
    assert [(o.test, o.status) for o in verdict.outcomes] == [("public_tests[0]", "timeout")]


def test_background_children_die_when_the_program_exits() -> None:
    source = "import subprocess\nprint(subprocess.Popen(['sleep', '60']).pid)\n"
    result = SubprocessRunner()(source, "", 10)
    assert result.status == "ok"
    grandchild = int(result.stdout)
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), f"background child {grandchild} outlived the program"


def test_program_runs_in_a_fresh_directory_with_a_scrubbed_environment(tmp_path: Path) -> None:
    os.environ["WMTP_JUDGE_SECRET"] = "leak"
    try:
        source = "import os\nprint(os.getcwd())\nprint(' '.join(sorted(os.environ)))\n"
        result = SubprocessRunner()(source, "", 10)
    finally:
        del os.environ["WMTP_JUDGE_SECRET"]
    cwd, names = result.stdout.splitlines()
    assert result.status == "ok"
    assert "WMTP_JUDGE_SECRET" not in names.split()
    assert "VIRTUAL_ENV" not in names.split()
    assert Path(cwd).name.startswith("wmtp-judge-")
    assert not Path(cwd).exists(), "the temporary directory must be removed after the run"


def test_output_is_read_only_up_to_the_limit() -> None:
    result = SubprocessRunner(max_output_bytes=1000)("print('x' * 100000)\n", "", 10)
    assert result.status == "ok"
    assert len(result.stdout) == 1000


def _row(name: str, correct: list[tuple[int, str]], incorrect: list[tuple[int, str]]) -> dict:
    empty = {"input": [], "output": []}
    row = {field: None for field in SCHEMA.names}
    row.update(
        name=name,
        description="Double a number.",
        public_tests={"input": ["2\n"], "output": ["4\n"]},
        private_tests={"input": ["5\n", "0\n"], "output": ["10\n", "0\n"]},
        generated_tests=empty,
        solutions={"language": [c[0] for c in correct], "solution": [c[1] for c in correct]},
        incorrect_solutions={"language": [c[0] for c in incorrect], "solution": [c[1] for c in incorrect]},
    )
    return row


def test_check_labels_reports_each_contradicted_label() -> None:
    squares = "x = int(input())\nprint(x * x)\n"  # right on 2 and 0 only
    table = pa.Table.from_pylist(
        [
            _row(
                "double", [(3, DOUBLE), (3, squares)], [(3, "print(0)\n"), (1, "print(int(input()) * 2)\n")]
            ),
            _row("agreeing", [(3, DOUBLE), (2, "int main() { return 1; }")], [(3, "print(1)\n")]),
        ],
        schema=SCHEMA,
    )
    found = check_labels(table, timeout_s=10, workers=2, progress=False)
    assert [(d.problem, d.label, d.index, d.test, d.status) for d in found] == [
        ("double", "correct", 1, "private_tests[0]", "wrong_answer"),
        ("double", "incorrect", 1, "all 3 tests", "passed"),
    ]
    assert "labelled correct but wrong_answer on private_tests[0]" in str(found[0])


def test_problem_tests_rejects_mismatched_inputs_and_outputs() -> None:
    row = _row("broken", [], [])
    row["private_tests"] = {"input": ["1\n", "2\n"], "output": ["2\n"]}
    with pytest.raises(ValueError, match="'broken': private_tests has 2 inputs but 1 outputs"):
        problem_tests(row)


def test_a_problem_without_tests_cannot_have_its_labels_checked() -> None:
    row = _row("untested", [(3, DOUBLE)], [])
    row["public_tests"] = row["private_tests"] = {"input": [], "output": []}
    with pytest.raises(ValueError, match="'untested': Python solutions but no tests"):
        check_labels([row], progress=False)


def test_another_interpreter_plugs_in_as_runner() -> None:
    runner = SubprocessRunner(python="/usr/bin/python3.11")
    result = runner("import sys\nprint(sys.executable)\n", "", 10)
    assert result.stdout.strip() == "/usr/bin/python3.11"
    table = pa.Table.from_pylist([_row("double", [(3, DOUBLE)], [(3, "print(7)\n")])], schema=SCHEMA)
    assert check_labels(table, runner=runner, progress=False) == []


def test_evaluation_sandbox_plugs_in_as_runner() -> None:
    from wmtp_core.eval import sandbox

    table = pa.Table.from_pylist(
        [_row("double", [(3, DOUBLE)], [(3, "print(int(input()) // 0)\n"), (3, DOUBLE)])], schema=SCHEMA
    )
    found = check_labels(table, runner=sandbox.run, timeout_s=10, progress=False)
    assert [(d.label, d.index, d.status) for d in found] == [("incorrect", 1, "passed")]


def test_check_labels_command_runs_solutions_in_the_sandbox(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from wmtp_core.data.cli import check_labels_command
    from wmtp_core.data.demo import demo_tables

    rows = demo_tables()["train"].to_pylist()[:2]
    good, bad = tmp_path / "good", tmp_path / "bad"
    for directory in (good, bad):
        directory.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), good / "train-00000-of-00001.parquet")
    rows[1]["solutions"]["solution"][0] = rows[1]["incorrect_solutions"]["solution"][0]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), bad / "train-00000-of-00001.parquet")
    runner = CliRunner()

    ok = runner.invoke(check_labels_command, [str(good), "--no-progress", "--workers", "2"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output.splitlines()[-1]) == {"source_dir": str(good), "problems": 2, "limit": None,
                                                      "disagreements": 0}  # fmt: skip
    # --limit 1 checks only the first (correctly labelled) problem.
    assert runner.invoke(check_labels_command, [str(bad), "--limit", "1", "--no-progress"]).exit_code == 0
    failed = runner.invoke(check_labels_command, [str(bad), "--no-progress", "--workers", "2"])
    assert failed.exit_code == 1
    assert f"{rows[1]['name']}: correct solution 0 is labelled correct but" in failed.output
    from dagster_defs.cli import build_cli  # the `wmtp` group reports input errors in one line

    missing = runner.invoke(build_cli(), ["check-labels", str(tmp_path)])
    assert missing.exit_code == 1 and "no CodeContests Parquet files" in missing.output
