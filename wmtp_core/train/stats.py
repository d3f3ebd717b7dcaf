"""Training statistics summed over micro-batches and ranks, then turned into the figures that are logged.

Each kind keeps sums (never per-token lists), so combining ranks is one `all_gather_object` per logging step and
the figures equal what one process holding the global batch would report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

# kind -> names of its components; min/max combine with min/max, the rest by summing
_KINDS = {
    "sum": ("sum",),
    "masked": ("n", "sum", "sumsq", "min", "max"),
    "weights": ("n", "sum", "sumsq", "min", "max", "clipped", "wlogw"),
    "ev": ("n", "resid", "resid_sq", "target", "target_sq"),
}


class StatSums:
    def __init__(self) -> None:
        self.kind: dict[str, str] = {}
        self.values: dict[str, list[Tensor]] = defaultdict(list)
        # Histograms over the whole run: this rank's counts since the last reduce, and the totals over every rank
        # (identical on all ranks after each reduce, so any rank's copy can go into a checkpoint).
        self.hist_meta: dict[str, tuple[list[float], str]] = {}
        self.hist_local: dict[str, Tensor] = {}
        self.hist_totals: dict[str, list[float]] = {}
        self._edges: dict[tuple[str, torch.device], Tensor] = {}

    def _put(self, name: str, kind: str, parts: list[Tensor]) -> None:
        self.kind[name] = kind
        self.values[name].append(torch.stack([p.detach().double().reshape(()) for p in parts]))

    def add(self, name: str, value: Tensor) -> None:
        """A partial sum (e.g. a loss already divided by a global count)."""
        self._put(name, "sum", [value])

    def add_masked(self, name: str, x: Tensor, mask: Tensor) -> None:
        x = x.detach().float()
        sel = x[mask]
        big = torch.tensor(math.inf)
        self._put(name, "masked", [mask.sum(), sel.sum(), (sel**2).sum(),
                                   sel.min() if sel.numel() else big, sel.max() if sel.numel() else -big])  # fmt: skip

    def add_weights(self, name: str, w: Tensor, mask: Tensor, lo: float | None = None, hi: float | None = None) -> None:
        sel = w.detach().float()[mask]
        big = torch.tensor(math.inf)
        clipped = torch.zeros(())
        if lo is not None and hi is not None:
            clipped = ((sel <= lo) | (sel >= hi)).sum()
        positive = sel.clamp_min(1e-30)
        self._put(name, "weights", [mask.sum(), sel.sum(), (sel**2).sum(), sel.min() if sel.numel() else big,
                                    sel.max() if sel.numel() else -big, clipped,
                                    (sel * positive.log()).sum()])  # fmt: skip

    def add_explained_variance(self, name: str, pred: Tensor, target: Tensor, mask: Tensor) -> None:
        resid = (target - pred).float()[mask]
        t = target.float()[mask]
        self._put(name, "ev", [mask.sum(), resid.sum(), (resid**2).sum(), t.sum(), (t**2).sum()])

    def add_histogram(self, name: str, x: Tensor, mask: Tensor, edges: Sequence[float], label: str) -> None:
        """Count the masked values of `x` into fixed bins (values outside `edges` go to the end bins)."""
        if name not in self.hist_meta:
            self.hist_meta[name] = (list(map(float, edges)), label)
        if (name, x.device) not in self._edges:  # built once per histogram, not on every micro-batch
            self._edges[name, x.device] = torch.tensor(self.hist_meta[name][0], device=x.device)
        e = self._edges[name, x.device]
        sel = x.detach().float()[mask].clamp(e[0], e[-1])
        counts = torch.bincount(torch.bucketize(sel, e[1:-1], right=True), minlength=len(e) - 1).double()
        self.hist_local[name] = self.hist_local[name] + counts if name in self.hist_local else counts

    def histograms(self) -> dict[str, dict]:
        """The run's histograms over every rank, as of the last reduce: {name: {edges, counts, label}}."""
        return {name: {"edges": self.hist_meta[name][0], "counts": [int(c) for c in counts],
                       "label": self.hist_meta[name][1]}
                for name, counts in sorted(self.hist_totals.items())}  # fmt: skip

    def load_histograms(self, saved: dict[str, dict] | None) -> None:
        """Restore `histograms()` from a checkpoint's trainer state."""
        for name, h in (saved or {}).items():
            self.hist_meta[name] = (h["edges"], h["label"])
            self.hist_totals[name] = [float(c) for c in h["counts"]]

    def _local_histograms(self) -> dict[str, tuple]:
        return {name: (self.hist_meta[name], counts.tolist()) for name, counts in self.hist_local.items()}

    def _add_to_totals(self, parts: list[dict[str, tuple]]) -> None:
        self.hist_local.clear()
        for part in parts:
            for name, (meta, counts) in part.items():
                self.hist_meta.setdefault(name, (meta[0], meta[1]))
                total = self.hist_totals.setdefault(name, [0.0] * len(counts))
                for i, c in enumerate(counts):
                    total[i] += c

    def fold_histograms(self, group=None) -> None:
        """Add every rank's pending histogram counts to the totals (a collective), e.g. before a checkpoint."""
        self._add_to_totals(_gather(self._local_histograms(), group))

    def reduce(self, group=None) -> dict[str, float]:
        """The figures over every rank (a collective: every rank calls it), then cleared; histogram counts are
        added to the run's totals."""
        local = {name: (self.kind[name], torch.stack(parts).tolist()) for name, parts in self.values.items()}
        hist = self._local_histograms()
        gathered = _gather((local, hist), group)
        self._add_to_totals([h for _, h in gathered])
        merged: dict[str, tuple[str, list[float]]] = {}
        for part, _ in gathered:
            for name, (kind, rows) in part.items():
                comps = _KINDS[kind]
                acc = merged.setdefault(name, (kind, [math.inf if c == "min" else -math.inf if c == "max" else 0.0
                                                      for c in comps]))[1]  # fmt: skip
                for row in rows:
                    for i, c in enumerate(comps):
                        acc[i] = min(acc[i], row[i]) if c == "min" else max(acc[i], row[i]) if c == "max" else acc[i] + row[i]
        self.values.clear()
        return {k: v for name, (kind, acc) in sorted(merged.items()) for k, v in _figures(name, kind, acc).items()}


def _gather(obj, group) -> list:
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, obj, group=group)
        return gathered
    return [obj]


def _figures(name: str, kind: str, acc: list[float]) -> dict[str, float]:
    c = dict(zip(_KINDS[kind], acc, strict=True))
    if kind == "sum":
        return {name: c["sum"]}
    if c["n"] == 0:
        return {}
    n = c["n"]
    if kind == "ev":
        var_t = c["target_sq"] / n - (c["target"] / n) ** 2
        var_r = c["resid_sq"] / n - (c["resid"] / n) ** 2
        return {f"{name}/explained_variance": 1.0 - var_r / var_t if var_t > 1e-12 else float("nan")}
    mean = c["sum"] / n
    out = {f"{name}/mean": mean, f"{name}/std": math.sqrt(max(c["sumsq"] / n - mean**2, 0.0)),
           f"{name}/min": c["min"], f"{name}/max": c["max"]}  # fmt: skip
    if kind == "weights":
        out[f"{name}/clipped_fraction"] = c["clipped"] / n
        # Entropy of the weights normalised to a distribution p = w / S: log S - sum(w log w) / S.
        if c["sum"] > 0:
            out[f"{name}/entropy"] = math.log(c["sum"]) - c["wlogw"] / c["sum"]
    return out
