"""The base of every params.yaml section model, and the path type that resolves against params.yaml.

A leaf module: the section models live beside their code (`wmtp_core/data/params.py`, `model/params.py`,
`eval/params.py`) and import only this, so `wmtp_core.config` can declare `Params` statically from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """params.yaml is missing, malformed, or has an unknown or mistyped key."""


BASE_DIR = "base_dir"  # validation-context key: the directory relative paths are resolved against


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Relative to params.yaml's directory (passed by `load_params` as validation context), made absolute."""
    value = value.expanduser()
    base = (info.context or {}).get(BASE_DIR)
    if value.is_absolute() or base is None:
        return value.absolute()
    return (Path(base) / value).resolve()


# A file or directory named in params.yaml: relative paths are relative to params.yaml, as DVC reads them.
ProjectPath = Annotated[Path, AfterValidator(_resolve)]


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
