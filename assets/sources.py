"""Sources: the CodeContests rows as published, and the tokenizer every model and data asset agrees on."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from assets._common import asset_metadata, markdown_table, materialized
from dagster_defs.resources import ParamsResource, StorageResource
from wmtp_core.data import demo
from wmtp_core.data.codecontests import (
    check_schema,
    count_rows,
    count_solutions,
    find_split_files,
    read_problems,
    tokenizer_corpus,
)
from wmtp_core.data.codecontests_schema import DIFFICULTIES, SCHEMA
from wmtp_core.data.labels import check_labels
from wmtp_core.storage import publish, read_manifest, verify
from wmtp_core.tokenizer import SENTENCEPIECE, TOKENIZER_FILES, Tokenizer, TokenizerError, train_tokenizer

GROUP = "sources"


def _raw_rows(directory: Path, limit: int | None = None) -> pa.Table:
    """Rows of the stored raw asset (verified first), split by split; the first `limit` rows when given."""
    verify(directory)
    return read_problems(directory, limit)


@dg.asset(
    group_name=GROUP,
    metadata={"dvc/deps": ["wmtp_core/data/demo"]},
    description="CodeContests rows in the hub's Parquet schema: the shipped demo set, or the published files.",
)
def codecontests_raw(storage: StorageResource, params: ParamsResource) -> dg.MaterializeResult:
    p = params.load().codecontests_raw
    out = storage.asset_dir(GROUP, "codecontests_raw")
    if p.path is None:
        tables = demo.demo_tables()
        missing = [s for s in p.splits if s not in tables]
        if missing:
            raise ValueError(f"codecontests_raw.splits: the demo set has no split {missing}")

        def write(tmp: Path) -> dict:
            for split in p.splits:
                pq.write_table(tables[split], tmp / demo.hub_file_name(split))
            return {f"rows_{s}": tables[s].num_rows for s in p.splits}
    else:
        found = find_split_files(p.path)
        missing = [s for s in p.splits if not found[s]]
        if missing:
            raise FileNotFoundError(
                f"codecontests_raw.path {p.path}: no Parquet files for split(s) {missing}"
            )
        for split in p.splits:
            for f in found[split]:
                check_schema(f, pq.read_schema(f))

        def write(tmp: Path) -> dict:
            counts = {}
            for split in p.splits:
                for f in found[split]:
                    shutil.copyfile(f, tmp / f.name)
                counts[f"rows_{split}"] = sum(pq.ParquetFile(f).metadata.num_rows for f in found[split])
            return counts

    manifest = publish(out, write, params=p.model_dump(mode="json"))
    preview = markdown_table(
        [
            {
                "name": r["name"],
                "difficulty": DIFFICULTIES.get(r["difficulty"], r["difficulty"]),
                "public tests": len(r["public_tests"]["input"]),
                "private tests": len(r["private_tests"]["input"]),
                "correct": len(r["solutions"]["solution"]),
                "incorrect": len(r["incorrect_solutions"]["solution"]),
                "description": r["description"],
            }
            for r in _raw_rows(out, limit=8).to_pylist()
        ]
    )
    meta = asset_metadata(
        out, {**manifest, "counts": {**manifest["counts"], **count_solutions(out)}}, preview=preview
    )
    return materialized(meta)


@dg.asset_check(
    asset=codecontests_raw,
    blocking=True,
    description="Every Python solution, run on its tests in the sandbox, agrees with its label.",
)
def codecontests_labels_agree(storage: StorageResource, params: ParamsResource) -> dg.AssetCheckResult:
    p = params.load().codecontests_raw
    directory = storage.asset_dir(GROUP, "codecontests_raw")
    table = _raw_rows(directory, limit=p.check_limit)
    # Solutions are untrusted code (real CodeContests rows included): check_labels runs them in the sandbox.
    disagreements = check_labels(table, timeout_s=p.check_timeout, progress=False)
    return dg.AssetCheckResult(
        passed=not disagreements,
        metadata={
            "problems_checked": table.num_rows,
            "problems": count_rows([p for paths in find_split_files(directory).values() for p in paths]),
            "disagreements": len(disagreements),
            "details": dg.MetadataValue.md("\n".join(f"- {d}" for d in disagreements[:50]) or "_none_"),
        },
    )


@dg.asset_check(
    asset=codecontests_raw,
    blocking=True,
    description="The stored files have the published CodeContests schema.",
)
def codecontests_schema_matches(storage: StorageResource) -> dg.AssetCheckResult:
    directory = storage.asset_dir(GROUP, "codecontests_raw")
    verify(directory)
    bad = {}
    for paths in find_split_files(directory).values():
        for path in paths:
            schema = pq.read_schema(path)
            missing = [n for n in SCHEMA.names if schema.get_field_index(n) < 0]
            if missing:
                bad[path.name] = f"missing {missing}"
    return dg.AssetCheckResult(passed=not bad, metadata={"problems": dg.MetadataValue.json(bad)})


@dg.asset(
    group_name=GROUP,
    deps=[codecontests_raw],
    description=(
        "The tokenizer: a given SentencePiece .model, GGUF file (its byte-level BPE, stored as a canonical "
        "tokenizer.json) or such tokenizer.json, checked by SHA256; or a SentencePiece model trained on the raw "
        "rows' text."
    ),
)
def tokenizer(storage: StorageResource, params: ParamsResource) -> dg.MaterializeResult:
    p = params.load().tokenizer
    out = storage.asset_dir(GROUP, "tokenizer")
    if p.path is not None:
        given = Tokenizer(p.path, expected_sha256=p.sha256)  # fails naming the file before storage is touched

        def write(tmp: Path) -> dict:
            given.save(tmp)
            return {"vocab_size": given.vocab_size}
    else:
        raw = storage.asset_dir(GROUP, "codecontests_raw")
        verify(raw)
        texts = tokenizer_corpus(raw)

        def write(tmp: Path) -> dict:
            train_tokenizer(texts, tmp / TOKENIZER_FILES[SENTENCEPIECE], p.vocab_size)
            return {"vocab_size": p.vocab_size, "training_texts": len(texts)}

    manifest = publish(out, write, params=p.model_dump(mode="json"))
    tok = Tokenizer.from_directory(out)
    sample = "def solve(n):\n    return sum(range(n + 1))\n"
    ids = tok.encode(sample)
    preview = (
        f"{'given' if p.path else 'trained'} {tok.kind} tokenizer `{tok.path.name}`, {tok.vocab_size} pieces, "
        f"SHA256 `{tok.sha256}`\n\n"
        f"bos {tok.bos_id}, eos {tok.eos_id}, pad {tok.pad_id}; `{sample.strip()!r}` -> {len(ids)} tokens:\n\n"
        + markdown_table([{"id": i, "piece": tok.id_to_piece(i)} for i in ids[:24]])
    )
    meta = asset_metadata(out, manifest, preview=preview)
    meta["sha256"] = tok.sha256
    meta["vocab_size"] = tok.vocab_size
    meta["kind"] = tok.kind
    return materialized(meta)


@dg.asset_check(
    asset=tokenizer, blocking=True, description="The stored tokenizer is what params.yaml asks for."
)
def tokenizer_matches_params(storage: StorageResource, params: ParamsResource) -> dg.AssetCheckResult:
    p = params.load().tokenizer
    directory = storage.asset_dir(GROUP, "tokenizer")
    manifest = read_manifest(directory)
    try:
        tok = Tokenizer.from_directory(directory)  # checks the file's identity against the manifest's SHA256
    except TokenizerError as e:
        return dg.AssetCheckResult(passed=False, metadata={"error": str(e)})
    problems = []
    if manifest["params"] != p.model_dump(mode="json"):
        problems.append(
            f"manifest params {manifest['params']} != params.yaml tokenizer {p.model_dump(mode='json')}"
        )
    if p.sha256 is not None and tok.sha256 != p.sha256:
        problems.append(f"SHA256 {tok.sha256} != tokenizer.sha256 {p.sha256}")
    if p.path is None and tok.vocab_size != p.vocab_size:
        problems.append(f"vocab_size {tok.vocab_size} != tokenizer.vocab_size {p.vocab_size}")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "kind": tok.kind,
            "vocab_size": tok.vocab_size,
            "sha256": tok.sha256,
            "problems": "; ".join(problems) or "none",
        },
    )
