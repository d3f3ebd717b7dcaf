"""`codecontests_index`: the few columns a sampler reads to choose rows, one small Parquet for all splits.

`row_id` is the row's position in `{split}.parquet` (also stored there as a column), so a sampler filters the
index by split and hands the chosen ids to `sampling.read_rows` without touching the text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wmtp_core.data.codecontests_schema import SPLITS
from wmtp_core.data.prompts import normalized_text_hash

INDEX_FILE = "index.parquet"
INDEX_COLUMNS = ["row_id", "problem_id", "is_correct", "difficulty", "n_tokens"]
INDEX_ROW_GROUP = 65536


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
    # Row groups of 64K rows: `sampler_columns` decodes one at a time, so its memory is the columns it returns.
    pq.write_table(index, out_file, compression="zstd", row_group_size=INDEX_ROW_GROUP)
    return index.num_rows


def _open(path: str | Path) -> pq.ParquetFile:
    path = Path(path)
    if not path.is_file():
        raise IndexFileError(f"{path}: index file missing (materialize codecontests_index first)")
    pf = pq.ParquetFile(path, read_dictionary=["split", "problem_id"], pre_buffer=False)
    missing = [c for c in ["split", *INDEX_COLUMNS] if c not in pf.schema_arrow.names]
    if missing:
        raise IndexFileError(f"{path}: index lacks columns {missing}")
    return pf


def read_index(path: str | Path, split: str | None = None) -> pa.Table:
    """The index (optionally one split) as an Arrow table; `sampling` takes it as is.

    `split` and `problem_id` come back dictionary-encoded, as stored: a sampler needs only their codes, and a
    3.7M-row index stays a few tens of MB.
    """
    table = _open(path).read(columns=["split", *INDEX_COLUMNS], use_threads=False).unify_dictionaries().combine_chunks()
    if split is None:
        return table
    in_split = equals(table["split"], split)
    return table if in_split.all() else table.filter(in_split)


def sampler_columns(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """One split of the index file as the arrays a sampler reads (see `sampler_arrays`), a row group at a time.

    Memory holds these arrays and one row group's decoding, never the index as a table.
    """
    pf = _open(path)
    groups = ((f"{path}: row group {g}", pf.read_row_group(g, columns=["split", *INDEX_COLUMNS], use_threads=False))
              for g in range(pf.num_row_groups))  # fmt: skip
    return sampler_arrays(groups, pf.metadata.num_rows, split)


def sampler_arrays(parts: Iterable[tuple[str, pa.Table]], n_rows: int, split: str) -> dict[str, np.ndarray]:
    """The rows of `split` in `parts` ((label, table) pieces of an index of `n_rows` rows) as arrays allocated once.

    Keys: row_id (int64), problem (int32, one code per problem_id), is_correct (bool), difficulty and n_tokens
    (int32). A piece without a `split` column belongs to `split` whole.
    """
    out = {"row_id": np.empty(n_rows, np.int64), "problem": np.empty(n_rows, np.int32),
           "is_correct": np.empty(n_rows, bool), "difficulty": np.empty(n_rows, np.int32),
           "n_tokens": np.empty(n_rows, np.int32)}  # fmt: skip
    codes: dict[str, int] = {}
    filled = 0
    for label, part in parts:
        if "split" in part.column_names:
            in_split = equals(part["split"], split)
            if not in_split.any():
                continue
            if not in_split.all():
                part = part.filter(in_split)
        for name in INDEX_COLUMNS:
            if part[name].null_count:
                raise IndexFileError(f"{label} has missing values in column {name!r}")
        rows = slice(filled, filled + part.num_rows)
        for name in ("row_id", "is_correct", "difficulty", "n_tokens"):
            out[name][rows] = part[name].to_numpy()
        at = filled
        for chunk in part["problem_id"].chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_encode()
            lookup = np.fromiter((codes.setdefault(v, len(codes)) for v in chunk.dictionary.to_pylist()), np.int32)
            out["problem"][at : at + len(chunk)] = lookup[chunk.indices.to_numpy(zero_copy_only=False)]
            at += len(chunk)
        filled += part.num_rows
    return {name: values[:filled] for name, values in out.items()}


def equals(column: pa.ChunkedArray, value: str) -> np.ndarray:
    """Which rows of a string column hold `value`; a dictionary column is compared by code, never decoded."""
    parts = [np.zeros(0, bool)]
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            code = chunk.dictionary.index(value).as_py()  # -1 when absent: no index equals it
            parts.append(pc.fill_null(pc.equal(chunk.indices, code), False).to_numpy(zero_copy_only=False))
        else:
            parts.append(pc.fill_null(pc.equal(chunk, value), False).to_numpy(zero_copy_only=False))
    return np.concatenate(parts)


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


def index_disagreements(processed_dir: str | Path, index_file: str | Path) -> list[str]:
    """Splits whose index rows differ from their processed file's columns (an empty list when all agree)."""
    index = read_index(index_file)
    problems = []
    for split in sorted(set(index["split"].to_pylist())):
        path = Path(processed_dir) / f"{split}.parquet"
        if not path.is_file():
            problems.append(f"{split}: indexed, but {path} is missing")
            continue
        stored = pq.read_table(path, columns=INDEX_COLUMNS).to_pylist()
        indexed = index.filter(equals(index["split"], split)).select(INDEX_COLUMNS).to_pylist()
        if stored != indexed:
            problems.append(f"{split}: index differs from {path.name}")
    return problems
