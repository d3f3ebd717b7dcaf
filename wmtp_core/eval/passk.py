"""pass@k with the unbiased estimator of Chen et al. 2021 (Codex paper, eq. 1 and its numerically stable form).

For a task with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples drawn
without replacement from the n include at least one that passes. The benchmark score is its mean over tasks.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task: n samples, c correct, k <= n."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i) equals 1 - C(n-c,k)/C(n,k) without huge binomials.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def counts_per_task(samples: pl.DataFrame) -> pl.DataFrame:
    """task_id, n (samples), c (passed) from a per-sample table with `task_id` and boolean `passed`."""
    for col in ("task_id", "passed"):
        if col not in samples.columns:
            raise ValueError(f"samples: missing column {col!r}; have {samples.columns}")
    return (
        samples.group_by("task_id", maintain_order=True)
        .agg(pl.len().alias("n"), pl.col("passed").cast(pl.Int64).sum().alias("c"))
        .with_columns(pl.col("n").cast(pl.Int64))
    )


def pass_at_k_per_task(samples: pl.DataFrame, ks: Iterable[int]) -> pl.DataFrame:
    """One row per task: task_id, n, c and a `pass@k` column for each k (every task needs n >= k)."""
    counts = counts_per_task(samples)
    ks = sorted(set(ks))
    n_min = int(counts["n"].min())
    too_big = [k for k in ks if k > n_min]
    if too_big:
        short = counts.filter(pl.col("n") < max(too_big))["task_id"].head(3).to_list()
        raise ValueError(f"k={too_big}: larger than the {n_min} samples of some tasks (e.g. {short})")
    columns = {
        f"pass@{k}": [pass_at_k(n, c, k) for n, c in zip(counts["n"], counts["c"], strict=True)] for k in ks
    }
    return counts.with_columns(pl.Series(name, values, dtype=pl.Float64) for name, values in columns.items())


def mean_pass_at_k(samples: pl.DataFrame, ks: Iterable[int]) -> dict[int, float]:
    """pass@k averaged over tasks, for each k."""
    per_task = pass_at_k_per_task(samples, ks)
    return {k: float(per_task[f"pass@{k}"].mean()) for k in sorted(set(ks))}


def pass_at_k_curve(samples: pl.DataFrame) -> pl.DataFrame:
    """Mean pass@k for every k from 1 to the smallest n over tasks: columns k, pass_at_k."""
    counts = counts_per_task(samples)
    n_min = int(counts["n"].min())
    means = mean_pass_at_k(samples, range(1, n_min + 1))
    return pl.DataFrame({"k": list(means), "pass_at_k": list(means.values())}, schema={"k": pl.Int64, "pass_at_k": pl.Float64})
