"""Helpers of the sandbox tests."""

from __future__ import annotations

from pathlib import Path


def processes_with(token: str) -> list[str]:
    """Pids of live processes whose command line contains `token` (a program's children must not outlive it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found
