"""Model directories: safetensors weights (sharded with an index when large), params.json, metadata.json, SHA256SUMS.

Layout of a model directory written by `save`:

    params.json                         Meta-style ModelArgs (every field)
    model.safetensors                   or model-0000i-of-0000N.safetensors + model.safetensors.index.json
    value_head.safetensors              only when a value head is saved with the policy
    metadata.json                       name, implementation, parameter count, dtype, files, source, tokenizer, value head
    SHA256SUMS                          `sha256sum -c` format, every other file

The whole directory is written into a temporary sibling and renamed into place, so a failed write never leaves
half a checkpoint over a good one. `load` verifies every checksum and checks every key and shape against the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from tqdm import tqdm

from wmtp_core.model.args import ModelArgs
from wmtp_core.model.safetensors_file import CheckpointError, TensorSpec, read_header, write_safetensors
from wmtp_core.model.transformer import Transformer
from wmtp_core.model.value_head import ValueHead
from wmtp_core.storage import atomic_dir, sha256_file

PARAMS_FILE = "params.json"
METADATA_FILE = "metadata.json"
SUMS_FILE = "SHA256SUMS"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
VALUE_HEAD_FILE = "value_head.safetensors"
IMPLEMENTATION = "wmtp_core.model.Transformer (Meta multi-token-prediction LLaMA layout)"
FORMAT = "wmtp-model/1"
DEFAULT_SHARD_BYTES = 4 * 2**30


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype={name!r}: expected a floating point dtype such as float32, bfloat16, float16"
        )
    return dtype


def _shard_plan(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _write_sums(directory: Path) -> None:
    lines = [
        f"{sha256_file(p)}  {p.name}\n"
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != SUMS_FILE
    ]
    (directory / SUMS_FILE).write_text("".join(lines))


def write_model_dir(
    out_dir: str | Path,
    args: ModelArgs,
    specs: list[TensorSpec],
    fetch: Callable[[str], Tensor],
    *,
    name: str,
    source: Any,
    tokenizer_sha256: str | None = None,
    value_head: ValueHead | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a model directory from tensor specs, fetching each tensor only when it is written.

    Converters use this directly to stream weights from a memory-mapped source; `save` wraps it for a module.
    """
    dtypes = sorted({dtype_name(s.dtype) for s in specs})
    shards = _shard_plan(specs, max_shard_bytes)
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    total = sum(s.nbytes for s in specs)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / PARAMS_FILE).write_text(json.dumps(args.to_dict(), indent=2) + "\n")
        bar = tqdm(
            total=total, unit="B", unit_scale=True, desc=f"writing {out_dir.name}", disable=total < 2**28
        )
        with bar:
            for file_name, shard in zip(names, shards, strict=True):
                write_safetensors(tmp / file_name, shard, fetch, {"format": "pt"}, progress=bar.update)
        if len(shards) > 1:
            weight_map = {s.name: f for f, shard in zip(names, shards, strict=True) for s in shard}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        vh_info = None
        if value_head is not None:
            vh_specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in value_head.state_dict().items()]
            vh_state = value_head.state_dict()
            write_safetensors(tmp / VALUE_HEAD_FILE, vh_specs, vh_state.__getitem__, {"format": "pt"})
            vh_info = {
                "file": VALUE_HEAD_FILE,
                "class": "wmtp_core.model.ValueHead",
                "dim": value_head.dim,
                "input": "norm(h_trunk)",
                "parameter_count": sum(p.numel() for p in value_head.parameters()),
                "dtype": dtype_name(value_head.proj.weight.dtype),
            }
        metadata = {
            "format": FORMAT,
            "name": name,
            "implementation": IMPLEMENTATION,
            "parameter_count": sum(_numel(s.shape) for s in specs),
            "tensor_count": len(specs),
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "n_future_tokens": args.n_future_tokens,
            "params_file": PARAMS_FILE,
            "files": names,
            "index_file": INDEX_FILE if len(shards) > 1 else None,
            "source": source,
            "tokenizer_sha256": tokenizer_sha256,
            "value_head": vh_info,
            **(extra or {}),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        _write_sums(tmp)
    return metadata


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def save_state_dict(
    state_dict: Mapping[str, Tensor],
    args: ModelArgs,
    out_dir: str | Path,
    *,
    name: str,
    source: Any,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Save a full (gathered) state dict, e.g. from FSDP's `get_model_state_dict(full_state_dict=True)`."""
    dtype = parse_dtype(dtype)
    specs = [TensorSpec(k, tuple(v.shape), dtype or v.dtype) for k, v in state_dict.items()]
    return write_model_dir(out_dir, args, specs, state_dict.__getitem__, name=name, source=source, **kwargs)


def save(
    model: Transformer,
    out_dir: str | Path,
    *,
    value_head: ValueHead | None = None,
    name: str,
    source: Any,
    tokenizer_sha256: str | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `model` (and optionally its value head) as a model directory, replacing `out_dir` atomically."""
    return save_state_dict(
        model.state_dict(),
        model.args,
        out_dir,
        name=name,
        source=source,
        dtype=dtype,
        tokenizer_sha256=tokenizer_sha256,
        value_head=value_head,
        max_shard_bytes=max_shard_bytes,
        extra=extra,
    )


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: metadata missing; {model_dir} is not a complete model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def read_args(model_dir: str | Path) -> ModelArgs:
    return ModelArgs.from_json(Path(model_dir) / PARAMS_FILE)


def read_sums(model_dir: Path) -> dict[str, str]:
    path = model_dir / SUMS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: checksum file missing; {model_dir} is not a complete model directory")
    sums = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, file_name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CheckpointError(f"{path}:{lineno}: expected '<sha256>  <file>', got {line!r}")
        sums[file_name] = digest
    return sums


def _check_sum(model_dir: Path, file_name: str, sums: dict[str, str]) -> None:
    path = model_dir / file_name
    if file_name not in sums:
        raise CheckpointError(f"{path}: not listed in {model_dir / SUMS_FILE}")
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing (listed in {model_dir / SUMS_FILE})")
    digest = sha256_file(path)
    if digest != sums[file_name]:
        raise CheckpointError(
            f"{path}: SHA256 {digest} does not match {SUMS_FILE} ({sums[file_name]}): corrupted"
        )


def _weight_files(model_dir: Path, metadata: dict[str, Any]) -> dict[str, list[str] | None]:
    """Weight file -> the keys the index assigns to it (None for a single unindexed file)."""
    files = metadata.get("files") or []
    if metadata.get("index_file"):
        index_path = model_dir / metadata["index_file"]
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_path}: unreadable shard index ({e})") from e
        by_file: dict[str, list[str] | None] = {f: [] for f in files}
        for key, file_name in weight_map.items():
            if file_name not in by_file:
                raise CheckpointError(
                    f"{index_path}: tensor {key!r} maps to {file_name!r}, not in {METADATA_FILE}"
                )
            by_file[file_name].append(key)
        return by_file
    return {f: None for f in files}


def load_state_dict(
    model_dir: str | Path,
    expected: Mapping[str, tuple[int, ...]],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    verify: bool = True,
) -> dict[str, Tensor]:
    """Read every weight file, checking sums, keys and shapes against `expected` (key -> shape)."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    sums = read_sums(model_dir)
    if verify:
        for file_name in (PARAMS_FILE, METADATA_FILE, metadata.get("index_file")):
            if file_name:
                _check_sum(model_dir, file_name, sums)
    state: dict[str, Tensor] = {}
    where: dict[str, str] = {}
    for file_name, indexed_keys in _weight_files(model_dir, metadata).items():
        path = model_dir / file_name
        if not path.is_file():
            held = (
                f" (holds {', '.join(map(repr, indexed_keys[:3]))}{', ...' if len(indexed_keys) > 3 else ''})"
            )
            raise CheckpointError(f"{path}: shard missing{held if indexed_keys else ''}")
        specs, _ = read_header(path)
        if verify:
            _check_sum(model_dir, file_name, sums)
        for key in indexed_keys or []:
            if key not in specs:
                raise CheckpointError(f"{path}: tensor {key!r} listed in {INDEX_FILE} is not in this file")
        for key, spec in specs.items():
            if key not in expected:
                raise CheckpointError(f"{path}: unexpected tensor {key!r}; the model has no such parameter")
            if spec.shape != tuple(expected[key]):
                raise CheckpointError(
                    f"{path}: tensor {key!r} has shape {list(spec.shape)}, the model expects {list(expected[key])}"
                )
            if key in where:
                raise CheckpointError(f"{path}: tensor {key!r} also stored in {where[key]}")
            where[key] = file_name
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for key in specs:
                    t = f.get_tensor(key)
                    state[key] = t if dtype is None else t.to(dtype)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
    missing = [k for k in expected if k not in state]
    if missing:
        shown = ", ".join(map(repr, missing[:5]))
        raise CheckpointError(
            f"{model_dir}: missing tensor(s) {shown}{' ...' if len(missing) > 5 else ''} "
            f"({len(missing)} of {len(expected)}) in {', '.join(metadata.get('files') or [])}"
        )
    return state


def load(
    model_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    verify: bool = True,
) -> Transformer:
    """Load a model directory as a Transformer (weights in their stored dtype unless `dtype` is given)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: model directory does not exist")
    args = read_args(model_dir)
    with torch.device("meta"):
        model = Transformer(args)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = load_state_dict(model_dir, expected, device=device, dtype=parse_dtype(dtype), verify=verify)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def load_value_head(
    model_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    verify: bool = True,
) -> ValueHead:
    """Load the value head stored beside the policy weights; an error if the directory has none."""
    model_dir = Path(model_dir)
    info = read_metadata(model_dir).get("value_head")
    if not info:
        raise CheckpointError(f"{model_dir / METADATA_FILE}: this model directory stores no value head")
    if verify:
        _check_sum(model_dir, info["file"], read_sums(model_dir))
    with torch.device("meta"):
        head = ValueHead(int(info["dim"]))
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    path = model_dir / info["file"]
    specs, _ = read_header(path)
    for key, spec in specs.items():
        if key not in expected:
            raise CheckpointError(f"{path}: unexpected tensor {key!r}; ValueHead has no such parameter")
        if spec.shape != expected[key]:
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {list(spec.shape)}, expected {list(expected[key])}"
            )
    missing = sorted(set(expected) - set(specs))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {', '.join(map(repr, missing))}")
    dtype = parse_dtype(dtype)
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        state = {k: f.get_tensor(k) if dtype is None else f.get_tensor(k).to(dtype) for k in specs}
    head.load_state_dict(state, strict=True, assign=True)
    return head
