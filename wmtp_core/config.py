"""`params.yaml`, the single configuration file, as one pydantic model (DVC reads the same file for stage params).

Every section forbids unknown keys, so a typo stops the run with a message naming the key. Each asset reads
the section named after it (or after its group, for families of assets such as the evaluations); the generated
`dvc.yaml` lists that same section as the stage's params, so editing it re-runs exactly that asset and its
descendants. Every path in the file is relative to the file itself and is resolved once, here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from wmtp_core.data.params import (
    CodecontestsIndexParams,
    CodecontestsProcessedParams,
    CodeContestsRawParams,
    HumanevalProcessedParams,
    MbppProcessedParams,
    SamplingParams,
    TokenizerParams,
)
from wmtp_core.eval.params import EvaluationParams, ExperimentReportParams
from wmtp_core.model.params import BaseModelParams, ReferenceModelParams
from wmtp_core.section import BASE_DIR, ConfigError, Section, format_validation_error
from wmtp_core.train.params import TrainParams

__all__ = [
    "ConfigError",
    "Params",
    "Section",
    "format_validation_error",
    "load_params",
    "params_file",
    "project_dir",
]

DEFAULT_PARAMS = "params.yaml"
PARAMS_ENV = "WMTP_PARAMS"  # another params file for every command, e.g. presets/7b_1t_4.yaml


class Params(Section):
    """All of params.yaml: one section per asset (or family of assets), named like it."""

    codecontests_raw: CodeContestsRawParams = Field(default_factory=CodeContestsRawParams)
    tokenizer: TokenizerParams = Field(default_factory=TokenizerParams)
    base_model: BaseModelParams = Field(default_factory=BaseModelParams)
    reference_model: ReferenceModelParams = Field(default_factory=ReferenceModelParams)
    codecontests_processed: CodecontestsProcessedParams = Field(default_factory=CodecontestsProcessedParams)
    codecontests_index: CodecontestsIndexParams = Field(default_factory=CodecontestsIndexParams)
    mbpp_processed: MbppProcessedParams = Field(default_factory=MbppProcessedParams)
    humaneval_processed: HumanevalProcessedParams = Field(default_factory=HumanevalProcessedParams)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams)
    experiment_report: ExperimentReportParams = Field(default_factory=ExperimentReportParams)


def load_params(path: str | Path) -> Params:
    """Validated params.yaml, with every relative path in it resolved against the file's directory."""
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
        return Params.model_validate(raw, context={BASE_DIR: path.absolute().parent})
    except ValidationError as e:
        raise ConfigError(format_validation_error(str(path), e)) from e


def project_dir(start: str | Path | None = None) -> Path:
    """The project root: `WMTP_ROOT` if set, else the nearest directory at or above `start` (default: the
    current one) that holds params.yaml, else `start` itself."""
    if env := os.environ.get("WMTP_ROOT"):
        return Path(env).absolute()
    here = Path(start or Path.cwd()).absolute()
    for d in (here, *here.parents):
        if (d / DEFAULT_PARAMS).is_file():
            return d
    return here


def params_file(root: str | Path | None = None) -> Path:
    """The params file commands read unless told otherwise: `$WMTP_PARAMS` (absolute, or relative to the
    project root) or the project's params.yaml. A preset chosen so leaves the committed params.yaml as is."""
    root = Path(root).absolute() if root else project_dir()
    if env := os.environ.get(PARAMS_ENV):
        path = Path(env).expanduser()
        return path if path.is_absolute() else root / path
    return root / DEFAULT_PARAMS
