"""The experiment report: pass@k of every evaluated model side by side, speculative-decoding acceptance, plots.

Inputs are evaluation directories in the format of `wmtp_core.eval.results`, written by `wmtp evaluate` or
`wmtp evaluate-completions` (their `metrics.json`); outputs are
`report.md`, `report.json` (everything), `metrics.json` (the numbers DVC tracks) and PNG plots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import matplotlib

matplotlib.use("Agg")  # no display on these machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from wmtp_core.eval.params import ExperimentReportParams  # noqa: E402
from wmtp_core.eval.results import METRICS_FILE, ReportError, load_evaluation  # noqa: E402
from wmtp_core.storage import atomic_dir, write_manifest  # noqa: E402


def _ordered_unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _coverage(m: dict[str, Any]) -> str:
    if m["limit"] is None:
        return f"all {m['n_tasks']}"
    return f"{m['n_tasks']} of {m['n_tasks_available']} (limit {m['limit']})"


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


def _speedup_cell(spec: dict[str, Any]) -> str:
    """The median speed-up with its range and repeats, or why there is no figure."""
    if spec["speedup_not_meaningful"]:
        return f"not meaningful: {spec['speedup_not_meaningful']}"
    return (
        f"{spec['speedup']:.2f}x ({spec['speedup_min']:.2f}–{spec['speedup_max']:.2f}x, "
        f"{spec['repeats']} repeats)"
    )


def summarize(evaluations: Sequence[dict[str, Any]], title: str) -> dict[str, Any]:
    """Arrange the evaluations by model and task; refuses two evaluations of the same (model, task)."""
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
    coverage = {
        model: {
            task: {k: by[model, task][k] for k in ("n_tasks", "n_tasks_available", "limit", "n_samples")}
            for task in tasks
            if (model, task) in by
        }
        for model in models
    }
    return {
        "title": title,
        "models": models,
        "tasks": tasks,
        "k": ks,
        "pass_at_k": pass_at_k,
        "speculative": speculative,
        "coverage": coverage,
        "limited": any(m["limit"] is not None for m in evaluations),
    }


def render_markdown(summary: dict[str, Any], plots: Sequence[str]) -> str:
    models, tasks, ks = summary["models"], summary["tasks"], summary["k"]
    lines = [f"# {summary['title']}", ""]
    if summary["limited"]:
        lines += [
            "**Some evaluations cover only part of a task set (limit set explicitly); see Coverage.**",
            "",
        ]
    header = ["model"] + [f"{task} pass@{k}" for task in tasks for k in ks]
    lines += ["## pass@k", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        cells = [model]
        for task in tasks:
            scores = summary["pass_at_k"][model].get(task, {})
            cells += [_fmt(scores.get(str(k))) for k in ks]
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Self-speculative decoding (greedy, heads 2..n propose, head 1 verifies)", ""]
    lines += [
        "| model | task | prompts | tokens / forward | speedup vs greedy | identical to greedy | acceptance per head |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for task, spec in summary["speculative"][model].items():
            if not spec:
                lines.append(f"| {model} | {task} | – | – | – | – | not measured |")
                continue
            rates = ", ".join(f"{r:.2f}" for r in spec.get("acceptance_rate_per_head", [])) or "–"
            lines.append(
                f"| {model} | {task} | {spec['prompts']} | {spec['tokens_per_forward']:.2f} | "
                f"{_speedup_cell(spec)} | {'yes' if spec['identical_to_greedy'] else '**NO**'} | {rates} |"
            )
    lines += [
        "",
        "Speed-up: greedy seconds over self-speculative seconds, median of the timed repeats (range in "
        "brackets); both decoders timed alike, after an untimed warm-up, in alternating order.",
    ]

    lines += [
        "",
        "## Coverage",
        "",
        "| model | task | tasks evaluated | samples per task |",
        "|---|---|---|---|",
    ]
    for model in models:
        for task, cov in summary["coverage"][model].items():
            lines.append(f"| {model} | {task} | {_coverage(cov)} | {cov['n_samples']} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_pass_at_k(summary: dict[str, Any], out_file: Path, dpi: int) -> Path:
    models, tasks, ks = summary["models"], summary["tasks"], summary["k"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    width = 0.8 / max(len(models), 1)
    for ax, task in zip(axes[0], tasks, strict=True):
        for i, model in enumerate(models):
            scores = summary["pass_at_k"][model].get(task, {})
            xs = [j + i * width for j in range(len(ks))]
            ax.bar(xs, [scores.get(str(k), 0.0) for k in ks], width=width, label=model)
        ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(ks))], [f"pass@{k}" for k in ks])
        ax.set_ylim(0, 1)
        ax.set_title(task)
    axes[0][0].set_ylabel("fraction of tasks solved")
    axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_file, dpi=dpi)
    plt.close(fig)
    return out_file


def plot_speculative(summary: dict[str, Any], out_file: Path, dpi: int) -> Path | None:
    rows = [
        (f"{model}\n{task}", spec)
        for model in summary["models"]
        for task, spec in summary["speculative"][model].items()
        if spec
    ]
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [r[0] for r in rows]
    left.bar(labels, [r[1]["tokens_per_forward"] for r in rows], label="tokens / forward")
    shown = [(x, spec) for x, (_, spec) in enumerate(rows) if not spec["speedup_not_meaningful"]]
    if shown:
        medians = [spec["speedup"] for _, spec in shown]
        left.errorbar(
            [x for x, _ in shown],
            medians,
            yerr=[
                [m - spec["speedup_min"] for m, (_, spec) in zip(medians, shown, strict=True)],
                [spec["speedup_max"] - m for m, (_, spec) in zip(medians, shown, strict=True)],
            ],
            fmt="o",
            color="black",
            capsize=3,
            label="speedup vs greedy (median, range)",
        )
    for x, (_, spec) in enumerate(rows):
        if spec["speedup_not_meaningful"]:
            # No point where there is no figure: the reason is in report.md and report.json.
            left.text(x, 1.0, "speed-up\nnot meaningful", ha="center", va="bottom", fontsize="x-small")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set_ylim(0, left.get_ylim()[1] * 1.25)  # room for the labels above the bars
    left.set_title("self-speculative decoding")
    left.legend(fontsize="small")
    left.tick_params(axis="x", labelsize="small")
    for label, spec in rows:
        rates = spec.get("acceptance_rate_per_head", [])
        right.plot(range(2, 2 + len(rates)), rates, marker="o", label=label.replace("\n", " / "))
    right.xaxis.get_major_locator().set_params(integer=True)  # heads are whole numbers
    right.set_xlabel("head (predicts token t+k)")
    right.set_ylabel("acceptance rate")
    right.set_ylim(0, 1)
    right.set_title("proposals accepted per head")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_file, dpi=dpi)
    plt.close(fig)
    return out_file


def dvc_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers DVC tracks: {model: {task: {pass@k..., tokens_per_forward, speedup}}}; no speedup where it is
    not meaningful (report.json says why)."""
    out: dict[str, Any] = {}
    for model in summary["models"]:
        for task, scores in summary["pass_at_k"][model].items():
            entry = {f"pass@{k}": v for k, v in scores.items()}
            spec = summary["speculative"][model].get(task)
            if spec:
                entry["tokens_per_forward"] = spec["tokens_per_forward"]
                if not spec["speedup_not_meaningful"]:
                    entry["speculative_speedup"] = spec["speedup"]
            out.setdefault(model, {})[task] = entry
    return out


def write_report(
    eval_dirs: Sequence[str | Path], out_dir: str | Path, params: ExperimentReportParams | None = None
) -> dict[str, Any]:
    """Write report.md, report.json, metrics.json and the plots into `out_dir` (which must exist)."""
    params = params or ExperimentReportParams()
    if not eval_dirs:
        raise ReportError("eval_dirs: no evaluations to report on")
    out = Path(out_dir)
    summary = summarize([load_evaluation(d) for d in eval_dirs], params.title)
    plots = [plot_pass_at_k(summary, out / "pass_at_k.png", params.plot_dpi)]
    spec_plot = plot_speculative(summary, out / "speculative.png", params.plot_dpi)
    if spec_plot:
        plots.append(spec_plot)
    summary["plots"] = [p.name for p in plots]
    (out / "report.md").write_text(render_markdown(summary, summary["plots"]))
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
@click.option("--title", default=ExperimentReportParams().title, show_default=True)
def report_command(eval_dirs, out_dir, title):
    """Side-by-side report of evaluation directories written by `wmtp evaluate` or `wmtp evaluate-completions`
    (one per model and task)."""
    params = ExperimentReportParams(title=title)
    with atomic_dir(out_dir) as tmp:
        write_report(eval_dirs, tmp, params)
        write_manifest(tmp, params=params.model_dump(), counts={"evaluations": len(eval_dirs)})
    click.echo((Path(out_dir) / "report.md").read_text())


commands: list[click.Command] = [report_command]
