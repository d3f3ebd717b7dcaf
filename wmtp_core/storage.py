"""Storage convention: every asset directory is written atomically and carries a manifest.

An asset writes into a temporary sibling directory, adds `MANIFEST.json` (SHA256 and size of every file, counts,
the params that made it), then renames it into place. The previous version is moved aside first and removed only
after the new one is in place, so a crash at any point leaves a readable version. Readers call `verify()`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """A stored asset is missing, incomplete or does not match its manifest."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(
    directory: str | Path,
    *,
    params: dict[str, Any] | None = None,
    counts: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file under `directory` and write `MANIFEST.json` there. Returns the manifest."""
    root = Path(directory)
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in _files(root)
    }
    manifest = {
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": files,
        "counts": counts or {},
        "params": params or {},
        **(extra or {}),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise StorageError(f"{path}: manifest missing; the asset at {directory} was never completely written")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StorageError(f"{path}: not valid JSON ({e})") from e


def verify(directory: str | Path) -> dict[str, Any]:
    """Check every file listed in the manifest (presence, size, SHA256) and that no file is unlisted.

    Raises StorageError naming the first file at fault; returns the manifest.
    """
    root = Path(directory)
    if not root.is_dir():
        raise StorageError(f"{root}: asset directory does not exist (materialize it first)")
    manifest = read_manifest(root)
    listed = manifest.get("files", {})
    for rel, entry in sorted(listed.items()):
        path = root / rel
        if not path.is_file():
            raise StorageError(f"{path}: listed in {root / MANIFEST} but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise StorageError(f"{path}: {size} bytes, manifest expects {entry['bytes']} (truncated or changed)")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise StorageError(f"{path}: SHA256 {digest} does not match manifest {entry['sha256']}")
    unlisted = [p.relative_to(root).as_posix() for p in _files(root) if p.relative_to(root).as_posix() not in listed]
    if unlisted:
        raise StorageError(f"{root}: files not in the manifest: {', '.join(unlisted[:5])}")
    return manifest


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `final`; on success rename it into place, on error remove it.

    The caller writes every file (and usually the manifest via `write_manifest`) into the yielded path.
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = final.with_name(f".{final.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{tag}")
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def publish(
    final: str | Path,
    write: Any,
    *,
    params: dict[str, Any] | None = None,
    counts: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `write(tmp_dir)` (which may return extra counts), write the manifest, and rename into place."""
    with atomic_dir(final) as tmp:
        more = write(tmp) or {}
        manifest = write_manifest(tmp, params=params, counts={**(counts or {}), **more}, extra=extra)
    return manifest
