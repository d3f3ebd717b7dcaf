"""`codecontests_index`: the few columns a sampler reads to choose rows, one small Parquet for all splits.

`row_id` is the row's position in `{split}.parquet` (also stored there as a column), so a sampler filters the
index by split and hands the chosen ids to `sampling.read_rows` without touching the text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from wmtp_core.data.codecontests_schema import SPLITS
from wmtp_core.data.prompts import normalized_text_hash

INDEX_FILE = "index.parquet"
INDEX_COLUMNS = ["row_id", "problem_id", "is_correct", "difficulty", "n_tokens"]


class IndexFileError(ValueError):
    """The processed data or its index does not match what the sampler expects."""


def build_index(processed_dir: str | Path, out_file: str | Path, splits: Iterable[str] = SPLITS) -> int:
    """Write the index of the processed split files found in `processed_dir`; returns its row count."""
    processed_dir = Path(processed_dir)
    parts = []
    for split in splits:
        path = processed_dir / f"{split}.parquet"
        if not path.is_file():
            raise IndexFileError(f"{path}: processed split file missing (expected one per split in {list(splits)})")
        table = pq.read_table(path, columns=INDEX_COLUMNS)
        parts.append(table.append_column("split", pa.array([split] * table.num_rows, pa.string())))
    index = pa.concat_tables(parts).select(["split", *INDEX_COLUMNS])
    index = index.cast(pa.schema([f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name == "split" else f
                                  for f in index.schema]))  # fmt: skip
    pq.write_table(index, out_file, compression="zstd")
    return index.num_rows


def read_index(path: str | Path, split: str | None = None) -> pl.DataFrame:
    """The index (optionally one split) as a polars frame; `sampling` takes it as is."""
    path = Path(path)
    if not path.is_file():
        raise IndexFileError(f"{path}: index file missing (materialize codecontests_index first)")
    table = pl.read_parquet(path)
    missing = [c for c in ["split", *INDEX_COLUMNS] if c not in table.columns]
    if missing:
        raise IndexFileError(f"{path}: index lacks columns {missing}")
    if split is not None:
        table = table.filter(pl.col("split").cast(pl.String) == split)
    return table


def text_hashes(parquet_paths: Iterable[str | Path], column: str) -> set[str]:
    """Normalized-text hashes of the distinct values of one text column, read column-only."""
    hashes: set[str] = set()
    for path in parquet_paths:
        pf = pq.ParquetFile(path, read_dictionary=[column])
        for i in range(pf.num_row_groups):
            values = pf.read_row_group(i, columns=[column]).column(column)
            for chunk in values.chunks:
                dictionary = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk.unique()
                hashes.update(normalized_text_hash(v) for v in dictionary.to_pylist() if v is not None)
    return hashes


def find_contamination(eval_prompts: Iterable[tuple[str, str]], training_paths: Iterable[str | Path],
                       column: str = "instruction") -> list[str]:  # fmt: skip
    """Ids of the (id, prompt) evaluation items whose normalized prompt equals a training instruction."""
    training = text_hashes(training_paths, column)
    return [task_id for task_id, prompt in eval_prompts if normalized_text_hash(prompt) in training]
