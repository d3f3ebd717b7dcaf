"""The experiment report's PNG plots, drawn with matplotlib from the report's summary: pass@k, self-speculative
decoding, held-out loss per head, training curves and token-weight histograms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on these machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from wmtp_core.eval.report_training import RHO1_HISTOGRAM  # noqa: E402


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
        if not any(v for m in models for v in summary["pass_at_k"][m].get(task, {}).values()):
            # zero-height bars draw nothing: say so rather than show empty axes
            ax.text(0.5, 0.5, "no task solved:\nevery pass@k is 0", transform=ax.transAxes, ha="center",
                    va="center", color="grey")  # fmt: skip
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


def _colours(summary: dict[str, Any]) -> dict[str, str]:
    """One colour per training run, the same in every training plot."""
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {t["model"]: palette[i % len(palette)] for i, t in enumerate(summary["training"])}


def plot_heldout_loss(summary: dict[str, Any], out_file: Path, dpi: int) -> Path | None:
    """Grouped bars: one group per head, one bar per policy; the tuned reference as a hatched bar in head 1's
    group (it predicts the next token only). The y axis is zoomed on the bars, since policies differ little."""
    policies, references = summary["heldout_loss"]["policies"], summary["heldout_loss"]["reference"]
    if not policies and not references:
        return None
    colours = _colours(summary)
    heads = sorted({int(h.removeprefix("head")) for losses in policies.values() for h in losses} | {1})
    slots = len(policies) + len(references)
    width = 0.8 / slots
    fig, ax = plt.subplots(figsize=(max(6.5, 2.5 + 0.3 * slots * len(heads)), 4.5), layout="constrained")
    values: list[float] = []

    def bars(slot: int, xs: list[int], ys: list[float], **style: Any) -> None:
        drawn = ax.bar([x + (slot - (slots - 1) / 2) * width for x in xs], ys, width, **style)
        ax.bar_label(drawn, fmt="%.3f", fontsize="x-small", rotation=90, padding=2)
        values.extend(ys)

    for slot, (model, losses) in enumerate(policies.items()):
        shown = [(j, losses[f"head{h}"]) for j, h in enumerate(heads) if f"head{h}" in losses]
        bars(slot, [j for j, _ in shown], [y for _, y in shown], label=model, color=colours[model])
    for slot, (model, loss) in enumerate(references.items(), start=len(policies)):
        style = {"color": "lightgrey", "edgecolor": "black", "hatch": "//"}
        bars(slot, [heads.index(1)], [loss], label=f"{model} (next-token reference)", **style)
    low, high = min(values), max(values)
    span = max(high - low, 0.05 * high, 1e-6)
    bottom = max(0.0, low - 0.6 * span)
    ax.set_ylim(bottom, high + 0.6 * span)  # room above for the value labels
    ax.set_xticks(range(len(heads)), [f"head {h}\n(predicts t+{h})" for h in heads])
    ax.set_ylabel(
        "held-out cross-entropy (nats/token)" + (f"\naxis starts at {bottom:.2f}" if bottom else "")
    )
    ax.set_title("held-out loss per head at the end of training")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(out_file, dpi=dpi)
    plt.close(fig)
    return out_file


def plot_training_curves(summary: dict[str, Any], out_file: Path, dpi: int) -> Path | None:
    """Side by side: the training objective `loss/total`, the mean held-out loss across heads (validation steps)
    of every run but the critic, and the critic's `value/loss`. One colour per run throughout."""
    curves, colours = summary["curves"], _colours(summary)
    recipes = {t["model"]: t["recipe"] for t in summary["training"]}
    panels = [
        (key, title, ylabel, [m for m in curves if key in curves[m] and (recipes[m] == "critic") == critic])
        for key, title, ylabel, critic in (
            ("loss/total", "training objective (loss/total)", "loss (nats/token, as optimised)", False),
            ("valid/loss/mean", "held-out loss, mean over heads", "cross-entropy (nats/token)", False),
            ("value/loss", "critic: value loss", "value loss", True),
        )
    ]
    panels = [p for p in panels if p[3]]
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, layout="constrained"
    )
    for ax, (key, title, ylabel, models) in zip(axes[0], panels, strict=True):
        values = []
        for model in models:
            steps, ys = zip(*curves[model][key], strict=True)
            # Validation runs on a few steps only: mark its points.
            marker = "o" if key == "valid/loss/mean" or len(steps) == 1 else None
            ax.plot(
                steps,
                ys,
                marker=marker,
                markersize=3,
                color=colours[model],
                label=f"{model} ({recipes[model]})",
            )
            values += ys
        if min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(out_file, dpi=dpi)
    plt.close(fig)
    return out_file


Panel = tuple[
    str, str, list[tuple[str | None, dict[str, Any]]]
]  # title, x label, [(legend label, histogram)]


def _weight_panels(summary: dict[str, Any]) -> list[list[Panel]]:
    """Groups of panels, each drawn from a new row: first one panel per TD-weighted run (and any other single
    histogram), then per Rho-1 run one panel per head with the excess loss of the tokens selected against those
    rejected (the head's weights histogram only when neither is stored)."""
    single: list[Panel] = []
    per_head: list[list[Panel]] = []
    for model, w in summary["weights"].items():
        hists = w["histograms"]
        rho1 = {name: m for name in hists if (m := RHO1_HISTOGRAM.fullmatch(name))}
        heads: list[Panel] = []
        for k in sorted({int(m[1]) for m in rho1.values()}):
            pair = [(kind, hists.get(f"rho1/head{k}/{kind}")) for kind in ("selected", "rejected")]
            pair = [(kind, h) for kind, h in pair if h]
            shown = pair or [(None, hists[f"rho1/head{k}/weights"])]
            xlabel = "excess loss vs reference (nats)" if pair else shown[0][1]["label"]
            heads.append((f"{model} ({w['recipe']}): head {k}", xlabel, shown))
        per_head += [heads] if heads else []
        for name, h in hists.items():
            if name not in rho1:
                title = f"{model} ({w['recipe']})" + ("" if name == "weights" else f": {name}")
                single.append((title, h["label"], [(None, h)]))
    return [group for group in (single, *per_head) if group]


def plot_token_weights(summary: dict[str, Any], out_file: Path, dpi: int) -> Path | None:
    """The stored histograms, drawn from their bin counts: one panel per TD-weighted run, one per Rho-1 head."""
    groups = _weight_panels(summary)
    if not groups:
        return None
    ncols = min(4, max(map(len, groups)))
    rows = [group[i : i + ncols] for group in groups for i in range(0, len(group), ncols)]
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(4.3 * ncols, 3.4 * len(rows)), squeeze=False, layout="constrained"
    )
    for ax_row, panels in zip(axes, rows, strict=True):
        for ax, (title, xlabel, hists) in zip(ax_row, panels, strict=False):
            counts = [c for _, h in hists for c in h["counts"] if c > 0]
            for label, h in hists:
                fill = label != "rejected"  # the rejected tokens as an outline over the selected ones
                ax.stairs(h["counts"], h["edges"], fill=fill, alpha=0.55, linewidth=1.5, label=label)
            if counts and max(counts) / min(counts) > 100:
                ax.set_yscale("log")  # clipped weights pile up in the end bins
            ax.set_title(title, fontsize="medium")
            ax.set_xlabel(xlabel, fontsize="small")
            ax.set_ylabel("tokens")
            if any(label for label, _ in hists):
                ax.legend(fontsize="small")
        for ax in ax_row[len(panels) :]:
            ax.set_visible(False)
    fig.suptitle("token weights (values outside the range counted in the end bins)")
    fig.savefig(out_file, dpi=dpi)
    plt.close(fig)
    return out_file
