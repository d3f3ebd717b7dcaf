"""Choosing training rows from the index, deterministically from a seed, and reading only those rows.

Stage 1 (critic) balances correct and incorrect rows; its optional length matching gives both classes the same
token-length distribution, since otherwise length alone predicts correctness. Stage 2 follows a curriculum: the
returned order is the training order, and each range of training progress draws its rows from difficulty bins
with its own weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from wmtp_core.data.params import CurriculumPhase, Stage1Sampling, Stage2Sampling


class SamplingError(ValueError):
    """The index cannot satisfy the requested sample; the message names the parameter and what is available."""


def _columns(index: pa.Table | pl.DataFrame, split: str) -> dict[str, np.ndarray]:
    df = index if isinstance(index, pl.DataFrame) else pl.from_arrow(index)
    if "split" in df.columns:
        df = df.filter(pl.col("split").cast(pl.String) == split)
    return {
        "row_id": df["row_id"].cast(pl.Int64).to_numpy(),
        # Any integer code per problem will do: only equality between problems matters.
        "problem": df["problem_id"].cast(pl.String).cast(pl.Categorical).to_physical().cast(pl.Int64).to_numpy(),
        "is_correct": df["is_correct"].to_numpy().astype(bool),
        "difficulty": df["difficulty"].cast(pl.Int64).to_numpy(),
        "n_tokens": df["n_tokens"].cast(pl.Int64).to_numpy(),
    }


def _cap_per_problem(candidates: np.ndarray, problem: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """A random subset of `candidates` (positions) with at most `cap` per problem, in random order."""
    order = rng.permutation(candidates)
    if cap is None:
        return order
    problems = problem[order]
    # Rank of each row within its problem in the shuffled order: stable sort keeps the random order per problem.
    by_problem = np.argsort(problems, kind="stable")
    sorted_problems = problems[by_problem]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_problems)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(sorted_problems)]))
    rank = np.empty(len(order), np.int64)
    rank[by_problem] = np.arange(len(order)) - run_start
    return order[rank < cap]


def _length_matched(correct: np.ndarray, incorrect: np.ndarray, n_correct: int, n_incorrect: int, lengths: np.ndarray,
                    n_bins: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Draw from both classes with one shared distribution over token-length bins (quantiles of the pool)."""
    pooled = lengths[np.r_[correct, incorrect]]
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, n_bins + 1))[1:-1])
    c_bin, i_bin = np.searchsorted(edges, lengths[correct], "right"), np.searchsorted(edges, lengths[incorrect], "right")
    n_b = len(edges) + 1
    c_avail, i_avail = np.bincount(c_bin, minlength=n_b), np.bincount(i_bin, minlength=n_b)
    # Largest shared distribution p with n_correct * p <= c_avail and n_incorrect * p <= i_avail per bin.
    w = np.minimum(c_avail / max(n_correct, 1), i_avail / max(n_incorrect, 1))
    if w.sum() < 1:
        feasible = int(np.floor((n_correct + n_incorrect) * w.sum()))
        raise SamplingError(
            f"stage1.n_samples={n_correct + n_incorrect} with match_length: the index has only enough rows in "
            f"shared length bins for about {feasible}; lower n_samples or set match_length: false"
        )
    p = w / w.sum()

    def draw(pool: np.ndarray, bins: np.ndarray, avail: np.ndarray, n: int) -> np.ndarray:
        quota = np.floor(n * p).astype(np.int64)
        remainder = n * p - quota
        for b in np.argsort(-remainder, kind="stable"):
            if quota.sum() >= n:
                break
            if quota[b] < avail[b]:
                quota[b] += 1
        chosen = [rng.choice(pool[bins == b], size=quota[b], replace=False) for b in range(n_b) if quota[b]]
        return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)

    return draw(correct, c_bin, c_avail, n_correct), draw(incorrect, i_bin, i_avail, n_incorrect)


def sample_stage1(index: pa.Table | pl.DataFrame, cfg: Stage1Sampling) -> np.ndarray:
    """Row ids (of `cfg.split`) for critic pretraining, shuffled."""
    rng = np.random.default_rng(cfg.seed)
    cols = _columns(index, cfg.split)
    lo, hi = cfg.difficulty_range
    eligible = np.flatnonzero((cols["difficulty"] >= lo) & (cols["difficulty"] <= hi))
    eligible = _cap_per_problem(eligible, cols["problem"], cfg.max_rows_per_problem, rng)
    n_correct = int(round(cfg.n_samples * cfg.correct_ratio))
    n_incorrect = cfg.n_samples - n_correct
    correct = np.sort(eligible[cols["is_correct"][eligible]])
    incorrect = np.sort(eligible[~cols["is_correct"][eligible]])
    for label, need, have in (("correct", n_correct, len(correct)), ("incorrect", n_incorrect, len(incorrect))):
        if need > have:
            raise SamplingError(
                f"stage1: n_samples={cfg.n_samples} x correct_ratio={cfg.correct_ratio} needs {need} {label} rows, "
                f"the index has {have} in split {cfg.split!r} with difficulty {cfg.difficulty_range} and "
                f"max_rows_per_problem={cfg.max_rows_per_problem}"
            )
    if cfg.match_length:
        chosen_c, chosen_i = _length_matched(correct, incorrect, n_correct, n_incorrect, cols["n_tokens"],
                                             cfg.length_bins, rng)  # fmt: skip
    else:
        chosen_c = rng.choice(correct, size=n_correct, replace=False)
        chosen_i = rng.choice(incorrect, size=n_incorrect, replace=False)
    chosen = rng.permutation(np.concatenate([chosen_c, chosen_i]))
    return cols["row_id"][chosen]


def _phase_counts(n: int, phases: Sequence[CurriculumPhase]) -> list[int]:
    ends = np.round(np.array([ph.until for ph in phases]) * n).astype(np.int64)
    return np.diff(np.r_[0, ends]).tolist()


def sample_stage2(index: pa.Table | pl.DataFrame, cfg: Stage2Sampling) -> np.ndarray:
    """Row ids in training order: phase by phase, each drawn from the difficulty bins by that phase's weights."""
    rng = np.random.default_rng(cfg.seed)
    cols = _columns(index, cfg.split)
    keep = cols["is_correct"] if cfg.correct_only else np.ones(len(cols["row_id"]), bool)
    pools: dict[str, np.ndarray] = {}
    for name, (lo, hi) in cfg.bins.items():
        members = np.flatnonzero(keep & (cols["difficulty"] >= lo) & (cols["difficulty"] <= hi))
        pools[name] = _cap_per_problem(members, cols["problem"], cfg.max_rows_per_problem, rng)
    used = dict.fromkeys(pools, 0)
    order = []
    for n_phase, phase in zip(_phase_counts(cfg.n_samples, cfg.curriculum), cfg.curriculum, strict=True):
        names = list(phase.weights)
        w = np.array([phase.weights[b] for b in names], float)
        quota = np.floor(n_phase * w / w.sum()).astype(np.int64)
        for b in np.argsort(-(n_phase * w / w.sum() - quota), kind="stable")[: n_phase - quota.sum()]:
            quota[b] += 1
        drawn = []
        for name, q in zip(names, quota, strict=True):
            if used[name] + q > len(pools[name]):
                raise SamplingError(
                    f"stage2: curriculum phase until={phase.until} needs {q} more rows from bin {name!r} "
                    f"(difficulty {cfg.bins[name]}), only {len(pools[name]) - used[name]} left of "
                    f"{len(pools[name])} in split {cfg.split!r}; lower n_samples or that bin's weight"
                )
            drawn.append(pools[name][used[name] : used[name] + q])
            used[name] += q
        order.append(rng.permutation(np.concatenate(drawn)) if drawn else np.zeros(0, np.int64))
    return cols["row_id"][np.concatenate(order)]


def _row_counts(parquet_paths: Sequence[str | Path]) -> list[int]:
    return [pl.scan_parquet(p).select(pl.len()).collect().item() for p in parquet_paths]


def _check_row_id_statistics(path: Path) -> None:
    meta = pq.ParquetFile(path).metadata
    column = meta.schema.to_arrow_schema().get_field_index("row_id")
    start = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(column).statistics
        expected = (start, start + group.num_rows - 1)
        if group.num_rows and (stats is None or not stats.has_min_max or (stats.min, stats.max) != expected):
            got = (stats.min, stats.max) if stats is not None and stats.has_min_max else "no statistics"
            raise SamplingError(
                f"{path}: row group {g} has row_id range {got}, expected {expected}: its row_id column does not "
                "hold the row positions (rewrite the file with row_id = position)"
            )
        start += group.num_rows


def _read_file_rows(path: Path, local: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows at sorted positions `local` of one file, via a filter on its `row_id` column when it has one.

    Polars applies that filter before decoding the other columns, so the text of unselected rows is never
    materialized. Description and examples repeat per problem: they are read once per problem and returned
    dictionary-encoded rather than copied per row.
    """
    scan = pl.scan_parquet(path)
    names = scan.collect_schema().names()
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise SamplingError(f"{path}: no column(s) {unknown}; columns are {names}")
    # Filtering on the stored `row_id` lets polars skip decoding the other columns of unselected rows (a row
    # index column would turn that off); the row-group statistics and the rows found show it is the position.
    if "row_id" in names:
        _check_row_id_statistics(path)
        key = pl.col("row_id")
    else:
        scan = scan.with_row_index("__row_id")
        key = pl.col("__row_id").cast(pl.Int64)
    shared = [c for c in columns if c in _SHARED_COLUMNS and "problem_id" in names]
    per_row = [c for c in columns if c not in shared]
    wanted = pl.Series(local, dtype=pl.Int64).implode()
    extra = [c for c in ("problem_id",) if shared and c not in per_row]
    rows = scan.filter(key.is_in(wanted)).select([key.alias("__position"), *per_row, *extra]).collect()
    found = rows["__position"].to_numpy()
    if not np.array_equal(found, local):
        raise SamplingError(
            f"{path}: asked for {len(local)} rows by row_id, found {len(found)} that do not match (row_id must be "
            "the row position, unique and increasing)"
        )
    table = rows.select(per_row).to_arrow()
    if shared:
        firsts = rows.unique("problem_id", keep="first", maintain_order=True)["__position"].cast(pl.Int64)
        texts = scan.filter(key.is_in(firsts.implode())).select(
            ["problem_id", *shared]).collect()  # fmt: skip
        codes = rows["problem_id"].replace_strict(texts["problem_id"], pl.int_range(texts.height, eager=True),
                                                  return_dtype=pl.Int32).to_arrow()  # fmt: skip
        for name in shared:
            values = pa.DictionaryArray.from_arrays(codes, texts[name].to_arrow().cast(pa.string()))
            table = table.append_column(name, values)
    return table.select(columns)


_SHARED_COLUMNS = ("instruction", "input")


def read_rows(parquet_paths: Sequence[str | Path], row_ids: Sequence[int] | np.ndarray,
              columns: Sequence[str] | None = None) -> pa.Table:  # fmt: skip
    """Rows `row_ids` (positions in the concatenation of the files) in the requested order, repeats included.

    Only the selected rows are decoded (see `_read_file_rows`); the table is never loaded whole.
    """
    paths = [Path(p) for p in parquet_paths]
    ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
    bounds = np.r_[0, np.cumsum(_row_counts(paths))]
    total = int(bounds[-1])
    if ids.size and (ids.min() < 0 or ids.max() >= total):
        bad = int(ids[(ids < 0) | (ids >= total)][0])
        raise SamplingError(f"row id {bad} is outside 0..{total - 1} of {[str(p) for p in paths]}")
    names = list(columns) if columns else pl.scan_parquet(paths[0]).collect_schema().names()
    unique, inverse = np.unique(ids, return_inverse=True)
    file_of = np.searchsorted(bounds, unique, "right") - 1
    pieces = [_read_file_rows(paths[f], unique[file_of == f] - bounds[f], names) for f in np.unique(file_of)]
    if not pieces:
        return pl.scan_parquet(paths[0]).select(names).head(0).collect().to_arrow()
    table = pa.concat_tables(pieces, promote_options="permissive") if len(pieces) > 1 else pieces[0]
    return table if np.array_equal(inverse, np.arange(len(unique))) else table.take(pa.array(inverse))
