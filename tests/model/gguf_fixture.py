"""Small GGUF Llama files written with gguf's own writer and quantizers, laid out as llama.cpp's converter does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

Q = GGMLQuantizationType
_BLOCK_SHAPES = {  # GGUF name -> (rows, cols) outermost first, for dim D, kv dim K and hidden H
    "attn_q": ("D", "D"),
    "attn_k": ("K", "D"),
    "attn_v": ("K", "D"),
    "attn_output": ("D", "D"),
    "ffn_gate": ("H", "D"),
    "ffn_up": ("H", "D"),
    "ffn_down": ("D", "H"),
}
_OURS_TO_GGUF = {
    "tok_embeddings": "token_embd",
    "norm": "output_norm",
    "output": "output",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
    "attention_norm": "attn_norm",
    "ffn_norm": "ffn_norm",
}


def gguf_name(key: str) -> str:
    """Our parameter name (one head) -> GGUF tensor name, spelled out apart from the importer's own table."""
    stem = key.removesuffix(".weight")
    if stem in _OURS_TO_GGUF:
        return f"{_OURS_TO_GGUF[stem]}.weight"
    _, i, rest = stem.split(".", 2)
    return f"blk.{i}.{_OURS_TO_GGUF[rest]}.weight"


def _tensor_data(rng: np.random.Generator, shape: tuple[int, ...], qtype: Q) -> np.ndarray:
    """Random data of a tensor stored as `qtype`, in the form GGUFWriter takes it (quantized bytes for quants)."""
    if qtype == Q.I32:
        return rng.integers(0, 9, shape, dtype=np.int32)
    if qtype == Q.Q6_K:  # gguf cannot quantize K-quants: random 210-byte blocks with a sane float16 scale d
        blocks = rng.integers(0, 256, (shape[0], shape[1] // 256, 210), dtype=np.uint8)
        blocks[..., -2:] = np.array([0.01], dtype=np.float16).view(np.uint8)
        return blocks.reshape(shape[0], -1)
    return quantize(rng.normal(0, 0.2, shape).astype(np.float32), qtype)


def write_llama_gguf(
    path: Path,
    qtype: Q = Q.Q8_0,
    *,
    vocab: int = 96,
    dim: int = 64,
    hidden: int = 192,
    n_blocks: int = 3,
    tied: bool = True,
    arch: str = "llama",
    types: dict[str, Q] | None = None,
    drop: str | None = None,
    extra: str | None = None,
) -> dict[str, np.ndarray]:
    """A GGUF Llama with 4 heads (2 kv heads), 2-D tensors in `qtype` (or `types[name]`), 1-D ones (norms) in F32
    as llama.cpp writes them, and tokenizer metadata of every array kind (strings, non-ASCII ones too, int32,
    float32). Quantization packs each row in blocks (32 values, 256 for K-quants), so `dim` and `hidden` must be
    multiples of the block. `drop` leaves a tensor out, `extra` adds a 1-D one. Returns every tensor's
    dequantized value, outermost dimension first (integer tensors aside)."""
    rng = np.random.default_rng(0)
    sizes = {"D": dim, "K": dim // 2, "H": hidden}
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,)}
    if not tied:
        shapes["output.weight"] = (vocab, dim)
    for i in range(n_blocks):
        shapes[f"blk.{i}.attn_norm.weight"] = shapes[f"blk.{i}.ffn_norm.weight"] = (dim,)
        for name, (rows, cols) in _BLOCK_SHAPES.items():
            shapes[f"blk.{i}.{name}.weight"] = (sizes[rows], sizes[cols])
    if extra:
        shapes[extra] = (dim,)
    shapes.pop(drop, None)

    w = GGUFWriter(path, arch)
    w.add_name("tiny llama")
    w.add_block_count(n_blocks)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(
        ["<|endoftext|>", "<|im_start|>", "Ġ", "Ġt", "é", "日本"] + [f"t{i}" for i in range(vocab - 6)]
    )
    w.add_token_types([3, 3] + [1] * (vocab - 2))
    w.add_token_scores([float(-i) / 3 for i in range(vocab)])
    w.add_token_merges(["Ġ t", "日 本"])
    w.add_add_bos_token(False)
    written = {}
    for name, shape in shapes.items():
        kind = (types or {}).get(name, Q.F32 if len(shape) == 1 else qtype)
        data = _tensor_data(rng, shape, kind)
        w.add_tensor(name, data, raw_dtype=kind)
        if kind != Q.I32:
            written[name] = dequantize(data, kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written
