"""The bundled CodeContests demo set: problems written for this project, in CodeContests' published schema.

Each problem is one YAML file under `wmtp_core/data/demo/` (block scalars keep code and test text verbatim and
readable). Its `split` key assigns it to train / valid / test; every other key is a column of
`codecontests_schema.SCHEMA`. Tests and solutions are written as lists of `{input, output}` and
`{language, solution}` items and turned into the schema's parallel lists here. The labels are real: the demo
tests execute every Python solution (`judge.check_labels`) and require each label to hold.

Public and private tests are written by hand. Generated tests, as in CodeContests, pair seeded random inputs
with the output of a correct solution (the problem's first); the other correct solutions confirm them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from wmtp_core.data.codecontests_schema import DIFFICULTIES, LANGUAGES, SCHEMA, SOURCES, SPLITS

_TEST_FIELDS = ("public_tests", "private_tests", "generated_tests")
_SOLUTION_FIELDS = ("solutions", "incorrect_solutions")
_DEFAULTS: dict[str, Any] = {
    "generated_tests": [],
    "cf_points": 0.0,
    "is_description_translated": False,
    "untranslated_description": "",
    "input_file": "",
    "output_file": "",
}
_REQUIRED = set(SCHEMA.names) - set(_DEFAULTS)
# libyaml parses the set ~10x faster than the pure-Python loader; both are safe loaders.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DemoDataError(ValueError):
    """A demo problem file does not describe a valid CodeContests row."""


def demo_dir() -> Path:
    return Path(str(resources.files("wmtp_core") / "data" / "demo"))


def problem_files(directory: Path | None = None) -> list[Path]:
    files = sorted((directory or demo_dir()).glob("*.yaml"))
    if not files:
        raise DemoDataError(f"{directory or demo_dir()}: no demo problem files (*.yaml)")
    return files


def _pairs(path: Path, field: str, items: Any, keys: tuple[str, str], types: tuple[type, type]) -> dict:
    if not isinstance(items, list):
        raise DemoDataError(f"{path}: {field} must be a list of {{{keys[0]}, {keys[1]}}} items")
    columns: dict[str, list] = {keys[0]: [], keys[1]: []}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or set(item) != set(keys):
            got = sorted(item) if isinstance(item, Mapping) else type(item).__name__
            raise DemoDataError(f"{path}: {field}[{i}] must have exactly the keys {list(keys)}, got {got}")
        for key, typ in zip(keys, types, strict=True):
            if not isinstance(item[key], typ) or isinstance(item[key], bool):
                raise DemoDataError(f"{path}: {field}[{i}].{key} must be {typ.__name__}, got {item[key]!r}")
            columns[key].append(item[key])
    return columns


def load_problem(path: Path) -> tuple[str, dict[str, Any]]:
    """Read one problem file; return its split and its row as a dict of SCHEMA columns."""
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    if not isinstance(raw, dict):
        raise DemoDataError(f"{path}: expected a mapping of fields, got {type(raw).__name__}")
    split = raw.pop("split", None)
    if split not in SPLITS:
        raise DemoDataError(f"{path}: split must be one of {SPLITS}, got {split!r}")
    unknown = set(raw) - set(SCHEMA.names)
    missing = _REQUIRED - set(raw)
    if unknown or missing:
        raise DemoDataError(f"{path}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
    row = {**_DEFAULTS, **raw}
    for field in _TEST_FIELDS:
        row[field] = _pairs(path, field, row[field], ("input", "output"), (str, str))
    for field in _SOLUTION_FIELDS:
        row[field] = _pairs(path, field, row[field], ("language", "solution"), (int, str))
        bad = [lang for lang in row[field]["language"] if lang not in LANGUAGES]
        if bad:
            raise DemoDataError(f"{path}: {field} language {bad[0]} is not in {sorted(LANGUAGES)}")
    if row["source"] not in SOURCES:
        raise DemoDataError(f"{path}: source {row['source']!r} is not in {sorted(SOURCES)}")
    if row["difficulty"] not in DIFFICULTIES:
        raise DemoDataError(f"{path}: difficulty {row['difficulty']!r} is not in {sorted(DIFFICULTIES)}")
    row["cf_points"] = float(row["cf_points"])
    try:
        pa.Table.from_pylist([row], schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DemoDataError(f"{path}: a field does not fit SCHEMA: {e}") from e
    return split, row


def demo_tables(directory: Path | None = None) -> dict[str, pa.Table]:
    """Split -> table with exactly `SCHEMA`, rows ordered by problem name."""
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    seen: dict[str, Path] = {}
    for path in problem_files(directory):
        split, row = load_problem(path)
        if row["name"] in seen:
            raise DemoDataError(f"{path}: problem name {row['name']!r} already used by {seen[row['name']]}")
        seen[row["name"]] = path
        rows[split].append(row)
    tables = {}
    for split, split_rows in rows.items():
        split_rows.sort(key=lambda r: r["name"])
        tables[split] = pa.Table.from_pylist(split_rows, schema=SCHEMA)
    return tables


def hub_file_name(split: str) -> str:
    """File name of a single-shard split as published on the hub (`data/{split}-00000-of-00001.parquet`)."""
    return f"{split}-00000-of-00001.parquet"


def write_demo_parquet(out_dir: str | Path, directory: Path | None = None) -> dict[str, Path]:
    """Write each split as the hub names it; return split -> written path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, table in demo_tables(directory).items():
        path = out / hub_file_name(split)
        pq.write_table(table, path)
        written[split] = path
    return written
