"""`codecontests_processed`: one training row per Python solution of the published CodeContests files.

Splits are processed test, valid, train so a problem already seen in an evaluation split (same name or same
normalized description) is dropped from the later split and counted: no problem appears in two splits.
Everything that cannot be trained on is dropped and counted in the stats, never silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from wmtp_core.data import codecontests as cc
from wmtp_core.data.codecontests_schema import DIFFICULTIES, PYTHON_LANGUAGES
from wmtp_core.data.prompts import (
    PROMPT_TEMPLATE,
    encode_prompts,
    encode_responses,
    format_examples,
    normalized_text_hash,
)
from wmtp_core.storage import atomic_dir, write_manifest

PROCESSING_ORDER = ("test", "valid", "train")

PROCESSED_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64(), metadata={"doc": "position of the row in this split's file"}),
        pa.field("task_id", pa.string(), metadata={"doc": "{name}_correct_{i} / {name}_incorrect_{i}, i = index in the source list"}),
        pa.field("problem_id", pa.string(), metadata={"doc": "CodeContests problem name"}),
        pa.field("is_correct", pa.bool_()),
        pa.field("instruction", pa.string(), metadata={"doc": "problem description"}),
        pa.field("input", pa.string(), metadata={"doc": "up to max_public_tests public tests, formatted"}),
        pa.field("output", pa.string(), metadata={"doc": "the solution"}),
        pa.field("language", pa.int64(), metadata={"doc": "1 PYTHON or 3 PYTHON3"}),
        pa.field("difficulty", pa.int64()),
        pa.field("source", pa.int64()),
        pa.field("cf_rating", pa.int32()),
        pa.field("n_tokens", pa.int32(), metadata={"doc": "BOS + prompt template + output + EOS"}),
    ]
)

# Descriptions and examples repeat for every solution of a problem: dictionary pages keep them once per row group.
_DICTIONARY_COLUMNS = ["problem_id", "instruction", "input"]


def open_processed_writer(path: Path, compression: str = "lz4") -> pq.ParquetWriter:
    return pq.ParquetWriter(path, PROCESSED_SCHEMA, compression=compression, use_dictionary=_DICTIONARY_COLUMNS,
                            write_statistics=["row_id"])  # fmt: skip


def _new_counts() -> dict[str, int]:
    keys = ("problems", "rows", "correct", "incorrect", "non_python", "dropped_empty", "dropped_duplicate",
            "dropped_too_long", "dropped_cross_split_problems", "dropped_cross_split_rows")  # fmt: skip
    return dict.fromkeys(keys, 0)


class _SplitWriter:
    """Streams rows of one split into `{split}.parquet`, deduplicating and length-filtering on the way."""

    def __init__(self, path: Path, tokenizer, max_tokens: int, max_public_tests: int, row_group_size: int,
                 compression: str):  # fmt: skip
        self.writer = open_processed_writer(path, compression)
        self.tokenizer, self.max_tokens, self.row_group_size = tokenizer, max_tokens, row_group_size
        self.max_public_tests = max_public_tests
        self.pending: dict[str, list] = {f.name: [] for f in PROCESSED_SCHEMA}
        self.seen: set[bytes] = set()
        self.counts = _new_counts()
        self.n_tokens: list[np.ndarray] = []
        self.is_correct: list[np.ndarray] = []
        self.difficulty: dict[str, int] = {}

    def add_problem(self, problem: dict[str, Any]) -> None:
        tests = problem["public_tests"] or {}
        examples = format_examples(tests.get("input") or [], tests.get("output") or [], self.max_public_tests)
        rows = []
        for is_correct, field, label in ((True, "solutions", "correct"), (False, "incorrect_solutions", "incorrect")):
            listed = problem[field]
            for i, (language, solution) in enumerate(zip(listed["language"], listed["solution"], strict=True)):
                if language not in PYTHON_LANGUAGES:
                    self.counts["non_python"] += 1
                    continue
                if solution is None or not solution.strip():
                    self.counts["dropped_empty"] += 1
                    continue
                key = hashlib.blake2b(f"{problem['name']}\0{is_correct}\0{solution}".encode(), digest_size=12).digest()
                if key in self.seen:
                    self.counts["dropped_duplicate"] += 1
                    continue
                self.seen.add(key)
                rows.append((f"{problem['name']}_{label}_{i}", is_correct, solution, language))
        self.counts["problems"] += 1
        if not rows:
            return
        prompt_len = len(encode_prompts(self.tokenizer, [problem["description"]], [examples])[0])
        lengths = np.array([prompt_len + len(r) for r in encode_responses(self.tokenizer, [r[2] for r in rows])])
        keep = lengths <= self.max_tokens
        self.counts["dropped_too_long"] += int((~keep).sum())
        kept = [r for r, k in zip(rows, keep, strict=True) if k]
        if not kept:
            return
        start = self.counts["rows"]
        p = self.pending
        p["row_id"].extend(range(start, start + len(kept)))
        for task_id, is_correct, solution, language in kept:
            p["task_id"].append(task_id)
            p["is_correct"].append(is_correct)
            p["output"].append(solution)
            p["language"].append(language)
        for name, value in (("problem_id", problem["name"]), ("instruction", problem["description"]),
                            ("input", examples), ("difficulty", problem["difficulty"]), ("source", problem["source"]),
                            ("cf_rating", problem["cf_rating"])):  # fmt: skip
            p[name].extend([value] * len(kept))
        p["n_tokens"].extend(lengths[keep].tolist())
        n_correct = sum(r[1] for r in kept)
        self.counts["rows"] += len(kept)
        self.counts["correct"] += n_correct
        self.counts["incorrect"] += len(kept) - n_correct
        self.n_tokens.append(lengths[keep].astype(np.int32))
        self.is_correct.append(np.array([r[1] for r in kept], dtype=bool))
        name = DIFFICULTIES.get(problem["difficulty"], str(problem["difficulty"]))
        self.difficulty[name] = self.difficulty.get(name, 0) + len(kept)
        if len(p["row_id"]) >= self.row_group_size:
            self.flush()

    def flush(self) -> None:
        if self.pending["row_id"]:
            self.writer.write_table(pa.table(self.pending, schema=PROCESSED_SCHEMA), row_group_size=self.row_group_size)
            self.pending = {f.name: [] for f in PROCESSED_SCHEMA}

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    qs = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}
    out = {k: float(np.percentile(values, q)) for k, q in qs.items()}
    return {"min": int(values.min()), **out, "max": int(values.max()), "mean": float(values.mean())}


def write_histogram(path: Path, lengths: np.ndarray, correct: np.ndarray, max_tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    bins = np.linspace(0, max_tokens, 51)
    ax.hist([lengths[correct], lengths[~correct]], bins=bins, label=["correct", "incorrect"], stacked=True)
    ax.set_xlabel("n_tokens (prompt + solution + EOS)")
    ax.set_ylabel("rows")
    ax.set_title("codecontests_processed: token lengths, all splits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_processed(source_dir: str | Path, out_dir: Path, tokenizer, *, max_tokens: int = 2048,
                    max_public_tests: int = 2, row_group_size: int = 4096, compression: str = "lz4",
                    progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Write `{split}.parquet`, `schema.json`, `stats.json` and `n_tokens_hist.png` into `out_dir`; return stats."""
    files = cc.find_split_files(source_dir)
    eval_names: set[str] = set()
    eval_descriptions: set[str] = set()
    stats: dict[str, Any] = {"splits": {}, "max_tokens": max_tokens, "tokenizer_sha256": tokenizer.sha256}
    all_lengths, all_correct = [], []
    for split in PROCESSING_ORDER:
        writer = _SplitWriter(out_dir / f"{split}.parquet", tokenizer, max_tokens, max_public_tests, row_group_size,
                              compression)  # fmt: skip
        names, descriptions = set(), set()
        bar = tqdm(total=cc.count_rows(files[split]), desc=f"codecontests {split}", unit="problem", disable=not progress)
        try:
            for path in files[split]:
                for batch in cc.read_batches(path):
                    for problem in batch.to_pylist():
                        bar.update(1)
                        digest = normalized_text_hash(problem["description"])
                        if problem["name"] in eval_names or digest in eval_descriptions:
                            writer.counts["dropped_cross_split_problems"] += 1
                            writer.counts["dropped_cross_split_rows"] += sum(
                                lang in PYTHON_LANGUAGES
                                for lang in problem["solutions"]["language"] + problem["incorrect_solutions"]["language"]
                            )
                            continue
                        names.add(problem["name"])
                        descriptions.add(digest)
                        writer.add_problem(problem)
        finally:
            writer.close()
            bar.close()
        eval_names |= names
        eval_descriptions |= descriptions
        lengths = np.concatenate(writer.n_tokens) if writer.n_tokens else np.zeros(0, np.int32)
        correct = np.concatenate(writer.is_correct) if writer.is_correct else np.zeros(0, bool)
        all_lengths.append(lengths)
        all_correct.append(correct)
        stats["splits"][split] = {
            **writer.counts,
            "source_files": [p.name for p in files[split]],
            "difficulty": dict(sorted(writer.difficulty.items())),
            "n_tokens": _percentiles(lengths),
            "n_tokens_correct": _percentiles(lengths[correct]),
            "n_tokens_incorrect": _percentiles(lengths[~correct]),
        }
    lengths, correct = np.concatenate(all_lengths), np.concatenate(all_correct)
    stats["total"] = {k: sum(s[k] for s in stats["splits"].values()) for k in _new_counts()}
    stats["total"]["n_tokens"] = _percentiles(lengths)
    write_histogram(out_dir / "n_tokens_hist.png", lengths, correct, max_tokens)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out_dir / "schema.json").write_text(json.dumps(schema_description(), indent=2) + "\n")
    return stats


def schema_description() -> dict[str, Any]:
    columns = [
        {"name": f.name, "type": str(f.type), "doc": (f.metadata or {}).get(b"doc", b"").decode()}
        for f in PROCESSED_SCHEMA
    ]
    return {"columns": columns, "prompt_template": PROMPT_TEMPLATE, "files": "{split}.parquet"}


def prepare_codecontests(source_dir: str | Path, out_dir: str | Path, tokenizer, *, with_index: bool = True,
                         params: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Process the published files in `source_dir` into `out_dir`, atomically, with a manifest; returns stats."""
    from wmtp_core.data.index import INDEX_FILE, build_index

    with atomic_dir(out_dir) as tmp:
        stats = write_processed(source_dir, tmp, tokenizer, **options)
        if with_index:
            build_index(tmp, tmp / INDEX_FILE)
        counts = {f"{split}_rows": s["rows"] for split, s in stats["splits"].items()}
        write_manifest(tmp, params={**(params or {}), **options}, counts=counts,
                       extra={"tokenizer_sha256": tokenizer.sha256})  # fmt: skip
    return stats


def validate_processed(out_dir: str | Path, max_tokens: int, splits: tuple[str, ...] = cc.SPLITS) -> list[str]:
    """What is wrong with processed split files, as one message per problem (an empty list when nothing is).

    Each split file has PROCESSED_SCHEMA, `row_id` equal to the row position, unique task ids, no row above
    `max_tokens`, no empty output; and no problem appears in two splits.
    """
    out_dir = Path(out_dir)
    problems, names = [], {}
    for split in splits:
        path = out_dir / f"{split}.parquet"
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if pq.read_schema(path).remove_metadata() != PROCESSED_SCHEMA.remove_metadata():
            problems.append(f"{path.name}: schema differs from PROCESSED_SCHEMA")
            continue
        t = pq.read_table(path, columns=["row_id", "task_id", "problem_id", "n_tokens", "output"])
        if t["row_id"].to_pylist() != list(range(t.num_rows)):
            problems.append(f"{path.name}: row_id is not the row position")
        if len(set(t["task_id"].to_pylist())) != t.num_rows:
            problems.append(f"{path.name}: duplicate task_id")
        if t.num_rows and max(t["n_tokens"].to_pylist()) > max_tokens:
            problems.append(f"{path.name}: a row exceeds max_tokens={max_tokens}")
        if any(not s.strip() for s in t["output"].to_pylist()):
            problems.append(f"{path.name}: empty or whitespace-only output")
        names[split] = set(t["problem_id"].to_pylist())
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        shared = names.get(a, set()) & names.get(b, set())
        if shared:
            problems.append(f"problems in both {a} and {b}: {sorted(shared)[:5]}")
    return problems
