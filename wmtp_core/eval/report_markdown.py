"""report.md: the experiment report's summary rendered as Markdown (`render_markdown`, one `_md_*` section per
table), and the helpers that make untrusted model output safe to show there (`printable`, `fenced`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wmtp_core.eval.report_training import TRAINING_COLUMNS


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _coverage(m: dict[str, Any]) -> str:
    if m["limit"] is None:
        return f"all {m['n_tasks']}"
    return f"{m['n_tasks']} of {m['n_tasks_available']} (limit {m['limit']})"


def _speedup_cell(spec: dict[str, Any]) -> str:
    """The median speed-up with its range and repeats, or why there is no figure."""
    if spec["speedup_not_meaningful"]:
        return f"not meaningful: {spec['speedup_not_meaningful']}"
    return (
        f"{spec['speedup']:.2f}x ({spec['speedup_min']:.2f}–{spec['speedup_max']:.2f}x, "
        f"{spec['repeats']} repeats)"
    )


def _cell(x: float | int | str | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}" if isinstance(x, float) else x


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *map(_row, rows)]


def _escaped(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def printable(text: str) -> str:
    """Model output made safe to print: control, format (bidirectional overrides, zero-width), surrogate, private,
    unassigned and line/paragraph-separator characters become escapes like `\\x1b`; newlines and tabs stay."""
    return "".join(
        _escaped(ch)
        if ch not in "\n\t"
        and (unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp"))
        else ch
        for ch in text
    )


def fenced(text: str, info: str = "text") -> str:
    """A Markdown code block that `text` cannot close: the fence is longer than any run of backticks inside."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{printable(text).rstrip(chr(10))}\n{fence}"


def _inline(text: str) -> str:
    """Untrusted text (a task id) for a Markdown line: printable, with the characters Markdown acts on escaped."""
    return re.sub(r"([\\`*_\[\]<>|#!~])", r"\\\1", printable(text))


def _md_pass_at_k(summary: dict[str, Any]) -> list[str]:
    models, tasks, ks = summary["models"], summary["tasks"], summary["k"]
    baseline, deltas = summary["baseline"], summary["delta_vs_baseline"]
    rows = []
    for model in models:
        cells = [model]
        for task in tasks:
            scores = summary["pass_at_k"][model].get(task, {})
            delta = deltas.get(model, {}).get(task, {})
            for k in map(str, ks):
                cells.append(_fmt(scores.get(k)) + (f" ({delta[k]:+.3f})" if k in delta else ""))
        rows.append(cells)
    lines = ["## pass@k", ""]
    if deltas:
        lines += [
            f"In brackets: the change against `{baseline}`, the untrained base model, on the same task.",
            "",
        ]
    elif baseline not in models:
        lines += [f"`{baseline}` (the baseline) was not evaluated, so no changes against it are shown.", ""]
    greedy = summary.get("greedy_pass_at_1") or {}
    if greedy:
        for model, cells in zip(models, rows, strict=True):
            cells += [_fmt(greedy.get(model, {}).get(task)) for task in tasks]
        lines += ["Greedy pass@1: one greedy completion per task, beside the sampled pass@k.", ""]
    header = [f"{task} pass@{k}" for task in tasks for k in ks] + [f"{task} greedy pass@1" for task in tasks if greedy]
    return lines + _table(["model", *header], rows)


def _md_completion_length(summary: dict[str, Any]) -> list[str]:
    lengths = summary["completion_length"]
    if not lengths:
        return []
    rows = [[m] + [_cell(lengths.get(m, {}).get(t), 1) for t in summary["tasks"]] for m in summary["models"]]
    return [
        "",
        "## Mean completion length (tokens)",
        "",
        *_table(["model", *summary["tasks"]], rows),
        "",
        "–: not recorded (completions judged from a file carry no token counts) or no samples.parquet.",
    ]


def _md_speculative(summary: dict[str, Any]) -> list[str]:
    lines = ["", "## Self-speculative decoding (greedy, heads 2..n propose, head 1 verifies)", ""]
    lines += [
        "| model | task | prompts | tokens / forward | speedup vs greedy | identical to greedy | acceptance per head |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in summary["models"]:
        for task, spec in summary["speculative"][model].items():
            if not spec:
                lines.append(f"| {model} | {task} | – | – | – | – | not measured |")
                continue
            rates = ", ".join(f"{r:.2f}" for r in spec.get("acceptance_rate_per_head", [])) or "–"
            lines.append(
                f"| {model} | {task} | {spec['prompts']} | {spec['tokens_per_forward']:.2f} | "
                f"{_speedup_cell(spec)} | {'yes' if spec['identical_to_greedy'] else '**NO**'} | {rates} |"
            )
    return lines + [
        "",
        "Speed-up: greedy seconds over self-speculative seconds, median of the timed repeats (range in "
        "brackets); both decoders timed alike, after an untimed warm-up, in alternating order.",
    ]


def _md_heldout(summary: dict[str, Any]) -> list[str]:
    policies, references = summary["heldout_loss"]["policies"], summary["heldout_loss"]["reference"]
    if not policies and not references:
        return []
    recipes = {t["model"]: t["recipe"] for t in summary["training"]}
    heads = sorted({int(h.removeprefix("head")) for losses in policies.values() for h in losses} | {1})
    rows = [
        [model, recipes[model], *(_cell(losses.get(f"head{h}")) for h in heads)]
        + [_cell(sum(losses.values()) / len(losses))]
        for model, losses in policies.items()
    ]
    rows += [[model, recipes[model], _cell(loss), *["–"] * len(heads)] for model, loss in references.items()]
    return [
        "",
        "## Held-out loss per head (end of training)",
        "",
        *_table(["model", "recipe", *(f"head {h}" for h in heads), "mean"], rows),
        "",
        "Cross-entropy in nats per token on the validation rows, unweighted; head k predicts token t+k. The tuned "
        "reference is a next-token model: compare it with head 1.",
    ]


def _md_training(summary: dict[str, Any]) -> list[str]:
    if not summary["training"]:
        return []
    header = ["model", "recipe", "steps", "tokens", "rows", "world size", "train seconds", "MLflow run"]
    rows = [[_cell(t[k], 1) for k in TRAINING_COLUMNS] for t in summary["training"]]
    return ["", "## Training runs", "", *_table(header, rows)]


def _md_weights(summary: dict[str, Any]) -> list[str]:
    if not summary["weights"]:
        return []
    rows = [
        [
            model,
            f"`{name}`",
            _cell(h["tokens"]),
            f"{h['edges'][0]:g} to {h['edges'][-1]:g}",
            _inline(h["label"]),
        ]
        for model, w in summary["weights"].items()
        for name, h in w["histograms"].items()
    ]
    lines = ["", "## Token weights", "", *_table(["model", "histogram", "tokens", "range", "what"], rows), ""]
    lines.append("Values outside the range are counted in the end bins.")
    for model, w in summary["weights"].items():
        if w["selected_fraction"]:
            kept = ", ".join(
                f"head {h.removeprefix('head')} {f:.1%}" for h, f in w["selected_fraction"].items()
            )
            lines.append(f"{model}: tokens Rho-1 selected: {kept}.")
    return lines


def _md_coverage(summary: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Coverage",
        "",
        "| model | task | tasks evaluated | samples per task |",
        "|---|---|---|---|",
    ]
    for model in summary["models"]:
        for task, cov in summary["coverage"][model].items():
            lines.append(f"| {model} | {task} | {_coverage(cov)} | {cov['n_samples']} |")
    return lines


def _md_samples(summary: dict[str, Any], chars: int) -> list[str]:
    if not summary["samples"]:
        return []
    lines = [
        "",
        "## Sample completions",
        "",
        f"The first sample of the first tasks of each evaluation, cut at {chars} characters; control and invisible "
        "characters are shown as escapes such as `\\x1b`.",
    ]
    for model, tasks in summary["samples"].items():
        for task, samples in tasks.items():
            lines += ["", f"### {model} on {task}"]
            for s in samples:
                tokens = "" if s["n_tokens"] is None else f", {s['n_tokens']} tokens"
                lines += [
                    "",
                    f"**{_inline(str(s['task_id']))}**, sample {s['sample']}: {s['status']}{tokens}",
                    "",
                ]
                lines.append(fenced(s["completion"]))
                if s["truncated"]:
                    lines += ["", f"(first {len(s['completion'])} of {s['chars']} characters)"]
    return lines


def render_markdown(summary: dict[str, Any], plots: Sequence[str], sample_chars: int = 400) -> str:
    lines = [f"# {summary['title']}", ""]
    if summary["limited"]:
        lines += [
            "**Some evaluations cover only part of a task set (limit set explicitly); see Coverage.**",
            "",
        ]
    lines += _md_pass_at_k(summary)
    lines += _md_completion_length(summary)
    lines += _md_heldout(summary)
    lines += _md_training(summary)
    lines += _md_weights(summary)
    lines += _md_speculative(summary)
    lines += _md_coverage(summary)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += _md_samples(summary, sample_chars)
    return "\n".join(lines) + "\n"
