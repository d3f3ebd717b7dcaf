"""Peak memory and step time of the memory-efficient multi-token loss against the naive loss and a 1-head model.

Variants (same width, same number of blocks, same weights where they overlap, one forward + backward each):

- efficient: 4-head model, `wmtp_core.train.loss.mtp_backward` (trunk once, heads one at a time)
- naive:     4-head model, `naive_mtp_loss(...).backward()` (all heads' logits at once)
- one_head:  1-head model (n_layers blocks: n_layers-1 trunk + 1 head), the same loss; the memory floor

Peak memory: each variant in a fresh process (multiprocessing spawn). After building the model and AdamW, one
full step allocates the gradients, the Adam moments and the kernels' one-time caches; the peak of the next
forward + backward is then measured as the rise of the resident set's high-water mark (VmHWM, reset through
/proc/self/clear_refs) over the resident set before it. glibc is told to serve every block above 128 KiB by mmap
(MALLOC_MMAP_THRESHOLD_), so freed activations return to the OS at once and the RSS follows live memory.
As a cross-check the same process reports the peak of live tensor bytes from torch.profiler's allocation events.

Step time: all three variants in this process, alternated step by step after warm-up; median process CPU time
of a single-threaded step (the default on CPU: on a shared machine wall time mostly measures the neighbours).
Median wall times are reported beside it.

    .venv/bin/python benchmarks/mtp_loss.py                       # dim 256, 6 blocks, vocab 32000, seq 1024
    .venv/bin/python benchmarks/mtp_loss.py --dim 512 --n-layers 8 --steps 7

Goals: efficient peak <= 1.15 x one_head peak; efficient step time <= 1.25 x naive. The last line printed is one
JSON object with `peak_mem_ratio_vs_one_head`, `peak_mem_ratio_vs_naive`, `time_ratio_vs_naive` and the raw
figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import statistics
import time

import torch
from memory import peak_bytes

from wmtp_core.data.collate import IGNORE_INDEX
from wmtp_core.model import ModelArgs, Transformer
from wmtp_core.train.distributed import Trainable
from wmtp_core.train.loss import mtp_backward, naive_mtp_loss, valid_target_counts

VARIANTS = ("efficient", "naive", "one_head")
MIB = 2**20


def model_args(opts: argparse.Namespace, variant: str) -> ModelArgs:
    return ModelArgs(
        dim=opts.dim,
        n_layers=opts.n_layers,
        n_heads=opts.n_heads,
        vocab_size=opts.vocab_size,
        n_future_tokens=1 if variant == "one_head" else opts.n_future,
        max_seq_len=max(2048, opts.seq_len),
    )


def build(opts: argparse.Namespace, variant: str) -> tuple[Trainable, torch.optim.Optimizer]:
    policy = Transformer(model_args(opts, variant))
    policy.init_weights(torch.Generator().manual_seed(0))
    trainable = Trainable(policy.to(getattr(torch, opts.dtype)).train())
    return trainable, torch.optim.AdamW(trainable.parameters(), lr=1e-5)


def batch(opts: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens; the first 10% of every row is prompt (-100 labels), as in instruction data."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, opts.vocab_size, (opts.batch_size, opts.seq_len), generator=g)
    labels = tokens.clone()
    labels[:, : opts.seq_len // 10] = IGNORE_INDEX
    return tokens, labels


def forward_backward(variant: str, trainable: Trainable, tokens: torch.Tensor, labels: torch.Tensor) -> None:
    den = valid_target_counts(labels, trainable.policy.n_future)
    if variant == "efficient":
        mtp_backward(trainable, tokens, labels, denominators=den)
    else:
        total, _ = naive_mtp_loss(trainable, tokens, labels, denominators=den)
        total.backward()


def _status_kib(*keys: str) -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) for key in keys}


def measure_memory(variant: str, opts: argparse.Namespace, out: mp.Queue) -> None:
    """Runs in a fresh process: the peak memory of one forward + backward of `variant`, in MiB."""
    torch.set_num_threads(opts.threads)
    trainable, opt = build(opts, variant)
    tokens, labels = batch(opts)
    forward_backward(variant, trainable, tokens, labels)  # gradients, Adam moments, one-time caches
    opt.step()
    opt.zero_grad(set_to_none=False)  # keep the gradient buffers: the baseline holds them
    before = _status_kib("VmRSS")["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    forward_backward(variant, trainable, tokens, labels)
    peak = _status_kib("VmHWM")["VmHWM"]
    opt.zero_grad(set_to_none=False)
    profiled = peak_bytes(lambda: forward_backward(variant, trainable, tokens, labels), torch.device("cpu"))
    out.put(
        {
            "variant": variant,
            "rss_peak_mib": (peak - before) / 1024,
            "tensor_peak_mib": profiled / MIB,
            "rss_baseline_mib": before / 1024,
        }
    )


def memory_figures(opts: argparse.Namespace) -> dict[str, dict[str, float]]:
    # glibc reads its tunables at process start: set them before spawning.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    ctx = mp.get_context("spawn")
    figures = {}
    for variant in VARIANTS:
        print(f"[memory] {variant}: fresh process ...", flush=True)
        queue = ctx.Queue()
        proc = ctx.Process(target=measure_memory, args=(variant, opts, queue))
        proc.start()
        result = queue.get()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"memory measurement of {variant!r} exited with code {proc.exitcode}")
        figures[variant] = result
        print(
            f"[memory] {variant}: peak RSS +{result['rss_peak_mib']:.0f} MiB, "
            f"live tensors +{result['tensor_peak_mib']:.0f} MiB",
            flush=True,
        )
    return figures


def time_figures(opts: argparse.Namespace) -> dict[str, dict[str, float]]:
    torch.set_num_threads(opts.threads)
    models = {variant: build(opts, variant)[0] for variant in VARIANTS}
    tokens, labels = batch(opts)
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(opts.warmup + opts.steps):
        last = {}
        for variant in VARIANTS:
            trainable = models[variant]
            trainable.zero_grad(set_to_none=False)
            w0, c0 = time.perf_counter(), time.process_time()
            forward_backward(variant, trainable, tokens, labels)
            w1, c1 = time.perf_counter(), time.process_time()
            last[variant] = w1 - w0
            if i >= opts.warmup:
                cpu[variant].append(c1 - c0)
                wall[variant].append(w1 - w0)
        phase = "warm-up" if i < opts.warmup else f"step {i - opts.warmup + 1}/{opts.steps}"
        print(f"[time] {phase}: " + ", ".join(f"{v} {last[v]:.2f}s wall" for v in VARIANTS), flush=True)
    return {v: {"cpu_s": statistics.median(cpu[v]), "wall_s": statistics.median(wall[v])} for v in VARIANTS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=6, help="blocks of every model, heads included")
    p.add_argument("--n-heads", type=int, default=4, help="attention heads")
    p.add_argument("--n-future", type=int, default=4, help="output heads of the multi-token model")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    opts = p.parse_args()
    if opts.n_future < 2 or opts.n_future > opts.n_layers:
        p.error(f"--n-future={opts.n_future}: expected 2..--n-layers ({opts.n_layers})")

    print(
        f"model: dim {opts.dim}, {opts.n_layers} blocks, vocab {opts.vocab_size}, {opts.n_future} heads vs 1; "
        f"batch {opts.batch_size} x {opts.seq_len} tokens, {opts.dtype}, {opts.threads} thread(s)",
        flush=True,
    )
    memory = memory_figures(opts)
    timing = time_figures(opts)

    print(
        f"\n{'variant':<10} {'peak RSS +MiB':>14} {'live tensors +MiB':>18} {'CPU s/step':>11} {'wall s/step':>12}"
    )
    for v in VARIANTS:
        m, t = memory[v], timing[v]
        print(
            f"{v:<10} {m['rss_peak_mib']:>14.0f} {m['tensor_peak_mib']:>18.0f} {t['cpu_s']:>11.3f} {t['wall_s']:>12.3f}"
        )
    eff, naive, one = memory["efficient"], memory["naive"], memory["one_head"]
    summary = {
        "peak_mem_ratio_vs_one_head": round(eff["rss_peak_mib"] / one["rss_peak_mib"], 3),
        "peak_mem_ratio_vs_naive": round(eff["rss_peak_mib"] / naive["rss_peak_mib"], 3),
        "time_ratio_vs_naive": round(timing["efficient"]["cpu_s"] / timing["naive"]["cpu_s"], 3),
        "tensor_peak_ratio_vs_one_head": round(eff["tensor_peak_mib"] / one["tensor_peak_mib"], 3),
        "tensor_peak_ratio_vs_naive": round(eff["tensor_peak_mib"] / naive["tensor_peak_mib"], 3),
        "wall_time_ratio_vs_naive": round(timing["efficient"]["wall_s"] / timing["naive"]["wall_s"], 3),
        "peak_rss_mib": {v: round(memory[v]["rss_peak_mib"], 1) for v in VARIANTS},
        "peak_tensor_mib": {v: round(memory[v]["tensor_peak_mib"], 1) for v in VARIANTS},
        "step_cpu_s": {v: round(timing[v]["cpu_s"], 4) for v in VARIANTS},
        "step_wall_s": {v: round(timing[v]["wall_s"], 4) for v in VARIANTS},
        "config": {
            k: getattr(opts, k)
            for k in (
                "dim",
                "n_layers",
                "n_heads",
                "n_future",
                "vocab_size",
                "seq_len",
                "batch_size",
                "dtype",
                "threads",
                "steps",
            )
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
