"""What every asset returns: where it lives, SHA256 of its files, counts, the params that made it, a preview, and
its data version."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from wmtp_core.storage import MANIFEST, sha256_file


def markdown_table(rows: Sequence[Mapping[str, Any]], *, max_cell: int = 60) -> str:
    if not rows:
        return "_(no rows)_"
    columns = list(rows[0])

    def cell(v: Any) -> str:
        text = str(v).replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def asset_metadata(directory: Path, manifest: Mapping[str, Any], *, preview: str) -> dict[str, Any]:
    """Standard metadata: path, manifest SHA256 (one digest naming the whole version), per-file SHA256, counts,
    params and a Markdown preview. Counts also appear as top-level numbers so the UI can plot them."""
    files = manifest["files"]
    meta: dict[str, Any] = {
        "path": dg.MetadataValue.path(str(directory)),
        "manifest_sha256": sha256_file(Path(directory) / MANIFEST),
        "files": dg.MetadataValue.json({k: v["sha256"] for k, v in files.items()}),
        "bytes": sum(v["bytes"] for v in files.values()),
        "config": dg.MetadataValue.json(dict(manifest.get("params", {}))),
        "preview": dg.MetadataValue.md(preview),
    }
    for key, value in manifest.get("counts", {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            meta[f"count/{key}"] = value
    return meta


def materialized(meta: dict[str, Any]) -> dg.MaterializeResult:
    """The result of an asset: its metadata, and the manifest's SHA256 as its data version, so Dagster marks
    downstream assets unsynced when this version changes (as DVC does when the directory's hash changes)."""
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(meta["manifest_sha256"]))


def image_metadata(png: Path, caption: str) -> dg.MetadataValue:
    """A PNG the Dagster UI shows inline: Markdown with the image embedded as a data URI (the UI cannot read
    files from storage), the file's path under it."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return dg.MetadataValue.md(f"**{caption}**\n\n![{caption}](data:image/png;base64,{data})\n\n`{png}`")


def table_metadata(rows: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    """Rows of flat dicts (same keys) as a Dagster table; numbers stay numbers, None becomes empty."""
    if not rows:
        return dg.MetadataValue.md("_(no rows)_")
    columns = list(rows[0])

    def kind(c: str) -> str:
        values = [r.get(c) for r in rows if r.get(c) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return "int"
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return "float"
        return "string"

    kinds = {c: kind(c) for c in columns}
    schema = dg.TableSchema(columns=[dg.TableColumn(c, kinds[c]) for c in columns])
    records = [
        dg.TableRecord({c: (r.get(c) if kinds[c] != "string" or r.get(c) is None else str(r.get(c)))
                        for c in columns})  # fmt: skip
        for r in rows
    ]
    return dg.MetadataValue.table(records, schema=schema)
