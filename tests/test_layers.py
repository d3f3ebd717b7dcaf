"""Package boundaries of wmtp_core, read from the source with `ast`: data and eval never import each other, and
the sandbox and the tasks are leaves that both may use."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WMTP_CORE = Path(__file__).resolve().parents[1] / "wmtp_core"

FORBIDDEN = {
    "data": ("wmtp_core.eval",),
    "eval": ("wmtp_core.data",),
    "sandbox": ("wmtp_core.data", "wmtp_core.eval", "wmtp_core.tasks", "wmtp_core.model"),
    "tasks": ("wmtp_core.data", "wmtp_core.eval", "wmtp_core.sandbox", "wmtp_core.model"),
}


def imported_modules(source: str, package: str) -> set[str]:
    """Every module an import statement names, at any depth (function-local imports included). `from a import b`
    counts as both `a` and `a.b`, so `from wmtp_core import eval` is caught; relative imports are resolved
    against `package`, the dotted name of the file's package."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _violations(package: str) -> list[str]:
    found = []
    for path in sorted((WMTP_CORE / package).rglob("*.py")):
        in_package = ".".join(path.relative_to(WMTP_CORE.parent).parent.parts)
        bad = {n for n in imported_modules(path.read_text(), in_package)
               if any(n == f or n.startswith(f + ".") for f in FORBIDDEN[package])}  # fmt: skip
        # `from a.b import C` names a.b and a.b.C: report the module once.
        found += [f"{path.relative_to(WMTP_CORE.parent)} imports {n}"
                  for n in sorted(bad) if not any(n.startswith(o + ".") for o in bad)]  # fmt: skip
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_none_of_the_forbidden_packages(package: str) -> None:
    assert (WMTP_CORE / package / "__init__.py").is_file()
    assert _violations(package) == []


def test_the_scan_sees_every_form_of_import() -> None:
    source = (
        "import wmtp_core.eval.judge\n"
        "from wmtp_core import eval\n"
        "def f():\n    from wmtp_core.eval.report import METRICS_FILE\n"
        "from . import labels\n"
        "from ..eval.results import METRICS_FILE\n"
    )
    found = imported_modules(source, "wmtp_core.data")
    assert {"wmtp_core.eval.judge", "wmtp_core.eval", "wmtp_core.eval.report", "wmtp_core.eval.results"} <= found
    assert "wmtp_core.data.labels" in found


def test_the_library_imports_neither_dagster_nor_dvc():
    # wmtp_core runs alone (CLI, torchrun workers, notebooks). The one Dagster-related import is `dagster_pipes`,
    # the protocol's dependency-free side, opened by rank 0 only when a materialization launched the run.
    found = []
    for path in sorted(WMTP_CORE.rglob("*.py")):
        in_package = ".".join(path.relative_to(WMTP_CORE.parent).parent.parts)
        for name in imported_modules(path.read_text(), in_package):
            if name.split(".")[0] in ("dagster", "dvc", "dagster_webserver"):
                found.append(f"{path.relative_to(WMTP_CORE.parent)} imports {name}")
    assert found == []
