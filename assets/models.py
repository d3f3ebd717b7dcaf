"""Models: the multi-token policy everything is fine-tuned from, and the next-token reference of Rho-1.

Both read the tokenizer asset, so a model's vocabulary is the tokenizer's by construction; the checks below
still compare them, because converted weights bring their own vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from assets._common import asset_metadata, markdown_table, materialized
from assets.sources import tokenizer
from dagster_defs.resources import ParamsResource, StorageResource
from wmtp_core import model as wm
from wmtp_core.model.convert import convert_meta, import_hf
from wmtp_core.model.gguf import import_gguf
from wmtp_core.storage import publish, verify
from wmtp_core.tokenizer import Tokenizer

GROUP = "models"
# Converters record a dict naming the source format; params.yaml names it shortly.
_SOURCE_KIND = {"meta-consolidated": "meta", "hf-llama": "hf", "gguf": "gguf"}


def _stored_tokenizer(storage: StorageResource) -> Tokenizer:
    return Tokenizer.from_directory(storage.asset_dir("sources", "tokenizer"))


def _model_metadata(out: Path, manifest: dict, tok: Tokenizer) -> dict:
    meta = wm.read_metadata(out)
    args = wm.read_args(out)
    shape = {
        k: getattr(args, k)
        for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "n_future_tokens")
    }
    preview = (
        f"`{meta['name']}` from {meta['source']}: {meta['parameter_count']:,} parameters in "
        f"{meta['tensor_count']} tensors ({meta['dtype']}), {args.n_future_tokens} output head(s); "
        f"tokenizer SHA256 `{meta.get('tokenizer_sha256')}` ({tok.vocab_size} pieces)\n\n"
        + markdown_table([{"arg": k, "value": v} for k, v in shape.items()])
    )
    out_meta = asset_metadata(out, manifest, preview=preview)
    out_meta.update(
        parameter_count=meta["parameter_count"],
        vocab_size=args.vocab_size,
        n_future_tokens=args.n_future_tokens,
        model_args=dg.MetadataValue.json(args.to_dict()),
    )
    return out_meta


def _check_model(storage: StorageResource, name: str, section: dict, source: str) -> dg.AssetCheckResult:
    """The stored model's vocabulary is the tokenizer's, and its manifest and metadata say what params.yaml says."""
    out = storage.asset_dir(GROUP, name)
    manifest = verify(out)
    tok = _stored_tokenizer(storage)
    meta = wm.read_metadata(out)
    args = wm.read_args(out)
    problems = []
    if args.vocab_size != tok.vocab_size:
        problems.append(f"model vocab_size {args.vocab_size} != tokenizer vocab_size {tok.vocab_size}")
    if meta.get("tokenizer_sha256") not in (None, tok.sha256):
        problems.append(
            f"model was made for tokenizer {meta['tokenizer_sha256']}, stored tokenizer is {tok.sha256}"
        )
    if manifest["params"] != section:
        problems.append(f"manifest params {manifest['params']} != params.yaml {name} {section}")
    recorded = meta.get("source")
    recorded = (
        _SOURCE_KIND.get(recorded["format"], recorded["format"]) if isinstance(recorded, dict) else recorded
    )
    if recorded != source:
        problems.append(f"metadata source {recorded!r} != params.yaml {name}.source {source!r}")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "model_vocab": args.vocab_size,
            "tokenizer_vocab": tok.vocab_size,
            "problems": "; ".join(problems) or "none",
        },
    )


def _write_model(storage: StorageResource, name: str, kind: str, p, convert) -> dg.MaterializeResult:
    """A micro model of `kind` sized by the stored tokenizer, or `convert(tmp, tokenizer)` for given weights."""
    tok = _stored_tokenizer(storage)
    out = storage.asset_dir(GROUP, name)

    def write(tmp: Path) -> dict:
        if p.source == "micro":
            model = wm.make_micro(kind, tok.vocab_size, p.seed)
            wm.save(model, tmp, name=name, source="micro", tokenizer_sha256=tok.sha256, extra={"seed": p.seed})
        else:
            convert(tmp, tok)
        return {"parameters": wm.read_metadata(tmp)["parameter_count"]}

    manifest = publish(out, write, params=p.model_dump(mode="json"))
    return materialized(_model_metadata(out, manifest, tok))


@dg.asset(
    group_name=GROUP,
    deps=[tokenizer],
    description="The multi-token policy fine-tuning starts from: the micro policy, Meta's weights converted, or a "
    "GGUF Llama imported with extra heads.",
)
def base_model(storage: StorageResource, params: ParamsResource) -> dg.MaterializeResult:
    p = params.load().base_model

    def convert(tmp: Path, tok) -> None:
        if p.source == "gguf":  # a GGUF Llama, heads 2..n_future added as copies of its last block
            import_gguf(
                p.gguf_file,
                tmp,
                n_future=p.n_future,
                dtype=p.dtype,
                name="base_model",
                tokenizer_sha256=tok.sha256,
            )
        else:  # Meta's consolidated.pth + params.json
            convert_meta(p.meta_dir, tmp, dtype=p.dtype, name="base_model", tokenizer=tok.path)

    return _write_model(storage, "base_model", "policy", p, convert)


@dg.asset_check(
    asset=base_model,
    blocking=True,
    description="Vocabulary matches the tokenizer; params match the stored metadata.",
)
def base_model_consistent(storage: StorageResource, params: ParamsResource) -> dg.AssetCheckResult:
    p = params.load().base_model
    return _check_model(storage, "base_model", p.model_dump(mode="json"), p.source)


@dg.asset(
    group_name=GROUP,
    deps=[tokenizer],
    description="The next-token reference model of Rho-1: the micro reference, or a Hugging Face or GGUF Llama "
    "imported.",
)
def reference_model(storage: StorageResource, params: ParamsResource) -> dg.MaterializeResult:
    p = params.load().reference_model

    def convert(tmp: Path, tok) -> None:
        if p.source == "gguf":  # a GGUF Llama, its one next-token head
            import_gguf(
                p.gguf_file,
                tmp,
                n_future=1,
                dtype=p.dtype,
                name="reference_model",
                tokenizer_sha256=tok.sha256,
            )
        else:  # a Hugging Face Llama directory
            import_hf(p.hf_dir, tmp, dtype=p.dtype, name="reference_model", tokenizer=tok.path)

    return _write_model(storage, "reference_model", "reference", p, convert)


@dg.asset_check(
    asset=reference_model,
    blocking=True,
    description="Vocabulary matches the tokenizer; params match the stored metadata.",
)
def reference_model_consistent(storage: StorageResource, params: ParamsResource) -> dg.AssetCheckResult:
    p = params.load().reference_model
    return _check_model(storage, "reference_model", p.model_dump(mode="json"), p.source)
