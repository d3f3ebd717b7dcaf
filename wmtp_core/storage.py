"""Storage convention: every asset directory is written atomically and carries a manifest.

An asset writes into a temporary sibling directory, adds `MANIFEST.json` (SHA256 and size of every file, counts,
the params that made it), then renames it into place. The previous version is moved aside first and removed only
after the new one is in place, so a crash at any point leaves a readable version. Readers call `verify()`.

`MANIFEST.json` is the one integrity file of every directory, model directories included (`wmtp_core.model.save`
and the converters write it too, so a model made outside Dagster is checked the same way).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
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
    # Only the directory's own manifest is left out: a nested one (a model directory inside an asset) is a file
    # like any other, so the outer manifest covers it.
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)


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
    return _write(root, manifest)


def _write(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
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


def verify(directory: str | Path, files: Iterable[str] | None = None) -> dict[str, Any]:
    """Check every file listed in the manifest (presence, size, SHA256) and that no file is unlisted.

    `files` (paths relative to `directory`) checks only those, e.g. the small value head beside 13 GB of policy
    weights. Raises StorageError naming the first file at fault; returns the manifest.
    """
    root = Path(directory)
    if not root.is_dir():
        raise StorageError(f"{root}: asset directory does not exist (materialize it first)")
    manifest = read_manifest(root)
    listed = manifest.get("files", {})
    if files is not None:
        unknown = [rel for rel in files if rel not in listed]
        if unknown:
            raise StorageError(f"{root / unknown[0]}: not listed in {root / MANIFEST}")
        listed = {rel: listed[rel] for rel in files}
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
    if files is None and unlisted:
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
    """Run `write(tmp_dir)` (which may return extra counts), write the manifest, and rename into place.

    A writer that already wrote the directory's manifest (`wmtp_core.model.save` and the converters do) keeps its
    hashes: the asset's params and counts go into that one manifest instead of hashing the weights again.
    """
    with atomic_dir(final) as tmp:
        counts = {**(counts or {}), **(write(tmp) or {})}
        if (tmp / MANIFEST).is_file():
            manifest = _extend_manifest(tmp, params=params, counts=counts, extra=extra)
        else:
            manifest = write_manifest(tmp, params=params, counts=counts, extra=extra)
    return manifest


def _extend_manifest(
    directory: Path, *, params: dict[str, Any] | None, counts: dict[str, Any], extra: dict[str, Any] | None
) -> dict[str, Any]:
    """Add params, counts and extra keys to the manifest a writer just wrote, reusing its file hashes.

    The writer hashed its files a moment ago inside the same temporary directory; only a file written, removed
    or resized after that is an error (a writer bug), named here rather than hidden by hashing it now.
    """
    inner = read_manifest(directory)
    listed = inner.get("files", {})
    present = {p.relative_to(directory).as_posix(): p.stat().st_size for p in _files(directory)}
    where = directory / MANIFEST
    for rel in sorted(set(listed) | set(present)):
        if rel not in listed:
            raise StorageError(f"{directory / rel}: written after {where}, which does not list it")
        if rel not in present:
            raise StorageError(f"{directory / rel}: listed in {where} but removed after it was written")
        if present[rel] != listed[rel]["bytes"]:
            raise StorageError(
                f"{directory / rel}: {present[rel]} bytes, {where} lists {listed[rel]['bytes']} (changed after it)"
            )
    manifest = {
        **inner,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "counts": {**inner.get("counts", {}), **counts},
        "params": {**inner.get("params", {}), **(params or {})},
        **(extra or {}),
    }
    return _write(directory, manifest)
