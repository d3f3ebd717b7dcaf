"""Self-speculative decoding vs plain KV-cache greedy decoding, tokens/s, same model, same prompts, same run.

A micro multi-token model (4 heads) is first fitted on CPU to a repetitive code corpus with the sum of its heads'
cross-entropies (a small honest loop; the real trainer is elsewhere), so heads 2..4 have something to propose.

Its default shape keeps the proportion of Meta's 7B_1T_4 that decides the cost of a verify pass: a deep trunk and
one block per head (7B_1T_4: 28 trunk blocks + 4 head blocks; here 12 + 4 at width 64). A greedy step runs trunk +
head 1, a verify pass trunk + all heads over a few tokens. `--micro-policy` uses the project's micro policy instead
(4 trunk + 4 head blocks: heads are half the model, so a verify pass costs about twice a greedy step).

Then every held-out prompt is decoded greedily both ways by `wmtp_core.eval.timing.compare_with_greedy`, the
function the evaluation times with: --warmup untimed rounds, then --repeats timed rounds in alternating order, one
speed-up per round. The outputs must be identical token for token.

Last line: JSON with speedup_vs_greedy (the median per-round ratio), speedup_min and speedup_max over `repeats`
rounds, speedup_not_meaningful (null, or why the figure means nothing), tokens_per_forward, identical_to_greedy
(and the details).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wmtp_core.eval.generate import SamplingParams, generate_ids
from wmtp_core.eval.timing import REPEATS, WARMUP, compare_with_greedy
from wmtp_core.model import ModelArgs, Transformer, make_micro
from wmtp_core.tokenizer import Tokenizer, train_tokenizer

VERBS = ["scale", "filter", "count", "clip", "shift", "keep", "drop", "sum"]
NOUNS = ["values", "items", "scores", "prices", "rows", "points", "weights"]
OPS = ["+", "-", "*"]
CMPS = [">", "<", ">=", "<="]


def function(rng: random.Random) -> str:
    verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
    limit, step = rng.randint(0, 9), rng.randint(1, 9)
    return (
        f"def {verb}_{noun}({noun}):\n"
        f'    """{verb.capitalize()} the {noun} above {limit}."""\n'
        f"    result = []\n"
        f"    for item in {noun}:\n"
        f"        if item {rng.choice(CMPS)} {limit}:\n"
        f"            result.append(item {rng.choice(OPS)} {step})\n"
        f"    return result\n\n\n"
    )


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [function(rng) for _ in range(n)]


def fit(model, data: torch.Tensor, *, steps: int, batch: int, seq: int, lr: float, seed: int) -> list[float]:
    """AdamW on the sum over heads 1..n of head k's cross-entropy for token t+k; returns each head's last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    per_head = []
    started = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq, (batch,), generator=g).tolist()
        x = torch.stack([data[s : s + seq] for s in starts])
        h = model.trunk(x)
        losses = [
            F.cross_entropy(
                model.unembed(model.head(h, k))[:, : seq - k].flatten(0, 1), x[:, k:].flatten()
            )
            for k in range(1, model.n_future + 1)
        ]
        opt.zero_grad(set_to_none=True)
        sum(losses).backward()
        opt.step()
        sched.step()
        per_head = [loss.item() for loss in losses]
        if step % 50 == 0 or step == steps - 1:
            shown = " ".join(f"{v:.3f}" for v in per_head)
            print(
                f"step {step:4d}  loss per head {shown}  ({time.perf_counter() - started:.0f} s)", flush=True
            )
    return per_head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training steps of the micro policy")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=16, help="all blocks: trunk + one per head")
    ap.add_argument(
        "--micro-policy", action="store_true", help="use make_micro('policy') (overrides the shape)"
    )
    ap.add_argument(
        "--vocab-size", type=int, default=512, help="pieces of the tokenizer trained on the corpus"
    )
    ap.add_argument("--prompts", type=int, default=8, help="held-out prompts decoded by both methods")
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument(
        "--repeats", type=int, default=REPEATS, help="timed rounds, each gives one speed-up; the median counts"
    )
    ap.add_argument("--warmup", type=int, default=WARMUP, help="untimed rounds before the timed ones")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on shared CPUs)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    texts = corpus(2000, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = Tokenizer(train_tokenizer(texts, Path(tmp) / "code.model", args.vocab_size))
    data = torch.tensor(tok.encode("".join(texts)), dtype=torch.long)
    if args.micro_policy:
        model = make_micro("policy", tok.vocab_size, seed=args.seed)
    else:
        shape = ModelArgs(
            dim=args.dim,
            n_layers=args.n_layers,
            n_heads=4,
            vocab_size=tok.vocab_size,
            n_future_tokens=4,
            multiple_of=32,
            max_seq_len=1024,
        )
        model = Transformer(shape)
        model.init_weights(torch.Generator().manual_seed(args.seed))
    print(
        f"micro policy: {model.num_parameters():,} parameters, {model.n_future} heads, "
        f"{model.n_trunk_layers} trunk blocks; corpus {len(data):,} tokens; {args.threads} thread(s)",
        flush=True,
    )
    final_loss = fit(
        model, data, steps=args.steps, batch=args.batch, seq=args.seq, lr=args.lr, seed=args.seed
    )
    model.eval()

    # Held-out prompts: the first line of fresh functions (another seed), so names are not memorized.
    prompts = [tok.encode(t.split("\n")[0] + "\n", bos=True) for t in corpus(args.prompts, args.seed + 1)]
    spec, _ = compare_with_greedy(
        model, tok, prompts, max_new_tokens=args.max_new_tokens, repeats=args.repeats, warmup=args.warmup
    )
    rounds = zip(spec["greedy_seconds_per_repeat"], spec["speculative_seconds_per_repeat"], strict=True)
    for r, (greedy_s, spec_s) in enumerate(rounds):
        print(f"repeat {r}: greedy {greedy_s:.3f} s, speculative {spec_s:.3f} s, ratio {greedy_s / spec_s:.3f}")
    identical = spec["identical_to_greedy"]
    sample = generate_ids(model, tok, prompts[:1], SamplingParams(max_new_tokens=64), progress=False)[0][0]
    print(f"prompt {tok.decode(prompts[0])!r} -> greedy {sample.text!r}")
    if spec["speedup_not_meaningful"]:
        print(f"speed-up not meaningful: {spec['speedup_not_meaningful']}", flush=True)
    result = {
        "speedup_vs_greedy": round(spec["speedup_median"], 3),
        "speedup_min": round(spec["speedup_min"], 3),
        "speedup_max": round(spec["speedup_max"], 3),
        "repeats": spec["repeats"],
        "warmup": spec["warmup"],
        "speedup_not_meaningful": spec["speedup_not_meaningful"],
        "tokens_per_forward": round(spec["tokens_per_forward"], 3),
        "identical_to_greedy": identical,
        "greedy_tokens_per_s": round(spec["greedy_tokens_per_s"], 1),
        "speculative_tokens_per_s": round(spec["speculative_tokens_per_s"], 1),
        "tokens": spec["tokens"],
        "forward_passes": spec["forward_passes"],
        "acceptance_rate_per_head": [round(r, 3) for r in spec["acceptance_rate_per_head"]],
        "final_loss_per_head": [round(v, 4) for v in final_loss],
        "n_heads": model.n_future,
        "trunk_blocks": model.n_trunk_layers,
        "dim": model.args.dim,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "train_steps": args.steps,
        "threads": args.threads,
    }
    if not identical:
        print("ERROR: speculative output differs from greedy output", file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
