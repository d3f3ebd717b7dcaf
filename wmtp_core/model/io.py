"""Model directories: safetensors weights (sharded with an index when large), params.json, metadata.json and
MANIFEST.json, the one integrity file.

Layout of a model directory written by `save`:

    params.json                         Meta-style ModelArgs (every field)
    model.safetensors                   or model-0000i-of-0000N.safetensors + model.safetensors.index.json
    value_head.safetensors              only when a value head is saved with the policy
    metadata.json                       name, implementation, parameter count, dtype, files, source, tokenizer, value head
    MANIFEST.json                       wmtp_core.storage's manifest: SHA256 and size of every file, counts

MANIFEST.json is the directory's one integrity file, the same as every asset directory's: inside an asset,
`storage.publish` adds the asset's params and counts to it rather than writing a second one. The whole
directory is written into a temporary sibling and renamed into place, so a failed write never leaves half a
checkpoint over a good one. `load` verifies every SHA256 once (`verify=False` when the caller just did) and
checks every key and shape against the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from tqdm import tqdm

from wmtp_core import storage
from wmtp_core.model.args import ModelArgs
from wmtp_core.model.safetensors_file import CheckpointError, TensorSpec, read_header, write_safetensors
from wmtp_core.model.transformer import Transformer
from wmtp_core.model.value_head import ValueHead
from wmtp_core.storage import atomic_dir, write_manifest

PARAMS_FILE = "params.json"
METADATA_FILE = "metadata.json"
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
        write_manifest(tmp, counts={"parameters": metadata["parameter_count"], "tensors": len(specs)})
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


def check_integrity(model_dir: str | Path, files: Iterable[str] | None = None) -> dict[str, Any]:
    """`storage.verify` of a model directory (every file, or only `files`), raising CheckpointError naming the
    missing, resized, changed or unlisted file. Returns the manifest."""
    try:
        return storage.verify(model_dir, files)
    except storage.StorageError as e:
        raise CheckpointError(str(e)) from e


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
    """Read every weight file, checking SHA256 (unless `verify=False`), keys and shapes against `expected`."""
    model_dir = Path(model_dir)
    if verify:
        check_integrity(model_dir)
    metadata = read_metadata(model_dir)
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
    """Load a model directory as a Transformer (weights in their stored dtype unless `dtype` is given).

    Every file is checked against MANIFEST.json first; `verify=False` skips that hash for a caller that has just
    verified the directory itself.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: model directory does not exist")
    if verify:
        check_integrity(model_dir)
    args = read_args(model_dir)
    with torch.device("meta"):
        model = Transformer(args)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = load_state_dict(model_dir, expected, device=device, dtype=parse_dtype(dtype), verify=False)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def load_value_head(
    model_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    verify: bool = True,
) -> ValueHead:
    """Load the value head stored beside the policy weights; an error if the directory has none.

    Only metadata.json and the value head's file are checked against MANIFEST.json, not the policy weights.
    """
    model_dir = Path(model_dir)
    info = read_metadata(model_dir).get("value_head")
    if not info:
        raise CheckpointError(f"{model_dir / METADATA_FILE}: this model directory stores no value head")
    if verify:
        check_integrity(model_dir, [METADATA_FILE, info["file"]])
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
