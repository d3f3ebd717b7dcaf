"""Pydantic models of `params.yaml`, the single configuration file (DVC reads it for stage params too).

Every section forbids unknown keys, so a typo stops the run with a message naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """params.yaml is missing, malformed, or has an unknown or mistyped key."""


# Sections are added by the packages that own them (one class per asset / stage), e.g.
#   class TokenizerParams(Section): ...
# and listed as fields of `Params` below.


class Params(Section):
    """All of params.yaml. Filled in by each asset group's section."""


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {got!r})")
    return "\n".join(lines)


def load_params(path: str | Path) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(str(path), e)) from e
