"""Weight converters: Meta consolidated.pth -> model directory, Hugging Face Llama <-> model directory.

Every converter streams tensor by tensor from a memory-mapped source into `write_model_dir`, so a 7B conversion
never holds two copies of the weights in memory. Every directory written here, the Hugging Face export included,
carries `MANIFEST.json` (wmtp_core.storage's) as its one integrity file.

RoPE: Meta rotates interleaved pairs (x[2j], x[2j+1]); Hugging Face Llama rotates halves (x[j], x[j+d/2]). The two
agree once the rows of wq and wk are permuted within each head (as transformers' convert_llama_weights_to_hf does).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from wmtp_core.model.args import ModelArgs, ffn_args_for_hidden
from wmtp_core.model.io import (
    DEFAULT_SHARD_BYTES,
    METADATA_FILE,
    PARAMS_FILE,
    _shard_plan,
    dtype_name,
    load,
    parse_dtype,
    read_args,
    read_metadata,
    write_model_dir,
)
from wmtp_core.model.safetensors_file import DTYPES_BY_CODE, CheckpointError, TensorSpec, write_safetensors
from wmtp_core.model.transformer import Transformer
from wmtp_core.storage import atomic_dir, write_manifest


def _expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Transformer(args).state_dict().items()}


def _check_keys(
    source: Path, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> None:
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
        )
    missing = [k for k in expected if k not in found]
    if missing:
        raise CheckpointError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    for key, shape in expected.items():
        if found[key] != shape:
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {list(found[key])}, expected {list(shape)}"
            )


def _tokenizer_sha(tokenizer: str | Path | None) -> str | None:
    """The tokenizer's identity as every later stage checks it: the file's SHA256 for a SentencePiece model, the
    canonical tokenizer.json's for a GGUF or BPE tokenizer (`wmtp_core.tokenizer.Tokenizer.sha256`)."""
    from wmtp_core.tokenizer import Tokenizer

    return None if tokenizer is None else Tokenizer(tokenizer).sha256


# --- Meta consolidated.pth ---------------------------------------------------------------------------------------


def convert_meta(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | str | None = "float16",
    name: str | None = None,
    tokenizer: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict[str, Any]:
    """Convert Meta's `consolidated.pth` + `params.json` (e.g. 7B_1T_4) into a model directory.

    `dtype=None` keeps the stored dtype. Returns the written metadata.
    """
    checkpoint_dir = Path(checkpoint_dir)
    params_path = checkpoint_dir / "params.json"
    ckpt_path = checkpoint_dir / "consolidated.pth"
    if not ckpt_path.is_file():
        parts = sorted(checkpoint_dir.glob("consolidated.*.pth"))
        if len(parts) > 1:
            raise CheckpointError(
                f"{checkpoint_dir}: {len(parts)} model-parallel parts ({parts[0].name}, ...); merge them into one"
            )
        if not parts:
            raise CheckpointError(f"{ckpt_path}: file missing (expected consolidated.pth beside params.json)")
        ckpt_path = parts[0]
    try:
        params = json.loads(params_path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{params_path}: file missing") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{params_path}: not valid JSON ({e})") from e
    try:
        # mmap: tensors stay in the page cache and are written one at a time, never copied as a whole.
        state = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{ckpt_path}: unreadable PyTorch checkpoint ({e})") from e
    if "tok_embeddings.weight" not in state:
        raise CheckpointError(
            f"{ckpt_path}: missing tensor 'tok_embeddings.weight'; not a Meta LLaMA checkpoint"
        )
    resolved = dict(params)
    if resolved.get("vocab_size", -1) == -1:
        # Llama 2's params.json says -1: the vocabulary is whatever the embedding holds.
        resolved["vocab_size"] = int(state["tok_embeddings.weight"].shape[0])
    args = ModelArgs.from_dict(resolved, source=str(params_path))

    rope = state.pop("rope.freqs", None)
    if rope is not None:
        # Some Meta checkpoints keep the RoPE inverse frequencies; we recompute them, so they must agree.
        head_dim = args.head_dim
        ours = 1.0 / (args.rope_theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
        if rope.shape != ours.shape or not torch.allclose(rope.float(), ours, rtol=1e-3):
            raise CheckpointError(
                f"{ckpt_path}: tensor 'rope.freqs' disagrees with rope_theta={args.rope_theta}"
            )
    expected = _expected_shapes(args)
    _check_keys(ckpt_path, {k: tuple(v.shape) for k, v in state.items()}, expected)

    target = parse_dtype(dtype)
    specs = [TensorSpec(k, expected[k], target or state[k].dtype) for k in expected]
    metadata = write_model_dir(
        out_dir,
        args,
        specs,
        state.__getitem__,
        name=name or checkpoint_dir.name,
        source={"format": "meta-consolidated", "checkpoint": str(ckpt_path), "params": params},
        tokenizer_sha256=_tokenizer_sha(tokenizer),
        max_shard_bytes=max_shard_bytes,
    )
    _check_agreement(Path(out_dir), params, args, len(specs))
    return metadata


def _check_agreement(out_dir: Path, params: dict[str, Any], args: ModelArgs, n_tensors: int) -> None:
    written = read_args(out_dir)
    metadata = read_metadata(out_dir)
    if written != args:
        raise CheckpointError(f"{out_dir / PARAMS_FILE}: written {written} differs from converted {args}")
    for key, value in params.items():
        if key == "vocab_size" and value == -1:
            continue
        if getattr(written, key) != value:
            raise CheckpointError(
                f"{out_dir / PARAMS_FILE}: {key}={getattr(written, key)!r}, source says {value!r}"
            )
    if metadata["n_future_tokens"] != args.n_future_tokens or metadata["tensor_count"] != n_tensors:
        raise CheckpointError(f"{out_dir / METADATA_FILE}: heads or tensor count disagree with {PARAMS_FILE}")


# --- Hugging Face Llama -------------------------------------------------------------------------------------------


def permute_meta_to_hf(w: Tensor, n_heads: int) -> Tensor:
    """Rows of wq/wk from interleaved-pair RoPE order to rotate-half order, within each head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_hf_to_meta(w: Tensor, n_heads: int) -> Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


_HF_BLOCK = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def hf_name(key: str) -> str:
    """Our (Meta) parameter name of a one-head model -> the Hugging Face LlamaForCausalLM name."""
    if key == "tok_embeddings.weight":
        return "model.embed_tokens.weight"
    if key == "norm.weight":
        return "model.norm.weight"
    if key == "output.weight":
        return "lm_head.weight"
    _, i, rest = key.split(".", 2)
    return f"model.layers.{i}.{_HF_BLOCK[rest]}"


def _hf_rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling")
    rope_type = rope.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    if rope_type not in (None, "default"):
        raise CheckpointError(f"config.json: rope type {rope_type!r} is not supported (plain RoPE only)")
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def args_from_hf_config(config: dict[str, Any], source: str = "config.json") -> ModelArgs:
    if config.get("model_type") != "llama":
        raise CheckpointError(f"{source}: model_type={config.get('model_type')!r}, expected 'llama'")
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if config.get(key, want) != want:
            raise CheckpointError(f"{source}: {key}={config[key]!r} is not supported (expected {want!r})")
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim") not in (None, dim // n_heads):
        raise CheckpointError(f"{source}: head_dim={config['head_dim']} differs from hidden_size/heads")
    multiple_of, multiplier = ffn_args_for_hidden(dim, config["intermediate_size"])
    n_kv = config.get("num_key_value_heads") or n_heads
    return ModelArgs(
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=None if n_kv == n_heads else n_kv,
        vocab_size=config["vocab_size"],
        multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=_hf_rope_theta(config),
        n_future_tokens=1,
        max_seq_len=config.get("max_position_embeddings", 2048),
    )


_HFTensor = tuple[Path, Callable[[], Tensor], tuple[int, ...], torch.dtype]


def _open_hf_weights(hf_dir: Path) -> tuple[dict[str, _HFTensor], list]:
    """HF tensor name -> (file, lazy getter, shape, dtype), over safetensors or pytorch_model*.bin files."""
    handles: list = []
    found: dict[str, _HFTensor] = {}
    files = sorted(hf_dir.glob("model*.safetensors")) or sorted(hf_dir.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{hf_dir}: no model*.safetensors or pytorch_model*.bin weight files")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (hf_dir / index_name).is_file():
            listed = set(json.loads((hf_dir / index_name).read_text())["weight_map"].values())
            missing = sorted(f for f in listed if not (hf_dir / f).is_file())
            if missing:
                raise CheckpointError(f"{hf_dir / missing[0]}: shard missing (listed in {index_name})")
    for path in files:
        try:
            if path.suffix == ".safetensors":
                f = safe_open(str(path), framework="pt", device="cpu")
                handles.append(f)
                for key in f.keys():
                    meta = f.get_slice(key)
                    dtype = DTYPES_BY_CODE[meta.get_dtype()]
                    found[key] = (
                        path,
                        lambda f=f, key=key: f.get_tensor(key),
                        tuple(meta.get_shape()),
                        dtype,
                    )
            else:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                handles.append(state)
                for key, t in state.items():
                    found[key] = (path, lambda t=t: t, tuple(t.shape), t.dtype)
        except Exception as e:
            raise CheckpointError(f"{path}: unreadable weight file ({e})") from e
    return found, handles


def import_hf(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    name: str | None = None,
    tokenizer: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict[str, Any]:
    """Convert a Hugging Face Llama directory (e.g. Sheared-LLaMA-2.7B) into a one-head model directory."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: file missing")
    config = json.loads(config_path.read_text())
    args = args_from_hf_config(config, str(config_path))
    found, _handles = _open_hf_weights(hf_dir)
    # Older exports keep RoPE inverse frequencies as buffers; RoPE is recomputed here, so they are dropped.
    found = {k: v for k, v in found.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.get("tie_word_embeddings") and "lm_head.weight" not in found:
        found["lm_head.weight"] = found["model.embed_tokens.weight"]
    expected = _expected_shapes(args)
    by_hf = {hf_name(k): k for k in expected}
    for key, (path, *_) in found.items():
        if key not in by_hf:
            raise CheckpointError(f"{path}: unexpected tensor {key!r} for a Llama model")
    for key, shape in expected.items():
        if hf_name(key) not in found:
            raise CheckpointError(f"{hf_dir}: missing tensor {hf_name(key)!r} (our {key!r})")
        path, _, got, _ = found[hf_name(key)]
        if got != shape:
            raise CheckpointError(
                f"{path}: tensor {hf_name(key)!r} has shape {list(got)}, expected {list(shape)}"
            )

    def fetch(key: str) -> Tensor:
        t = found[hf_name(key)][1]()
        if key.endswith("attention.wq.weight"):
            return permute_hf_to_meta(t, args.n_heads)
        if key.endswith("attention.wk.weight"):
            return permute_hf_to_meta(t, args.kv_heads)
        return t

    target = parse_dtype(dtype)
    specs = [TensorSpec(k, shape, target or found[hf_name(k)][3]) for k, shape in expected.items()]
    return write_model_dir(
        out_dir,
        args,
        specs,
        fetch,
        name=name or hf_dir.name,
        source={"format": "hf-llama", "directory": str(hf_dir), "config": config},
        tokenizer_sha256=_tokenizer_sha(tokenizer),
        max_shard_bytes=max_shard_bytes,
    )


def hf_config(args: ModelArgs, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers - args.n_future_tokens + 1,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": args.max_seq_len,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype_name(dtype),
    }


def export_hf(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> dict[str, Any]:
    """Write head 1 of a model directory (trunk + layers[-1], shared norm/output) as an HF Llama directory.

    Extra heads are left out: a LlamaForCausalLM has exactly one. Returns the written config.json.
    """
    model = load(model_dir, dtype=parse_dtype(dtype))
    args = model.args
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("extra_heads.")}

    def fetch(hf_key: str) -> Tensor:
        key = ours[hf_key]
        if key.endswith("attention.wq.weight"):
            return permute_meta_to_hf(state[key], args.n_heads)
        if key.endswith("attention.wk.weight"):
            return permute_meta_to_hf(state[key], args.kv_heads)
        return state[key]

    ours = {hf_name(k): k for k in state}
    specs = [TensorSpec(hf_name(k), tuple(v.shape), v.dtype) for k, v in state.items()]
    config = hf_config(args, specs[0].dtype)
    shards = _shard_plan(specs, max_shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    with atomic_dir(out_dir) as tmp:
        for file_name, shard in zip(names, shards, strict=True):
            write_safetensors(tmp / file_name, shard, fetch, {"format": "pt"})
        if len(shards) > 1:
            weight_map = {s.name: f for f, shard in zip(names, shards, strict=True) for s in shard}
            index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {"bos_token_id": 1, "eos_token_id": 2}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        # transformers ignores the extra file; it makes the export checkable like every other directory.
        write_manifest(tmp, counts={"parameters": sum(v.numel() for v in state.values()), "tensors": len(specs)})
    return config
