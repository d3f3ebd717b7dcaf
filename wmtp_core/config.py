"""Pydantic models of `params.yaml`, the single configuration file (DVC reads it for stage params too).

Every section forbids unknown keys, so a typo stops the run with a message naming the key. Each asset reads
the section named after it (or after its group, for families of assets such as the evaluations); the generated
`dvc.yaml` lists that same section as the stage's params, so editing it re-runs exactly that asset and its
descendants.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """params.yaml is missing, malformed, or has an unknown or mistyped key."""


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CodeContestsRawParams(Section):
    """Source rows of CodeContests. `path: null` uses the demo set shipped with wmtp_core.

    Otherwise `path` is a directory holding the published Parquet files (`{split}-NNNNN-of-NNNNN.parquet`,
    directly or under `data/`), e.g. a download of the Hugging Face dataset deepmind/code_contests.
    """

    path: str | None = Field(None, description="directory of the published Parquet files; null = demo set")
    splits: list[Literal["train", "valid", "test"]] = Field(
        default_factory=lambda: ["train", "valid", "test"], min_length=1
    )
    check_limit: int | None = Field(
        None, ge=1, description="problems whose solutions the label check runs (first rows); null = all"
    )
    check_timeout: float = Field(
        5.0, gt=0, description="seconds per solution run when the labels are checked"
    )


class TokenizerParams(Section):
    """A given SentencePiece model checked by SHA256, or (path: null) one trained on the raw rows' text."""

    path: str | None = Field(
        None, description="SentencePiece .model file; null = train one on codecontests_raw"
    )
    sha256: str | None = Field(None, description="required with `path`: the file's expected SHA256")
    vocab_size: int = Field(
        1024, ge=260, description="pieces of a trained tokenizer (256 bytes + specials + merges)"
    )

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v.lower()):
            raise ValueError(f"expected 64 hexadecimal digits, got {v!r}")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _given_needs_sha(self) -> TokenizerParams:
        if self.path is not None and self.sha256 is None:
            raise ValueError(
                "tokenizer.path is set, so tokenizer.sha256 must be set too (the file is verified)"
            )
        return self


class BaseModelParams(Section):
    """The policy everything is fine-tuned from: the micro multi-token policy, or Meta's weights converted."""

    source: Literal["micro", "meta"] = "micro"
    meta_dir: str | None = Field(
        None, description="with source: meta, the directory of consolidated.pth + params.json"
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        "bfloat16",
        description="weights dtype of a conversion; null keeps the stored one (micro models are float32)",
    )
    seed: int = Field(0, description="initialisation seed of the micro policy")

    @model_validator(mode="after")
    def _dir_for_meta(self) -> BaseModelParams:
        if self.source == "meta" and not self.meta_dir:
            raise ValueError(
                "base_model.source is 'meta', so base_model.meta_dir must name the weights directory"
            )
        return self


class ReferenceModelParams(Section):
    """The next-token reference model of Rho-1: the micro reference, or a Hugging Face Llama imported."""

    source: Literal["micro", "hf"] = "micro"
    hf_dir: str | None = Field(
        None, description="with source: hf, a local Hugging Face Llama checkpoint directory"
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        "bfloat16",
        description="weights dtype of the import; null keeps the stored one (micro models are float32)",
    )
    seed: int = Field(1, description="initialisation seed of the micro reference")

    @model_validator(mode="after")
    def _dir_for_hf(self) -> ReferenceModelParams:
        if self.source == "hf" and not self.hf_dir:
            raise ValueError(
                "reference_model.source is 'hf', so reference_model.hf_dir must name the checkpoint"
            )
        return self


@functools.cache
def _build_params() -> type[Section]:
    """The root model: one field per section. Built on first use because the data and evaluation sections live
    beside their code (wmtp_core/data/params.py, wmtp_core/eval/params.py) and import `Section` from here."""
    from wmtp_core.data.params import (
        CodecontestsIndexParams,
        CodecontestsProcessedParams,
        HumanevalProcessedParams,
        MbppProcessedParams,
        SamplingParams,
    )
    from wmtp_core.eval.params import EvaluationParams, ExperimentReportParams

    sections: dict[str, type[Section]] = {
        "codecontests_raw": CodeContestsRawParams,
        "tokenizer": TokenizerParams,
        "base_model": BaseModelParams,
        "reference_model": ReferenceModelParams,
        "codecontests_processed": CodecontestsProcessedParams,
        "codecontests_index": CodecontestsIndexParams,
        "mbpp_processed": MbppProcessedParams,
        "humaneval_processed": HumanevalProcessedParams,
        "sampling": SamplingParams,
        "evaluation": EvaluationParams,
        "experiment_report": ExperimentReportParams,
    }
    return create_model(
        "Params",
        __base__=Section,
        __doc__="All of params.yaml: one section per asset (or family of assets), named like it.",
        __module__=__name__,
        **{name: (cls, Field(default_factory=cls)) for name, cls in sections.items()},
    )


def __getattr__(name: str) -> Any:
    if name == "Params":
        return _build_params()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key")
        elif e["type"] == "value_error":
            lines.append(f"  - {key or '(section)'}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {got!r})")
    return "\n".join(lines)


def load_params(path: str | Path) -> Any:
    """Validated params.yaml as a `Params` instance (attribute per section)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}"
        )
    try:
        return _build_params().model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(str(path), e)) from e
