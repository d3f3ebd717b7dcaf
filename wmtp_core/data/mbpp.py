"""MBPP (Austin et al. 2021): `mbpp.jsonl` as published, or the Hugging Face Parquet layout (`full/{split}-*.parquet`).

Splits are fixed by task id: prompt 1-10, test 11-510, validation 511-600, train 601-974.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wmtp_core.storage import publish

BUNDLED_MBPP = Path(__file__).parent / "bundled" / "mbpp.jsonl"
"""The published mbpp.jsonl (974 problems, CC BY 4.0) shipped with the package; see bundled/README.md."""


class MbppError(ValueError):
    """An MBPP file is missing or a row violates the published format."""


SPLIT_RANGES = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}

SCHEMA = pa.schema(
    [
        ("task_id", pa.int64()),
        ("split", pa.string()),
        ("text", pa.string()),
        ("code", pa.string()),
        ("test_list", pa.list_(pa.string())),
        ("test_setup_code", pa.string()),
        ("challenge_test_list", pa.list_(pa.string())),
    ]
)
_TYPES = {"task_id": int, "text": str, "code": str, "test_list": list, "test_setup_code": str, "challenge_test_list": list}
_HF_FILE = re.compile(r"^(?P<split>prompt|test|validation|train)-\d{5}-of-\d{5}(-[0-9a-f]+)?\.parquet$")


def split_of(task_id: int) -> str:
    for split, (lo, hi) in SPLIT_RANGES.items():
        if lo <= task_id <= hi:
            return split
    raise MbppError(f"task_id {task_id} is outside MBPP's 1..974")


def _check_row(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise MbppError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, kind in _TYPES.items():
        if key not in row:
            raise MbppError(f"{where}: field '{key}' missing")
        if not isinstance(row[key], kind) or (kind is int and isinstance(row[key], bool)):
            raise MbppError(f"{where}: field '{key}' is {type(row[key]).__name__}, expected {kind.__name__}")
        if kind is list and not all(isinstance(t, str) for t in row[key]):
            raise MbppError(f"{where}: field '{key}' must be a list of strings")
    return {"split": split_of(row["task_id"]), **{k: row[k] for k in _TYPES}}


def read_jsonl(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise MbppError(f"{path}: MBPP file not found")
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MbppError(f"{path}: line {line_no}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MbppError(f"{path}: line {line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
            rows.append(_check_row(obj, f"{path}: line {line_no}"))
    return _finish(rows, str(path))


def read_parquet(path: str | Path) -> pa.Table:
    """One Parquet file, or a folder with the hub's `{split}-NNNNN-of-NNNNN.parquet` files (or `full/` under it)."""
    path = Path(path)
    if path.is_dir():
        base = path / "full" if (path / "full").is_dir() else path
        files = sorted(p for p in base.glob("*.parquet") if _HF_FILE.match(p.name))
        if not files:
            raise MbppError(f"{base}: no MBPP Parquet files named like 'test-00000-of-00001.parquet'")
    elif path.is_file():
        files = [path]
    else:
        raise MbppError(f"{path}: MBPP file or folder not found")
    rows = []
    for file in files:
        try:
            table = pq.read_table(file)
        except (OSError, pa.ArrowInvalid) as e:
            raise MbppError(f"{file}: not a readable Parquet file ({e})") from e
        named = _HF_FILE.match(file.name)
        for i, row in enumerate(table.to_pylist()):
            checked = _check_row(row, f"{file}: row {i}")
            if named and checked["split"] != named["split"]:
                raise MbppError(f"{file}: row {i}: task_id {row['task_id']} belongs to split {checked['split']!r}")
            rows.append(checked)
    return _finish(rows, str(path))


def _finish(rows: list[dict], source: str) -> pa.Table:
    ids = [r["task_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise MbppError(f"{source}: task_id {dup} appears more than once")
    rows.sort(key=lambda r: r["task_id"])
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def read_mbpp(path: str | Path) -> pa.Table:
    path = Path(path)
    return read_jsonl(path) if path.suffix == ".jsonl" else read_parquet(path)


def prepare_mbpp(path: str | Path, out_dir: str | Path, params: dict | None = None) -> dict[str, int]:
    """Write `mbpp.parquet` (all rows, with `split`) atomically with a manifest; returns rows per split."""
    table = read_mbpp(path)
    counts = {"rows": table.num_rows}
    for split in SPLIT_RANGES:
        counts[split] = sum(1 for s in table["split"].to_pylist() if s == split)
    publish(out_dir, lambda tmp: pq.write_table(table, tmp / "mbpp.parquet"), params=params, counts=counts)
    return counts
