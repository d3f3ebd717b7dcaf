"""Self-speculative decoding vs plain KV-cache greedy decoding, tokens/s, same model, same prompts, same run.

A micro multi-token model (4 heads) is first fitted on CPU to a repetitive code corpus with the sum of its heads'
cross-entropies (a small honest loop; the real trainer is elsewhere), so heads 2..4 have something to propose.

Its default shape keeps the proportion of Meta's 7B_1T_4 that decides the cost of a verify pass: a deep trunk and
one block per head (7B_1T_4: 28 trunk blocks + 4 head blocks; here 12 + 4 at width 64). A greedy step runs trunk +
head 1, a verify pass trunk + all heads over a few tokens. `--micro-policy` uses the project's micro policy instead
(4 trunk + 4 head blocks: heads are half the model, so a verify pass costs about twice a greedy step).

Then every held-out prompt is decoded greedily both ways, interleaved, several
rounds; the best round of each method is compared. The outputs must be identical token for token.

Last line: JSON with speedup_vs_greedy, tokens_per_forward, identical_to_greedy (and the details).
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

from wmtp_core.data.tokenizer import Tokenizer, train_tokenizer
from wmtp_core.eval.generate import SamplingParams, generate_ids
from wmtp_core.eval.speculative import SpeculativeStats, speculative_generate
from wmtp_core.model import ModelArgs, Transformer, make_micro

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
    """AdamW on the sum over heads of head k's cross-entropy for token t+k+1; returns the last loss per head."""
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
                model.unembed(model.head(h, k))[:, : seq - k - 1].flatten(0, 1), x[:, k + 1 :].flatten()
            )
            for k in range(model.n_future)
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


def decode_both(model, tok: Tokenizer, prompts: list[list[int]], max_new_tokens: int, rounds: int):
    """Interleave the two decoders prompt by prompt, `rounds` times; best round of each."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    best_greedy = best_spec = float("inf")
    identical = True
    stats = SpeculativeStats()
    for r in range(rounds):
        greedy_s = spec_s = 0.0
        round_stats = SpeculativeStats()
        for prompt in prompts:
            t0 = time.perf_counter()
            plain = generate_ids(model, tok, [prompt], params, batch_size=1, progress=False)[0][0]
            greedy_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            spec, s = speculative_generate(model, prompt, max_new_tokens=max_new_tokens, eos_id=tok.eos_id)
            spec_s += time.perf_counter() - t0
            identical &= spec.tokens == plain.tokens
            round_stats.add(s)
        print(
            f"round {r}: greedy {greedy_s:.2f} s, speculative {spec_s:.2f} s, {round_stats.tokens} tokens each"
        )
        best_greedy, best_spec = min(best_greedy, greedy_s), min(best_spec, spec_s)
        stats = round_stats
    return best_greedy, best_spec, identical, stats


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
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds; the best of each method counts")
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
    decode_both(model, tok, prompts[:1], 16, 1)  # warm-up: allocator, first-call paths
    greedy_s, spec_s, identical, stats = decode_both(model, tok, prompts, args.max_new_tokens, args.rounds)
    sample = generate_ids(model, tok, prompts[:1], SamplingParams(max_new_tokens=64), progress=False)[0][0]
    print(f"prompt {tok.decode(prompts[0])!r} -> greedy {sample.text!r}")
    result = {
        "speedup_vs_greedy": round(greedy_s / spec_s, 3),
        "tokens_per_forward": round(stats.tokens_per_forward, 3),
        "identical_to_greedy": identical,
        "greedy_tokens_per_s": round(stats.tokens / greedy_s, 1),
        "speculative_tokens_per_s": round(stats.tokens / spec_s, 1),
        "tokens": stats.tokens,
        "forward_passes": stats.forward_passes,
        "acceptance_rate_per_head": [round(r, 3) for r in stats.as_dict()["acceptance_rate_per_head"]],
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
