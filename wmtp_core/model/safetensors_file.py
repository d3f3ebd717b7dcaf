"""Streaming safetensors writer and a header reader that names the file and tensor at fault.

`safetensors.torch.save_file` serialises a whole file's tensors in memory first; converting a 13 GB checkpoint
must not hold a second copy of the weights, so this writer emits the header from shapes alone and then streams
one tensor at a time (from an mmap'd source the bytes go straight from the page cache to the file).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from wmtp_core.storage import StorageError

DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPES_BY_CODE = {code: dtype for dtype, code in DTYPE_CODES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(StorageError):
    """A checkpoint file is missing, damaged, or does not fit the model it should hold."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def write_safetensors(
    path: Path,
    specs: Iterable[TensorSpec],
    fetch: Callable[[str], Tensor],
    metadata: dict[str, str] | None = None,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Write `specs` to `path`, asking `fetch(name)` for each tensor only when its bytes are due."""
    specs = list(specs)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for spec in specs:
        if spec.dtype not in DTYPE_CODES:
            raise CheckpointError(f"{path}: tensor {spec.name!r} has unsupported dtype {spec.dtype}")
        header[spec.name] = {
            "dtype": DTYPE_CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for spec in specs:
            t = fetch(spec.name)
            if tuple(t.shape) != spec.shape:
                raise CheckpointError(
                    f"{path}: tensor {spec.name!r} has shape {tuple(t.shape)}, expected {spec.shape}"
                )
            t = t.detach().to(device="cpu", dtype=spec.dtype).contiguous()
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            if progress is not None:
                progress(spec.nbytes)


def read_header(path: Path) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Parse a safetensors header; a truncated or malformed file is an error naming it and the tensor cut off."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated ({size} bytes), no safetensors header")
            (n,) = struct.unpack("<Q", prefix)
            if n > min(_MAX_HEADER, size - 8):
                raise CheckpointError(
                    f"{path}: corrupt or truncated header (claims {n} bytes, file has {size})"
                )
            header = json.loads(f.read(n))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    specs: dict[str, TensorSpec] = {}
    data_size = size - 8 - n
    for name, entry in header.items():
        try:
            dtype = DTYPES_BY_CODE[entry["dtype"]]
            spec = TensorSpec(name, tuple(int(d) for d in entry["shape"]), dtype)
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry {entry!r}") from e
        if end - start != spec.nbytes:
            raise CheckpointError(f"{path}: tensor {name!r}: header offsets do not match shape {spec.shape}")
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} needs data bytes up to {end}, the file holds {data_size}"
            )
        specs[name] = spec
    return specs, metadata
