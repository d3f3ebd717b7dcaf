"""The experiment report: every evaluated model and the training runs behind them, side by side.

Inputs are evaluation directories in the format of `wmtp_core.eval.results`, written by `wmtp evaluate` or
`wmtp evaluate-completions` (their `metrics.json`, and `samples.parquet` for completion lengths and sample
completions), and optionally training asset directories (`result.json`, `history.jsonl`, `token_weights.json`; see
`load_training`). Outputs are `report.md`, `report.json` (everything), `metrics.json` (the numbers DVC tracks) and
PNG plots; `ui_tables` gives the main tables as flat rows for a UI.

Reading training directories is `wmtp_core.eval.report_training`, rendering report.md `report_markdown`, and
drawing the plots `report_plots`; this module arranges the summary and writes the outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import polars as pl

from wmtp_core.eval.params import ExperimentReportParams
from wmtp_core.eval.report_markdown import render_markdown
from wmtp_core.eval.report_plots import (
    plot_heldout_loss,
    plot_pass_at_k,
    plot_speculative,
    plot_token_weights,
    plot_training_curves,
)
from wmtp_core.eval.report_training import TRAINING_COLUMNS, load_training, summarize_training
from wmtp_core.eval.results import METRICS_FILE, ReportError, load_evaluation
from wmtp_core.storage import atomic_dir, write_manifest

SAMPLES_FILE = "samples.parquet"
SAMPLE_COLUMNS = ("task_id", "sample", "completion", "status", "passed", "n_tokens")


def _ordered_unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


LEGACY_TIMING = (
    "timed once, cold against warm, with no repeats or spread (evaluation recorded before repeated timing; "
    "evaluate again)"
)


def _judged(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The speculative block with `speedup_not_meaningful` always present. The evaluation records it (see
    `wmtp_core.eval.timing.speedup_caveats`); a block recorded before repeated timing has one unrepeated ratio,
    which is kept as `speedup_median` but is no result."""
    if not spec or "speedup_not_meaningful" in spec:
        return spec
    legacy = {"speedup": None, "speedup_median": spec.get("speedup"), "speedup_not_meaningful": LEGACY_TIMING}
    return {**spec, **legacy}


def summarize(
    evaluations: Sequence[dict[str, Any]], title: str, baseline: str = "base_model"
) -> dict[str, Any]:
    """Arrange the evaluations by model and task, with every pass@k's change against the `baseline` model on the
    same task (where it was evaluated); refuses two evaluations of the same (model, task)."""
    seen: set[tuple[str, str]] = set()
    for m in evaluations:
        key = (m["model"], m["task"])
        if key in seen:
            raise ReportError(f"two evaluations of model {key[0]!r} on task {key[1]!r}; expected one each")
        seen.add(key)
    models = _ordered_unique([m["model"] for m in evaluations])
    tasks = _ordered_unique([m["task"] for m in evaluations])
    ks = sorted({int(k) for m in evaluations for k in m["pass_at_k"]})
    by = {(m["model"], m["task"]): m for m in evaluations}
    pass_at_k = {
        model: {task: by[model, task]["pass_at_k"] for task in tasks if (model, task) in by}
        for model in models
    }
    speculative = {
        model: {task: _judged(by[model, task].get("speculative")) for task in tasks if (model, task) in by}
        for model in models
    }
    greedy = {
        model: {task: by[model, task]["greedy"]["pass_at_1"] for task in tasks if by.get((model, task), {}).get("greedy")}
        for model in models
    }
    coverage = {
        model: {
            task: {k: by[model, task][k] for k in ("n_tasks", "n_tasks_available", "limit", "n_samples")}
            for task in tasks
            if (model, task) in by
        }
        for model in models
    }
    base = pass_at_k.get(baseline, {})
    delta_vs_baseline = {
        model: {
            # Rounded: 0.15 - 0.125 is 0.025, not 0.024999999999999994.
            task: {k: round(v - base[task][k], 12) for k, v in scores.items() if k in base[task]}
            for task, scores in pass_at_k[model].items()
            if task in base
        }
        for model in models
        if model != baseline and any(task in base for task in pass_at_k[model])
    }
    return {
        "title": title,
        "models": models,
        "tasks": tasks,
        "k": ks,
        "pass_at_k": pass_at_k,
        "baseline": baseline,
        "delta_vs_baseline": delta_vs_baseline,
        "speculative": speculative,
        "greedy_pass_at_1": {model: scores for model, scores in greedy.items() if scores},
        "coverage": coverage,
        "limited": any(m["limit"] is not None for m in evaluations),
    }


# ---------------------------------------------------------------- completions (samples.parquet)


def load_completions(eval_dir: str | Path, n: int, chars: int) -> dict[str, Any] | None:
    """From an evaluation's samples.parquet: the mean `n_tokens` (None when not recorded, as for completions judged
    from a file) and the first sample of each of the first `n` tasks, its completion cut to `chars` characters.
    None when the evaluation has no samples.parquet."""
    path = Path(eval_dir) / SAMPLES_FILE
    if not path.is_file():
        return None
    try:
        frame = pl.scan_parquet(path)
        columns = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ReportError(f"{path}: cannot read ({e})") from e
    missing = [c for c in SAMPLE_COLUMNS if c not in columns]
    if missing:
        raise ReportError(f"{path}: missing columns {missing}; expected {list(SAMPLE_COLUMNS)}")
    try:
        mean_tokens = frame.select(pl.col("n_tokens").cast(pl.Float64).mean()).collect().item()
        first = (
            frame.select(SAMPLE_COLUMNS)
            .filter(pl.col("sample") == pl.col("sample").min().over("task_id"))
            .unique("task_id", keep="first", maintain_order=True)
            .head(n)
            .collect()
            .to_dicts()
        )
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ReportError(f"{path}: cannot read ({e})") from e
    samples = [
        {
            **{k: row[k] for k in ("task_id", "sample", "status", "passed", "n_tokens")},
            "completion": (row["completion"] or "")[:chars],
            "chars": len(row["completion"] or ""),
            "truncated": len(row["completion"] or "") > chars,
        }
        for row in first
    ]
    return {"mean_tokens": mean_tokens, "samples": samples}


def add_completions(
    summary: dict[str, Any], completions: dict[tuple[str, str], dict[str, Any] | None]
) -> None:
    """`completion_length` {model: {task: mean tokens or None}} for every evaluation with a samples.parquet, and
    `samples` {model: {task: [sample, ...]}} where there are any."""
    summary["completion_length"] = {}
    summary["samples"] = {}
    for (model, task), found in completions.items():
        if found is None:
            continue
        summary["completion_length"].setdefault(model, {})[task] = found["mean_tokens"]
        if found["samples"]:
            summary["samples"].setdefault(model, {})[task] = found["samples"]


# ---------------------------------------------------------------- outputs


def dvc_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers DVC tracks: {model: {task: {pass@k..., tokens_per_forward, speedup, mean_completion_tokens}}};
    no speedup where it is not meaningful (report.json says why), no length where none was recorded. Training runs
    add {model: {"heldout": {"head1": ...}}} (the reference: head 1 only)."""
    out: dict[str, Any] = {}
    for model in summary["models"]:
        for task, scores in summary["pass_at_k"][model].items():
            entry = {f"pass@{k}": v for k, v in scores.items()}
            spec = summary["speculative"][model].get(task)
            if spec:
                entry["tokens_per_forward"] = spec["tokens_per_forward"]
                if not spec["speedup_not_meaningful"]:
                    entry["speculative_speedup"] = spec["speedup"]
            length = summary.get("completion_length", {}).get(model, {}).get(task)
            if length is not None:
                entry["mean_completion_tokens"] = length
            out.setdefault(model, {})[task] = entry
    heldout = summary.get("heldout_loss", {"policies": {}, "reference": {}})
    if (heldout["policies"] or heldout["reference"]) and "heldout" in summary["tasks"]:
        raise ReportError("a task named 'heldout' clashes with the held-out losses in metrics.json")
    for model, losses in heldout["policies"].items():
        out.setdefault(model, {})["heldout"] = dict(losses)
    for model, loss in heldout["reference"].items():
        out.setdefault(model, {})["heldout"] = {"head1": loss}
    return out


def ui_tables(summary: dict[str, Any]) -> dict[str, list[dict[str, str | float | int | None]]]:
    """The report's main tables as flat rows with fixed column names, one figure per row, for a UI such as the
    Dagster asset's table metadata. Takes `write_report`'s return value or a loaded report.json.

    pass_at_k:          model, task, k, pass_at_k, baseline_pass_at_k, delta_vs_baseline
                        (the baseline's figures are None where it was not evaluated on the task; the delta is None
                        for the baseline's own rows)
    completion_length:  model, task, mean_completion_tokens (None: not recorded)
    heldout_loss:       model, recipe, head, heldout_loss (the reference: head 1 only)
    training:           model, recipe, steps, tokens, rows, world_size, train_seconds, mlflow_run_id
    """
    # Rows follow the report's lists (models, tasks, training runs), not its dicts: report.json sorts those.
    models, tasks = summary["models"], summary["tasks"]
    base = summary["pass_at_k"].get(summary.get("baseline"), {})
    deltas = summary.get("delta_vs_baseline", {})
    pass_at_k = [
        {
            "model": model,
            "task": task,
            "k": k,
            "pass_at_k": scores[str(k)],
            "baseline_pass_at_k": base.get(task, {}).get(str(k)),
            "delta_vs_baseline": deltas.get(model, {}).get(task, {}).get(str(k)),
        }
        for model in models
        for task in tasks
        if (scores := summary["pass_at_k"][model].get(task))
        for k in summary["k"]
        if str(k) in scores
    ]
    lengths = summary.get("completion_length", {})
    completion_length = [
        {"model": model, "task": task, "mean_completion_tokens": lengths[model][task]}
        for model in models
        for task in tasks
        if task in lengths.get(model, {})
    ]
    training = summary.get("training", [])
    heldout = summary.get("heldout_loss", {"policies": {}, "reference": {}})
    heldout_loss = []
    for t in training:
        by_head = heldout["policies"].get(t["model"], {})
        if t["model"] in heldout["reference"]:
            by_head = {"head1": heldout["reference"][t["model"]]}
        heads = sorted((int(h.removeprefix("head")), loss) for h, loss in by_head.items())
        heldout_loss += [
            {"model": t["model"], "recipe": t["recipe"], "head": h, "heldout_loss": loss} for h, loss in heads
        ]
    return {
        "pass_at_k": pass_at_k,
        "completion_length": completion_length,
        "heldout_loss": heldout_loss,
        "training": [{k: t[k] for k in TRAINING_COLUMNS} for t in training],
    }


def write_report(
    eval_dirs: Sequence[str | Path],
    out_dir: str | Path,
    params: ExperimentReportParams | None = None,
    training_dirs: Sequence[str | Path] = (),
    baseline: str = "base_model",
) -> dict[str, Any]:
    """Write report.md, report.json, metrics.json and the plots into `out_dir` (which must exist).

    `eval_dirs`: one evaluation directory per (model, task). `training_dirs`: training asset directories (the
    policies, the tuned reference, the critic) named as the models they trained. `baseline`: the evaluated model
    pass@k changes are measured against. Returns the summary written to report.json.
    """
    params = params or ExperimentReportParams()
    if not eval_dirs:
        raise ReportError("eval_dirs: no evaluations to report on")
    out = Path(out_dir)
    evaluations = [(load_evaluation(d), d) for d in eval_dirs]
    summary = summarize([m for m, _ in evaluations], params.title, baseline)
    add_completions(
        summary,
        {
            (m["model"], m["task"]): load_completions(d, params.samples_per_model, params.sample_chars)
            for m, d in evaluations
        },
    )
    summary.update(summarize_training([load_training(d) for d in training_dirs]))
    plots = [
        plot(summary, out / name, params.plot_dpi)
        for plot, name in (
            (plot_pass_at_k, "pass_at_k.png"),
            (plot_speculative, "speculative.png"),
            (plot_heldout_loss, "heldout_loss.png"),
            (plot_training_curves, "training_curves.png"),
            (plot_token_weights, "token_weights.png"),
        )
    ]
    summary["plots"] = [p.name for p in plots if p]
    (out / "report.md").write_text(
        render_markdown(summary, summary["plots"], params.sample_chars), encoding="utf-8"
    )
    (out / "report.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / METRICS_FILE).write_text(json.dumps(dvc_metrics(summary), indent=2, sort_keys=True) + "\n")
    return summary


@click.command("experiment-report")
@click.argument(
    "eval_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write report.md, report.json, metrics.json and the PNG plots into.",
)
@click.option(
    "--training",
    "training_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A training asset directory (result.json, history.jsonl, token_weights.json), named as its model; "
    "repeat for each run.",
)
@click.option(
    "--baseline", default="base_model", show_default=True, help="Model that pass@k changes are against."
)
@click.option("--title", default=ExperimentReportParams().title, show_default=True)
def report_command(eval_dirs, out_dir, training_dirs, baseline, title):
    """Side-by-side report of evaluation directories written by `wmtp evaluate` or `wmtp evaluate-completions`
    (one per model and task), and of the training runs behind them."""
    params = ExperimentReportParams(title=title)
    with atomic_dir(out_dir) as tmp:
        write_report(eval_dirs, tmp, params, training_dirs, baseline)
        write_manifest(
            tmp,
            params=params.model_dump(),
            counts={"evaluations": len(eval_dirs), "training_runs": len(training_dirs)},
        )
    click.echo((Path(out_dir) / "report.md").read_text())


commands: list[click.Command] = [report_command]
