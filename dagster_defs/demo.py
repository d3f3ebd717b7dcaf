"""What `wmtp demo` adds around the Dagster run: a progress line per asset, and DVC's record of the result.

Progress: the main job carries a success hook that prints `[done/total] asset (elapsed)` for every materialized
asset, once a run announces which it will materialize (`expect`). Runs started elsewhere (the UI) print nothing.

DVC: the demo materializes every asset through Dagster in one process, then `dvc commit` records what it built in
`dvc.lock` (the hashes of every stage's deps, params and outs, the outs copied into DVC's cache), so `dvc status`
reports the pipeline up to date and a following `dvc repro` re-runs nothing, exactly as after a `dvc repro`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg


class _Progress:
    assets: frozenset[str] = frozenset()
    done = 0
    started = 0.0


def expect(assets: list[str]) -> None:
    """Announce a run materializing `assets`: the hook prints a line as each one is done (not for the steps of
    asset checks)."""
    _Progress.assets, _Progress.done, _Progress.started = frozenset(assets), 0, time.monotonic()


def _elapsed() -> str:
    seconds = int(time.monotonic() - _Progress.started)
    return f"{seconds // 60}:{seconds % 60:02d}"


@dg.success_hook(name="progress")
def progress(context: dg.HookContext) -> None:
    if context.op.name not in _Progress.assets:
        return
    _Progress.done += 1
    print(f"[{_Progress.done}/{len(_Progress.assets)}] {context.op.name} materialized ({_elapsed()} elapsed)",
          file=sys.stderr, flush=True)  # fmt: skip


def dvc_executable() -> str | None:
    """`dvc` beside this Python (the project's set-up links it there), else on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else shutil.which("dvc")


def record_in_dvc(root: Path, storage: Path) -> str:
    """`dvc commit` of every stage in `root`'s dvc.yaml; returns what happened, in one line."""
    dvc = dvc_executable()
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return f"{root} is not a DVC project (no .dvc/ or dvc.yaml): no dvc.lock written"
    if storage.resolve() != (root / "storage").resolve():
        return f"storage {storage} is not the DVC project's {root / 'storage'}: no dvc.lock written"
    if dvc is None:
        return "dvc is not installed (`make setup` installs it): no dvc.lock written"
    done = subprocess.run([dvc, "commit", "--force", "--quiet"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`dvc commit` in {root} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return f"recorded in {root / 'dvc.lock'}: `dvc status` is clean, `dvc repro` has nothing to do"
