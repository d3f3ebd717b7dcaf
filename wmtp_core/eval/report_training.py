"""Training asset directories as the experiment report reads them: `load_training` checks one run's `result.json`,
`history.jsonl` (the curves) and `token_weights.json` (the histograms); `summarize_training` arranges the runs
for the report, keyed by model name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from wmtp_core.eval.results import ReportError

# A training asset directory as `wmtp_core.train.loop` writes it (named here: importing the loop pulls in torch).
TRAIN_RESULT_FILE = "result.json"
TRAIN_HISTORY_FILE = "history.jsonl"
TOKEN_WEIGHTS_FILE = "token_weights.json"
TRAINING_COLUMNS = (
    "model",
    "recipe",
    "steps",
    "tokens",
    "rows",
    "world_size",
    "train_seconds",
    "mlflow_run_id",
)
VALID_HEAD = re.compile(r"valid/loss/head(\d+)")
RHO1_HISTOGRAM = re.compile(r"rho1/head(\d+)/(selected|rejected|weights)")
NOT_POLICIES = ("reference", "critic")  # recipes whose held-out loss is no policy's


def _number(value: Any, where: str) -> float | None:
    """A figure read from a JSON file; None when absent or not finite (a NaN loss is no figure)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{where}: expected a number, got {value!r}")
    return float(value) if math.isfinite(value) else None


def _count(value: Any, where: str) -> int | None:
    number = _number(value, where)
    if number is not None and (number < 0 or not number.is_integer()):
        raise ReportError(f"{where}: expected a whole number >= 0, got {value!r}")
    return None if number is None else int(number)


def _read_json(path: Path, missing: str) -> Any:
    if not path.is_file():
        raise ReportError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from e


def _heads(figures: dict[str, Any], where: str) -> dict[str, float]:
    """{"head1": loss, ...} from the `valid/loss/head{k}` keys, in head order; absent figures left out."""
    found = {
        int(m[1]): _number(v, f"{where}: key {k!r}")
        for k, v in figures.items()
        if (m := VALID_HEAD.fullmatch(k))
    }
    return {f"head{k}": v for k, v in sorted(found.items()) if v is not None}


def _curves(path: Path) -> dict[str, list[list[float]]]:
    """[step, value] points of `loss/total`, of the mean held-out loss across heads (on validation steps) and of
    `value/loss`; a series without points is left out, and everything when there is no history.jsonl."""
    if not path.is_file():
        return {}
    curves: dict[str, list[list[float]]] = {"loss/total": [], "valid/loss/mean": [], "value/loss": []}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(row, dict) or "step" not in row:
            raise ReportError(f"{where}: key 'step' missing; expected one object per logged step")
        step = _count(row["step"], f"{where}: key 'step'")
        heldout = list(_heads(row, where).values())
        for key, value in (
            ("loss/total", _number(row.get("loss/total"), f"{where}: key 'loss/total'")),
            ("valid/loss/mean", sum(heldout) / len(heldout) if heldout else None),
            ("value/loss", _number(row.get("value/loss"), f"{where}: key 'value/loss'")),
        ):
            if value is not None and step is not None:
                curves[key].append([step, value])
    return {k: v for k, v in curves.items() if v}


def _token_weights(path: Path) -> dict[str, Any] | None:
    """The stored histograms, checked: {name: {edges, counts, label, tokens}}; None without the file."""
    if not path.exists():
        return None
    data = _read_json(path, "token weights not found")
    histograms = data.get("histograms") if isinstance(data, dict) else None
    if not isinstance(histograms, dict) or not histograms:
        raise ReportError(
            f"{path}: key 'histograms' missing or empty; expected {{NAME: {{edges, counts, label}}}}"
        )
    out = {}
    for name, h in histograms.items():
        where = f"{path}: histograms[{name!r}]"
        edges, counts = (h.get("edges"), h.get("counts")) if isinstance(h, dict) else (None, None)
        if not isinstance(edges, list) or not isinstance(counts, list) or not counts:
            raise ReportError(f"{where}: expected an object with lists 'edges' (B + 1) and 'counts' (B >= 1)")
        if len(edges) != len(counts) + 1:
            raise ReportError(
                f"{where}: {len(edges)} edges for {len(counts)} counts; expected len(counts) + 1 = {len(counts) + 1}"
            )
        edges = [_number(e, f"{where}: key 'edges'") for e in edges]
        if None in edges or any(b <= a for a, b in pairwise(edges)):
            raise ReportError(f"{where}: key 'edges' must be finite and increasing, got {h['edges']}")
        counts = [_count(c, f"{where}: key 'counts'") for c in counts]
        if None in counts:
            raise ReportError(f"{where}: key 'counts' holds a null or NaN; expected whole numbers >= 0")
        out[name] = {
            "edges": edges,
            "counts": counts,
            "label": str(h.get("label") or name),
            "tokens": sum(counts),
        }
    return out


def load_training(train_dir: str | Path) -> dict[str, Any]:
    """One training asset directory as the report reads it; the model name is the directory's name, which is also
    the name its evaluations carry.

    `result.json` is required and needs `recipe`; any other key (and any figure in `final`) may be missing.
    `history.jsonl` (one object per logged step) gives the curves; `token_weights.json` (weighted recipes) the
    histograms: {"histograms": {NAME: {"edges": [B + 1], "counts": [B], "label": str}}}.
    """
    d = Path(train_dir)
    path = d / TRAIN_RESULT_FILE
    result = _read_json(path, "training result not found; materialize the training asset first")
    if not isinstance(result, dict) or not isinstance(result.get("recipe"), str):
        raise ReportError(
            f"{path}: key 'recipe' missing or not a string; expected an object naming the recipe"
        )
    final = result.get("final") or {}
    if not isinstance(final, dict):
        raise ReportError(f"{path}: key 'final' is a {type(final).__name__}; expected an object of figures")
    run_id = result.get("mlflow_run_id")
    return {
        "model": d.resolve().name,
        "recipe": result["recipe"],
        **{k: _count(result.get(k), f"{path}: key {k!r}") for k in ("steps", "tokens", "rows", "world_size")},
        "train_seconds": _number(result.get("train_seconds"), f"{path}: key 'train_seconds'"),
        "mlflow_run_id": None if run_id is None else str(run_id),
        "heldout": _heads(final, f"{path}: final"),
        "curves": _curves(d / TRAIN_HISTORY_FILE),
        "histograms": _token_weights(d / TOKEN_WEIGHTS_FILE),
    }


def _selected_fraction(histograms: dict[str, Any]) -> dict[str, float]:
    """Rho-1: the fraction of tokens each head kept, {"head1": 0.6, ...}, from its selected and rejected counts."""
    out = {}
    for k in sorted({int(m[1]) for name in histograms if (m := RHO1_HISTOGRAM.fullmatch(name))}):
        kept, dropped = (
            histograms.get(f"rho1/head{k}/{s}", {}).get("tokens", 0) for s in ("selected", "rejected")
        )
        if kept + dropped:
            out[f"head{k}"] = kept / (kept + dropped)
    return out


def summarize_training(trainings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The training side of the report: a summary row per run, held-out losses (policies per head, the tuned
    reference's next-token loss), curves and token-weight histograms, each keyed by model name."""
    names = [t["model"] for t in trainings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ReportError(f"training_dirs: two directories named {twice[0]!r}; expected one per model")
    return {
        "training": [{k: t[k] for k in TRAINING_COLUMNS} for t in trainings],
        "heldout_loss": {
            "policies": {
                t["model"]: t["heldout"]
                for t in trainings
                if t["heldout"] and t["recipe"] not in NOT_POLICIES
            },
            "reference": {
                t["model"]: t["heldout"]["head1"]
                for t in trainings
                if t["recipe"] == "reference" and "head1" in t["heldout"]
            },
        },
        "curves": {t["model"]: t["curves"] for t in trainings if t["curves"]},
        "weights": {
            t["model"]: {
                "recipe": t["recipe"],
                "histograms": t["histograms"],
                "selected_fraction": _selected_fraction(t["histograms"]),
            }
            for t in trainings
            if t["histograms"]
        },
    }
