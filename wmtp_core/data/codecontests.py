"""Reader of CodeContests as published on the Hugging Face hub: hub-named Parquet files, validated on read.

Validation stops at the first violation with an error naming the file, the row (0-based within the file, plus the
problem name when it is readable) and the field, so a bad shard is found without opening it by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wmtp_core.data.codecontests_schema import LANGUAGES, SCHEMA, SPLITS


class CodeContestsError(ValueError):
    """A published CodeContests file is missing, misnamed or violates the hub schema."""


# `{split}-00000-of-00039[-<hash>].parquet`, as the hub names them (the hash suffix appears in some revisions).
_FILE_NAME = re.compile(r"^(?P<split>train|valid|test)-\d{5}-of-\d{5}(-[0-9a-f]+)?\.parquet$")

# The fields preparation reads; every other field of the hub schema is checked for type only when present.
REQUIRED_FIELDS = (
    "name",
    "description",
    "public_tests",
    "source",
    "difficulty",
    "solutions",
    "incorrect_solutions",
    "cf_rating",
)


def find_split_files(source_dir: str | Path) -> dict[str, list[Path]]:
    """Hub-named Parquet files in `source_dir` (or its `data/` folder, as in the hub repository), by split."""
    root = Path(source_dir)
    if not root.is_dir():
        raise CodeContestsError(f"{root}: CodeContests source directory does not exist")
    candidates = sorted(root.glob("*.parquet")) + sorted((root / "data").glob("*.parquet"))
    files: dict[str, list[Path]] = {split: [] for split in SPLITS}
    for path in candidates:
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise CodeContestsError(
                f"{path}: not a hub-named CodeContests file (expected '{{train,valid,test}}-NNNNN-of-NNNNN.parquet')"
            )
        files[match["split"]].append(path)
    if not any(files.values()):
        raise CodeContestsError(f"{root}: no CodeContests Parquet files (expected e.g. 'train-00000-of-00001.parquet')")
    return files


def _canonical(t: pa.DataType) -> pa.DataType:
    """Large and small string/list variants carry the same data; the hub has used both."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_list(t) or pa.types.is_list(t) or pa.types.is_list_view(t):
        return pa.list_(_canonical(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _canonical(f.type)) for f in t])
    return t


def check_schema(path: str | Path, schema: pa.Schema) -> None:
    for name in REQUIRED_FIELDS:
        if schema.get_field_index(name) < 0:
            raise CodeContestsError(f"{path}: field '{name}' missing (all rows; the hub schema requires it)")
    for field in schema:
        if SCHEMA.get_field_index(field.name) < 0:
            continue
        expected = SCHEMA.field(field.name).type
        if _canonical(field.type) != _canonical(expected):
            raise CodeContestsError(
                f"{path}: field '{field.name}' has type {field.type}, expected {expected} (all rows)"
            )


def _row_label(batch: pa.RecordBatch, row: int, offset: int) -> str:
    try:
        name = batch.column("name")[row].as_py()
    except UnicodeDecodeError:
        name = None
    return f"row {offset + row}" + (f" (problem {name!r})" if name else "")


def _string_leaves(array: pa.Array, field: str) -> Iterator[tuple[str, pa.Array, pa.Array]]:
    """(field path, string values, row of each value) for every string leaf of a column."""
    rows = pa.array(range(len(array)), pa.int64())
    yield from _leaves(array, field, rows)


def _leaves(array: pa.Array, field: str, rows: pa.Array) -> Iterator[tuple[str, pa.Array, pa.Array]]:
    t = array.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        yield field, array, rows
    elif pa.types.is_struct(t):
        for i, child in enumerate(t):
            yield from _leaves(array.field(i), f"{field}.{child.name}", rows)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        parents = pc.list_parent_indices(array)
        yield from _leaves(array.flatten(), field, pc.take(rows, parents))


def _check_utf8(path: Path, batch: pa.RecordBatch, offset: int) -> None:
    for name in batch.schema.names:
        for field, values, rows in _string_leaves(batch.column(name), name):
            try:
                values.validate(full=True)
                continue
            except pa.ArrowInvalid:
                pass
            # Slow path only for the failing column: find the first value that is not UTF-8.
            raw = values.cast(pa.binary()) if not pa.types.is_large_string(values.type) else values.view(pa.large_binary())
            for i, value in enumerate(raw):
                data = value.as_py()
                if data is None:
                    continue
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as e:
                    row = rows[i].as_py()
                    raise CodeContestsError(
                        f"{path}: {_row_label(batch, row, offset)}, field '{field}': invalid UTF-8 ({e.reason} at "
                        f"byte {e.start})"
                    ) from None


def _check_rows(path: Path, batch: pa.RecordBatch, offset: int) -> None:
    for name in ("name", "description", "solutions", "incorrect_solutions", "source", "difficulty"):
        nulls = batch.column(name).is_null()
        if pc.any(nulls).as_py():
            row = pc.index(nulls, True).as_py()
            raise CodeContestsError(f"{path}: {_row_label(batch, row, offset)}, field '{name}': null, expected a value")
    for name in ("solutions", "incorrect_solutions"):
        column = batch.column(name)
        languages, solutions = column.field("language"), column.field("solution")
        if not pc.all(pc.equal(pc.list_value_length(languages), pc.list_value_length(solutions))).as_py():
            row = pc.index(pc.not_equal(pc.list_value_length(languages), pc.list_value_length(solutions)), True)
            raise CodeContestsError(
                f"{path}: {_row_label(batch, row.as_py(), offset)}, field '{name}': 'language' and 'solution' "
                "lists differ in length"
            )
        codes = languages.flatten()
        bad = pc.invert(pc.is_in(codes, value_set=pa.array(sorted(LANGUAGES), pa.int64())))
        if pc.any(bad).as_py():
            at = pc.index(bad, True).as_py()
            row = pc.list_parent_indices(languages)[at].as_py()
            raise CodeContestsError(
                f"{path}: {_row_label(batch, row, offset)}, field '{name}.language': code {codes[at].as_py()} is "
                f"outside CodeContests' Language enum {sorted(LANGUAGES)}"
            )


def open_file(path: str | Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise CodeContestsError(f"{path}: not a readable Parquet file ({e})") from e


def read_batches(path: str | Path, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Validated record batches of one published file (by default the fields preparation needs)."""
    path = Path(path)
    pf = open_file(path)
    check_schema(path, pf.schema_arrow)
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns or REQUIRED_FIELDS)):
        batch = batch.cast(pa.schema([pa.field(f.name, _canonical(f.type)) for f in batch.schema]))
        _check_utf8(path, batch, offset)
        _check_rows(path, batch, offset)
        yield batch
        offset += batch.num_rows


def read_problems(source_dir: str | Path, limit: int | None = None) -> pa.Table:
    """Every field of the published rows in `source_dir`, train then valid then test; the first `limit` rows when
    given. Solutions and tests stay nested, as the label check reads them."""
    batches: list[pa.RecordBatch] = []
    taken = 0
    for paths in find_split_files(source_dir).values():
        for path in paths:
            pf = open_file(path)
            check_schema(path, pf.schema_arrow)
            for batch in pf.iter_batches(batch_size=256):
                batches.append(batch if limit is None else batch.slice(0, limit - taken))
                taken += batches[-1].num_rows
                if limit is not None and taken >= limit:
                    return pa.Table.from_batches(batches)
    return pa.Table.from_batches(batches) if batches else SCHEMA.empty_table()


def count_rows(paths: list[Path]) -> int:
    return sum(open_file(p).metadata.num_rows for p in paths)


def count_solutions(source_dir: str | Path) -> dict[str, int]:
    """Problems and correct/incorrect solutions of every split, counted column-wise (the published train split
    has millions of solutions; no solution text is materialized as Python objects)."""
    counts = {"problems": 0, "correct_solutions": 0, "incorrect_solutions": 0}
    for paths in find_split_files(source_dir).values():
        for path in paths:
            table = open_file(path).read(columns=["solutions", "incorrect_solutions"])
            counts["problems"] += table.num_rows
            for field, key in (("solutions", "correct_solutions"), ("incorrect_solutions", "incorrect_solutions")):
                lengths = pc.list_value_length(pc.struct_field(table[field], "solution"))
                counts[key] += int(pc.sum(lengths).as_py() or 0)
    return counts


def tokenizer_corpus(source_dir: str | Path) -> list[str]:
    """The text a tokenizer is trained on: every description and every solution, correct and incorrect, of every
    split (what the models will read and write)."""
    texts: list[str] = []
    for paths in find_split_files(source_dir).values():
        for path in paths:
            for batch in read_batches(path):
                texts += [t for t in batch.column("description").to_pylist() if t]
                for field in ("solutions", "incorrect_solutions"):
                    texts += [s for sols in batch.column(field).to_pylist() for s in sols["solution"] if s]
    return texts
