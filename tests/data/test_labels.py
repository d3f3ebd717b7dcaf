"""The CodeContests label check: contradicted labels are reported, and every solution runs in the sandbox."""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wmtp_core.data.codecontests_schema import SCHEMA
from wmtp_core.data.labels import check_labels, problem_tests

DOUBLE = "print(2 * int(input()))\n"
DOUBLE_TESTS = {"public_tests": (["2\n"], ["4\n"]), "private_tests": (["5\n", "0\n"], ["10\n", "0\n"])}


def _row(name: str, correct: list[tuple[int, str]], incorrect: list[tuple[int, str]], tests=None) -> dict:
    row = {field: None for field in SCHEMA.names}
    row.update(name=name, description="A problem.", generated_tests={"input": [], "output": []})
    for kind, (inputs, outputs) in (tests or DOUBLE_TESTS).items():
        row[kind] = {"input": inputs, "output": outputs}
    for kind in ("public_tests", "private_tests"):
        row[kind] = row[kind] or {"input": [], "output": []}
    row["solutions"] = {"language": [c[0] for c in correct], "solution": [c[1] for c in correct]}
    row["incorrect_solutions"] = {"language": [c[0] for c in incorrect], "solution": [c[1] for c in incorrect]}
    return row


def test_check_labels_reports_each_contradicted_label() -> None:
    squares = "x = int(input())\nprint(x * x)\n"  # right on 2 and 0 only
    table = pa.Table.from_pylist(
        [
            _row("double", [(3, DOUBLE), (3, squares)], [(3, "print(0)\n"), (1, "print(int(input()) * 2)\n")]),
            _row("agreeing", [(3, DOUBLE), (2, "int main() { return 1; }")], [(3, "print(1)\n")]),
            _row("crashing", [(3, "print(int(input()) // 0)\n")], [(3, "print(int(input()) // 0)\n")]),
        ],
        schema=SCHEMA,
    )
    found = check_labels(table, timeout_s=10, workers=2, progress=False)
    assert [(d.problem, d.label, d.index, d.test, d.status) for d in found] == [
        ("crashing", "correct", 0, "public_tests[0]", "runtime_error"),
        ("double", "correct", 1, "private_tests[0]", "wrong_answer"),
        ("double", "incorrect", 1, "all 3 tests", "passed"),
    ]
    assert "ZeroDivisionError" in found[0].stderr_tail
    assert "labelled correct but wrong_answer on private_tests[0]" in str(found[1])
    assert "labelled incorrect but passed all 3 tests" in str(found[2])


def test_solutions_run_in_the_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each correct-labelled probe prints "sandboxed" only if the sandbox held; run unsandboxed (as the runner's
    own uid, with its files, network and environment) each would print something else and be reported."""
    monkeypatch.setenv("WMTP_LABEL_CHECK_SECRET", "leak")
    canary = tmp_path / "canary.txt"
    canary.write_text("canary")
    planted = tmp_path / f"planted-{secrets.token_hex(4)}.txt"
    host_uid = os.getuid()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probes = {
            "uid": f"import os\nprint('sandboxed' if os.getuid() not in (0, {host_uid}) else f'uid {{os.getuid()}}')\n",
            "environment": "import os\nprint('leaked' if 'WMTP_LABEL_CHECK_SECRET' in os.environ else 'sandboxed')\n",
            "write_outside": (
                f"try:\n    open({str(planted)!r}, 'w').write('pwned')\n    print('wrote')\n"
                "except OSError:\n    print('sandboxed')\n"
            ),
            "delete_outside": (
                f"import os\ntry:\n    os.remove({str(canary)!r})\n    print('deleted')\n"
                "except OSError:\n    print('sandboxed')\n"
            ),
            "network": (
                f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
                "    print('connected')\nexcept OSError:\n    print('sandboxed')\n"
            ),
        }
        tests = {"public_tests": ([""], ["sandboxed\n"])}
        rows = [_row(name, [(3, source)], [], tests) for name, source in probes.items()]
        # The control: an incorrect-labelled probe that holds is reported, so the probes did run and print.
        rows.append(_row("control", [], [(3, probes["uid"])], tests))
        found = check_labels(pa.Table.from_pylist(rows, schema=SCHEMA), timeout_s=10, workers=2, progress=False)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert [(d.problem, d.label, d.status) for d in found] == [("control", "incorrect", "passed")], [
        str(d) for d in found
    ]
    assert canary.read_text() == "canary" and not planted.exists()


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
