"""One training run, fully resolved before any process starts: recipe, config, input and output directories.

`plan_job` turns params.yaml and a storage root into a `TrainJob` and checks everything a run needs (the
critic's value head for the weighted recipes, one tokenizer for policy and reference, the input manifests), so a
wrong setting stops with a message naming it instead of failing inside torchrun. The job is written as JSON and
every rank reads the same file. The storage layout is the asset graph's: `<storage>/<group>/<asset>/`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from wmtp_core.config import Params
from wmtp_core.model.io import METADATA_FILE, read_args, read_metadata
from wmtp_core.storage import MANIFEST, StorageError, read_manifest, sha256_file
from wmtp_core.tokenizer import TokenizerError, tokenizer_file
from wmtp_core.train.data import sampled_rows
from wmtp_core.train.layout import ASSET, GROUP, MODEL_SUBDIR, START_FROM, WEIGHTED, model_dir  # noqa: F401


class TrainJobError(ValueError):
    """A training run cannot start: the message names the parameter, asset or file at fault."""


class TrainJob(BaseModel):
    """Everything a rank needs, as plain data (written to job.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: str
    asset: str
    config: dict[str, Any]  # the recipe's resolved `train.<recipe>` block
    sampling_stage: str  # stage1 (critic) or stage2
    sampling: dict[str, Any]  # that stage's sampling block, correct_only set by the recipe
    processed_dir: str
    index_file: str
    tokenizer_dir: str
    start_dir: str  # model directory training starts from (with a value head for the weighted recipes)
    reference_dir: str | None = None  # rho1: the tuned reference's model directory
    out_dir: str  # rank 0 writes model/, history.jsonl, loss_curves.png, result.json here
    checkpoint_dir: str
    tracking_uri: str | None = None
    artifact_location: str | None = None
    device: str = "cpu"
    fingerprint: str = ""  # inputs + config: a checkpoint of another fingerprint is never resumed

    @property
    def experiment(self) -> str:
        return f"wmtp/{self.recipe}"

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> TrainJob:
        return cls.model_validate_json(Path(path).read_text())


def _manifest_sha(directory: Path, what: str) -> str:
    path = directory / MANIFEST
    if not path.is_file():
        raise TrainJobError(f"{what}: {directory} has no {MANIFEST}; materialize it first")
    return sha256_file(path)


def _check_model(directory: Path, what: str) -> dict[str, Any]:
    try:
        read_manifest(directory)
        meta = read_metadata(directory)
        read_args(directory)
    except (StorageError, ValueError) as e:
        raise TrainJobError(f"{what}: {e}") from e
    return meta


def plan_job(
    recipe: str,
    params: Params,
    storage_root: str | Path,
    *,
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    device: str = "cpu",
    world_size: int = 1,
) -> TrainJob:
    """The job of `recipe` on the assets under `storage_root`, validated; raises TrainJobError naming the problem."""
    if recipe not in ASSET:
        raise TrainJobError(f"recipe {recipe!r}: expected one of {', '.join(ASSET)}")
    root = Path(storage_root).absolute()
    config = params.train.recipe(recipe)
    stage = "stage1" if recipe == "critic" else "stage2"
    sampling = getattr(params.sampling, stage).model_dump(mode="json")
    if stage == "stage2":
        # The recipe, not the sampler, decides whether incorrect rows train: the weighted recipes need them.
        sampling["correct_only"] = recipe not in WEIGHTED

    processed = root / "data" / "codecontests_processed"
    index_file = root / "data" / "codecontests_index" / "index.parquet"
    if index_file.is_file():  # the sampler's own error names the parameter; raise it before torchrun starts
        try:
            sampled_rows(index_file, stage, sampling)
        except ValueError as e:
            raise TrainJobError(f"sampling.{stage} for train.{recipe}: {e}") from e
    index_dir = root / "data" / "codecontests_index"
    tokenizer_dir = root / "sources" / "tokenizer"
    inputs = {
        "codecontests_processed": _manifest_sha(processed, "codecontests_processed"),
        "codecontests_index": _manifest_sha(index_dir, "codecontests_index"),
        "tokenizer": _manifest_sha(tokenizer_dir, "tokenizer"),
    }
    try:
        stored = tokenizer_file(tokenizer_dir)
    except TokenizerError as e:
        raise TrainJobError(f"tokenizer: {e}") from e
    tokenizer_sha = read_manifest(tokenizer_dir)["files"][stored.name]["sha256"]

    group, start_asset = START_FROM[recipe]
    start_asset_dir = root / group / start_asset
    if recipe in WEIGHTED and not (start_asset_dir / MANIFEST).is_file():
        raise TrainJobError(
            f"train.{recipe} starts from the critic, but {start_asset_dir} holds none: materialize `critic` first"
        )
    start = model_dir(start_asset_dir)
    inputs[start_asset] = _manifest_sha(start_asset_dir, start_asset)
    start_meta = _check_model(start, start_asset)
    if recipe in WEIGHTED and not start_meta.get("value_head"):
        raise TrainJobError(
            f"train.{recipe} needs the critic's value head, but {start / METADATA_FILE} records none"
        )
    vocab = read_args(start).vocab_size
    _same_tokenizer(start_asset, start_meta, vocab, tokenizer_sha, None)

    reference = None
    if recipe == "rho1":
        ref_asset_dir = root / GROUP / ASSET["reference"]
        if not (ref_asset_dir / MANIFEST).is_file():
            raise TrainJobError(
                f"train.rho1 scores tokens against the tuned reference, but {ref_asset_dir} holds none: "
                "materialize `reference_tuned` first"
            )
        reference = model_dir(ref_asset_dir)
        inputs["reference_tuned"] = _manifest_sha(ref_asset_dir, "reference_tuned")
        ref_meta = _check_model(reference, "reference_tuned")
        ref_vocab = read_args(reference).vocab_size
        if ref_vocab != vocab:
            raise TrainJobError(
                f"rho1: the reference {reference} has vocab_size {ref_vocab}, the policy {start} has {vocab}: "
                "Rho-1 compares per-token losses, so both must use the same tokenizer"
            )
        _same_tokenizer("reference_tuned", ref_meta, ref_vocab, tokenizer_sha, start_meta.get("tokenizer_sha256"))

    fingerprint_src = {
        "recipe": recipe,
        "config": config.model_dump(mode="json"),
        "sampling": sampling,
        "inputs": inputs,
        "world_size": world_size,
    }
    fingerprint = hashlib.sha256(json.dumps(fingerprint_src, sort_keys=True).encode()).hexdigest()[:16]
    return TrainJob(
        recipe=recipe,
        asset=ASSET[recipe],
        config=config.model_dump(mode="json"),
        sampling_stage=stage,
        sampling=sampling,
        processed_dir=str(processed),
        index_file=str(index_file),
        tokenizer_dir=str(tokenizer_dir),
        start_dir=str(start),
        reference_dir=str(reference) if reference else None,
        out_dir=str(Path(out_dir).absolute()),
        checkpoint_dir=str(Path(checkpoint_dir or root / "checkpoints" / ASSET[recipe]).absolute()),
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        device=device,
        fingerprint=fingerprint,
    )


def _same_tokenizer(what: str, meta: dict, vocab: int, tokenizer_sha: str | None, policy_sha: str | None) -> None:
    """A model made for another tokenizer would train on ids that mean other pieces."""
    recorded = meta.get("tokenizer_sha256")
    for expected, whose in ((tokenizer_sha, "the stored tokenizer"), (policy_sha, "the policy's tokenizer")):
        if recorded and expected and recorded != expected:
            raise TrainJobError(
                f"{what}: made for tokenizer SHA256 {recorded}, but {whose} is {expected}; "
                "policy, reference and data must share one tokenizer"
            )

