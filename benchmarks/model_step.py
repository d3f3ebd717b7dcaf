"""Forward+backward step time and peak memory: our one-head Transformer vs transformers.LlamaForCausalLM.

Both models get identical dimensions and identical weights (ours converted with the wq/wk RoPE permutation; the
logits are checked to agree before timing), run in the same process, interleaved step by step.

Step time: on CUDA, wall time (synchronised). On CPU, the process CPU time of a single-threaded step (the
default there): on a machine shared with other processes wall time mostly measures the neighbours, while CPU time
of one thread is the time the step spent computing. Wall-time ratios (best and median) are reported beside it.
Peak memory: bytes allocated during one step above those allocated before it; on CPU from the profiler's
allocation events (torch keeps no CPU allocator counters), on CUDA from torch.cuda.max_memory_allocated.

    .venv/bin/python benchmarks/model_step.py --dim 512 --n-layers 8 --batch-size 1 --seq-len 512 --steps 11

Defaults keep the blocks (where the two implementations differ) above half of the work, as in a 7B model, while
a step stays a few seconds on one core. The last line printed is one JSON object with `step_time_ratio_vs_hf`
and `peak_mem_ratio_vs_hf`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from memory import peak_bytes
from transformers import LlamaConfig, LlamaForCausalLM

from wmtp_core.model import ModelArgs, Transformer
from wmtp_core.model.convert import hf_config, hf_name, permute_meta_to_hf


def build(args: ModelArgs, device: torch.device, dtype: torch.dtype) -> tuple[Transformer, LlamaForCausalLM]:
    ours = Transformer(args)
    ours.init_weights(torch.Generator().manual_seed(0))
    config = hf_config(args, dtype)
    config.pop("architectures"), config.pop("model_type"), config.pop("torch_dtype")
    hf = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa"))
    state = {}
    for key, value in ours.state_dict().items():
        if key.endswith("attention.wq.weight"):
            value = permute_meta_to_hf(value, args.n_heads)
        elif key.endswith("attention.wk.weight"):
            value = permute_meta_to_hf(value, args.kv_heads)
        state[hf_name(key)] = value
    hf.load_state_dict(state, strict=True)
    return ours.to(device, dtype).train(), hf.to(device, dtype).train()


def step(logits_fn, tokens: torch.Tensor, targets: torch.Tensor, model: torch.nn.Module) -> float:
    model.zero_grad(set_to_none=True)
    logits = logits_fn(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    loss.backward()
    return loss.item()


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--n-kv-heads", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=11, help="timed steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: 1 on CPU)")
    opts = p.parse_args()
    device, dtype = torch.device(opts.device), getattr(torch, opts.dtype)
    if opts.threads or device.type == "cpu":
        torch.set_num_threads(opts.threads or 1)
    args = ModelArgs(
        dim=opts.dim,
        n_layers=opts.n_layers,
        n_heads=opts.n_heads,
        n_kv_heads=opts.n_kv_heads,
        vocab_size=opts.vocab_size,
        n_future_tokens=1,
        max_seq_len=max(2048, opts.seq_len),
    )
    ours, hf = build(args, device, dtype)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.vocab_size, (opts.batch_size, opts.seq_len), generator=g).to(device)
    targets = torch.randint(0, args.vocab_size, (opts.batch_size, opts.seq_len), generator=g).to(device)

    with torch.no_grad():
        diff = (ours(tokens)[:, :, 0].float() - hf(tokens).logits.float()).abs().max().item()
    if dtype == torch.float32 and diff > 1e-3:
        raise SystemExit(f"logits differ by {diff}: the two models do not hold the same weights")

    runs = {
        "ours": (lambda: step(lambda t: ours(t).squeeze(2), tokens, targets, ours)),
        "hf": (lambda: step(lambda t: hf(input_ids=t).logits, tokens, targets, hf)),
    }
    for _ in range(opts.warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu_times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(opts.steps):
        # Alternate which model goes first, so neither always follows the other's cache-warming step.
        for name in sorted(runs, reverse=bool(i % 2)):
            wall, cpu = timed(runs[name], device)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    peaks = {name: peak_bytes(fn, device) for name, fn in runs.items()}

    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    cpu = {name: statistics.median(t) for name, t in cpu_times.items()}
    step_time = cpu if device.type == "cpu" else median
    n_params = sum(p.numel() for p in ours.parameters())
    print(
        f"config: dim={args.dim} layers={args.n_layers} heads={args.n_heads} kv_heads={args.kv_heads} "
        f"vocab={args.vocab_size} batch={opts.batch_size} seq={opts.seq_len} {opts.dtype} on {device} "
        f"threads={torch.get_num_threads()} params={n_params:,} max|logit diff|={diff:.2e}"
    )
    for name in runs:
        spread = ", ".join(f"{t:.3f}" for t in times[name])
        print(
            f"{name:>5}: best step {best[name]:.3f} s, median {median[name]:.3f} s ({spread}), "
            f"median CPU {cpu[name]:.3f} s; peak {peaks[name] / 2**20:.1f} MiB"
        )
    result = {
        "step_time_ratio_vs_hf": round(step_time["ours"] / step_time["hf"], 4),
        "peak_mem_ratio_vs_hf": round(peaks["ours"] / peaks["hf"], 4),
        "step_time": "process CPU time, median" if device.type == "cpu" else "wall time, median",
        "ours_step_s": round(step_time["ours"], 4),
        "hf_step_s": round(step_time["hf"], 4),
        "wall_best_ratio_vs_hf": round(best["ours"] / best["hf"], 4),
        "wall_median_ratio_vs_hf": round(median["ours"] / median["hf"], 4),
        "ours_peak_mib": round(peaks["ours"] / 2**20, 1),
        "hf_peak_mib": round(peaks["hf"] / 2**20, 1),
        "device": str(device),
        "dtype": opts.dtype,
        "threads": torch.get_num_threads(),
        "dim": args.dim,
        "n_layers": args.n_layers,
        "batch_size": opts.batch_size,
        "seq_len": opts.seq_len,
        "vocab_size": args.vocab_size,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
