"""Judge a stdin/stdout program (a CodeContests solution) on tests in the sandbox.

Each test feeds its input to the program's stdin; the test passes when the program exits 0 and its stdout equals
the expected output as a sequence of whitespace-separated tokens, so trailing spaces, blank lines and `\\r\\n`
endings do not matter but every token does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from wmtp_core.sandbox.core import DEFAULT_TIMEOUT_S, Sandbox, default_sandbox

TestStatus = Literal["passed", "wrong_answer", "runtime_error", "timeout"]


@dataclass(frozen=True)
class IOTest:
    """One stdin/expected-stdout pair; `name` says where it came from, e.g. `private_tests[2]`."""

    name: str
    input: str
    output: str


@dataclass(frozen=True)
class TestOutcome:
    test: str
    status: TestStatus
    stderr_tail: str = ""


@dataclass(frozen=True)
class StdioVerdict:
    """Outcomes in test order; with `stop_on_failure` the list ends at the first failing test."""

    outcomes: tuple[TestOutcome, ...]

    @property
    def passed(self) -> bool:
        return all(o.status == "passed" for o in self.outcomes)

    @property
    def first_failure(self) -> TestOutcome | None:
        return next((o for o in self.outcomes if o.status != "passed"), None)


def outputs_match(actual: str, expected: str) -> bool:
    """CodeContests-style comparison: equal sequences of whitespace-separated tokens."""
    return actual.split() == expected.split()


def judge_stdio(
    source: str,
    tests: Iterable[IOTest],
    *,
    sandbox: Sandbox | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    stop_on_failure: bool = False,
) -> StdioVerdict:
    """Run `source` in the sandbox once per test, in order, and compare its stdout with the expected output.

    A run that exits non-zero (exception, signal, a resource limit) is a runtime_error; one stopped by the wall
    clock or the CPU limit is a timeout.
    """
    sandbox = sandbox or default_sandbox()
    outcomes: list[TestOutcome] = []
    for test in tests:
        result = sandbox.run(source, stdin=test.input, timeout_s=timeout_s)
        if result.status == "ok":
            status: TestStatus = "passed" if outputs_match(result.stdout, test.output) else "wrong_answer"
        elif result.status == "timeout":
            status = "timeout"
        else:
            status = "runtime_error"
        outcomes.append(TestOutcome(test.name, status, result.stderr_tail))
        if stop_on_failure and status != "passed":
            break
    return StdioVerdict(tuple(outcomes))
