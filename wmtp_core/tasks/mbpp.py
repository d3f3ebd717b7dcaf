"""MBPP (Austin et al. 2021): the published `mbpp.jsonl` or the Hugging Face Parquet layout, and its tasks.

Splits are fixed by task id: prompt 1-10, test 11-510, validation 511-600, train 601-974. The prompt is the
standard one, "You are an expert Python programmer, and here is your task: {text} Your code should pass these
tests:\\n\\n{three asserts}\\n[BEGIN]\\n", optionally preceded by solved examples from the prompt split (tasks 2, 3, 4
in the paper's 3-shot setting); the program that tests a completion is completion + `test_setup_code` +
`test_list`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from wmtp_core.tasks.taskset import Table, Task, TaskError, TaskSet, limit_tasks, read_parquet, read_rows

BUNDLED_MBPP = Path(__file__).parent / "bundled" / "mbpp.jsonl"
"""The published mbpp.jsonl (974 problems, CC BY 4.0) shipped with the package; see bundled/README.md."""

MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_FEW_SHOT_IDS = (2, 3, 4)
MBPP_STOP = ("[DONE]",)

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


def mbpp_split(task_id: int) -> str:
    for split, (lo, hi) in MBPP_SPLITS.items():
        if lo <= task_id <= hi:
            return split
    raise TaskError(f"task_id {task_id} is outside MBPP's 1..974")


def _check_row(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, kind in _TYPES.items():
        if key not in row:
            raise TaskError(f"{where}: field '{key}' missing")
        if not isinstance(row[key], kind) or (kind is int and isinstance(row[key], bool)):
            raise TaskError(f"{where}: field '{key}' is {type(row[key]).__name__}, expected {kind.__name__}")
        if kind is list and not all(isinstance(t, str) for t in row[key]):
            raise TaskError(f"{where}: field '{key}' must be a list of strings")
    if not row["test_list"]:
        raise TaskError(f"{where}: field 'test_list' is empty; a task needs at least one test")
    split = mbpp_split(row["task_id"])
    if row.get("split") is not None and row["split"] != split:
        raise TaskError(
            f"{where}: task {row['task_id']} has split {row['split']!r}, the standard split is {split!r}"
        )
    return {"split": split, **{k: row[k] for k in _TYPES}}


def _hf_files(directory: Path) -> list[Path]:
    base = directory / "full" if (directory / "full").is_dir() else directory
    files = sorted(p for p in base.glob("*.parquet") if _HF_FILE.match(p.name))
    if not files:
        raise TaskError(f"{base}: no MBPP Parquet files named like 'test-00000-of-00001.parquet'")
    return files


def read_mbpp(source: str | Path | Table) -> pa.Table:
    """Every row, checked and sorted by task_id, with its standard `split`.

    source: mbpp.jsonl (.gz), a Parquet file (e.g. the `mbpp.parquet` that data preparation writes), a folder
    with the hub's `{split}-NNNNN-of-NNNNN.parquet` files (or `full/` under it), or a loaded table.
    """
    if isinstance(source, str | Path) and Path(source).is_dir():
        parts = [(read_parquet(file), file.name) for file in _hf_files(Path(source))]
    else:
        parts = [(read_rows(source, "MBPP"), Path(source).name if isinstance(source, str | Path) else "")]
    rows = []
    for file_rows, file_name in parts:
        named = _HF_FILE.match(file_name)  # a hub file holds one split, named in its file name
        for where, row in file_rows:
            checked = _check_row(row, where)
            if named and checked["split"] != named["split"]:
                raise TaskError(f"{where}: task_id {checked['task_id']} belongs to split {checked['split']!r}")
            rows.append(checked)
    origin = "MBPP table" if isinstance(source, Table) else str(source)
    ids = [r["task_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TaskError(f"{origin}: task_id {dup} appears more than once")
    if not rows:
        raise TaskError(f"{origin}: no MBPP rows")
    rows.sort(key=lambda r: r["task_id"])
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def mbpp_prompt(text: str, tests: list[str], examples: list[dict] | tuple[dict, ...] = ()) -> str:
    """Austin et al. 2021's prompt; `examples` (rows with text, test_list, code) are shown solved first."""

    def block(t: str, asserts: list[str]) -> str:
        joined = "\n".join(a.replace("\r\n", "\n") for a in asserts)
        return (
            f"You are an expert Python programmer, and here is your task: {t.strip()} "
            f"Your code should pass these tests:\n\n{joined}\n[BEGIN]\n"
        )

    shots = "".join(
        f"{block(ex['text'], ex['test_list'])}{ex['code'].replace(chr(13) + chr(10), chr(10)).strip()}\n[DONE]\n"
        for ex in examples
    )
    return shots + block(text, tests)


def mbpp_tasks(
    source: str | Path | Table | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    shots: int = 3,
) -> TaskSet:
    """MBPP tasks of one standard split (from `read_mbpp(source)`, the shipped copy when None).

    `shots` solved prompt-split examples (tasks 2, 3, 4) precede each prompt.
    """
    if split not in MBPP_SPLITS:
        raise TaskError(f"split: expected one of {list(MBPP_SPLITS)}, got {split!r}")
    if not 0 <= shots <= len(MBPP_FEW_SHOT_IDS):
        raise TaskError(f"shots: expected 0..{len(MBPP_FEW_SHOT_IDS)}, got {shots}")
    source = BUNDLED_MBPP if source is None else source
    origin = "MBPP table" if isinstance(source, Table) else str(source)
    rows = {row["task_id"]: row for row in read_mbpp(source).to_pylist()}
    examples = []
    for ex_id in MBPP_FEW_SHOT_IDS[:shots]:
        if ex_id not in rows:
            raise TaskError(f"{origin}: shots={shots} needs prompt-split task {ex_id}, which is not in the table")
        examples.append(rows[ex_id])
    tasks = [
        Task(
            task_id=str(task_id),
            prompt=mbpp_prompt(row["text"], row["test_list"], examples),
            reference=row["code"],
            test_code=f"{row['test_setup_code']}\n" + "\n".join(row["test_list"]),
            stop=MBPP_STOP,
            prepend_prompt=False,
        )
        for task_id, row in rows.items()
        if row["split"] == split
    ]
    if not tasks:
        raise TaskError(f"{origin}: no MBPP tasks of split {split!r} (task ids {MBPP_SPLITS[split]})")
    return limit_tasks("mbpp", split, tasks, limit)
