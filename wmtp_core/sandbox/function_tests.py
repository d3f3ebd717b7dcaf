"""Judge a program that tests itself (a HumanEval/MBPP completion followed by its assertions) in the sandbox.

A program passes only if the harness can tell that every test ran to the end: a fresh random marker is printed
after the last test, and the program must exit 0 with that marker as its last line of output. A completion that
calls `sys.exit(0)` or `os._exit(0)` before the tests exits 0 without it and fails. (The marker sits in the
program's source, so a completion written to read its own file could forge it; model samples do not do that, and
the sandbox contains what such a program can do anyway.)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from wmtp_core.sandbox.core import DEFAULT_TIMEOUT_S, STDERR_TAIL_CHARS, Sandbox, default_sandbox

Outcome = Literal["passed", "failed", "timeout", "error"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "timeout", "error")


@dataclass(frozen=True)
class ProgramVerdict:
    status: Outcome
    stderr_tail: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("[sandbox]")]
    return lines[-1] if lines else ""


def judge_program(
    program: str, *, sandbox: Sandbox | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> ProgramVerdict:
    """Run one complete test program (e.g. `task.program(completion)`) and classify the outcome.

    passed: exited 0 and printed the end-of-tests marker last; failed: an assertion failed, or it exited 0 before
    the tests finished; timeout: wall clock or CPU limit; error: anything else (syntax error, exception, killed).
    """
    sandbox = sandbox or default_sandbox()
    marker = f"WMTP-ALL-TESTS-RAN-{secrets.token_hex(16)}"
    result = sandbox.run(f"{program}\n\nprint({marker!r}, flush=True)\n", timeout_s=timeout_s)
    stderr = result.stderr_tail
    if result.status == "timeout":
        status: Outcome = "timeout"
    elif result.status == "ok" and _last_line(result.stdout) == marker:
        status = "passed"
    elif result.status == "ok":
        status = "failed"
        stderr += "\n[judge] exited with status 0 before all tests ran (no end-of-tests marker)"
    elif _last_line(stderr).startswith("AssertionError"):
        status = "failed"
    else:
        status = "error"
    return ProgramVerdict(status, stderr[-STDERR_TAIL_CHARS:], result.wall_s)
