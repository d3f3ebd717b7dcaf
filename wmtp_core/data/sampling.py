"""Choosing training rows from the index, deterministically from a seed, and reading only those rows.

Stage 1 (critic) balances correct and incorrect rows; its optional length matching gives both classes the same
token-length distribution, since otherwise length alone predicts correctness. Stage 2 follows a curriculum: the
returned order is the training order, and each range of training progress draws its rows from difficulty bins
with its own weights.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wmtp_core.data.index import sampler_arrays, sampler_columns
from wmtp_core.data.params import CurriculumPhase, Stage1Sampling, Stage2Sampling


class SamplingError(ValueError):
    """The index cannot satisfy the requested sample; the message names the parameter and what is available."""


def _columns(index: pa.Table | str | Path, split: str) -> dict[str, np.ndarray]:
    if isinstance(index, str | Path):  # the index file: read the split's columns straight into arrays
        return sampler_columns(index, split)
    if not isinstance(index, pa.Table):  # a polars or pandas frame
        index = index.to_arrow() if hasattr(index, "to_arrow") else pa.Table.from_pandas(index)
    return sampler_arrays([("the index table", index)], index.num_rows, split)


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


def sample_stage1(index: pa.Table | str | Path, cfg: Stage1Sampling) -> np.ndarray:
    """Row ids (of `cfg.split`) for critic pretraining, shuffled.

    `index`: the index file (its split is read straight into arrays, see `index.sampler_columns`) or a table.
    """
    rng = np.random.default_rng(cfg.seed)
    cols = _columns(index, cfg.split)
    lo, hi = cfg.difficulty_range
    eligible = np.flatnonzero((cols["difficulty"] >= lo) & (cols["difficulty"] <= hi))
    if cfg.max_rows_per_problem is not None:  # the rows are drawn from sorted pools below: no order needed here
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


def sample_stage2(index: pa.Table | str | Path, cfg: Stage2Sampling) -> np.ndarray:
    """Row ids in training order: phase by phase, each drawn from the difficulty bins by that phase's weights.

    `index`: the index file or a table, as for `sample_stage1`.
    """
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


def _check_row_id_statistics(path: Path, meta: pq.FileMetaData) -> None:
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


# Description and examples repeat for every solution of a problem: read as dictionaries, they are decoded once
# per problem and row group instead of once per row.
_SHARED_COLUMNS = ("instruction", "input")


class _Source:
    """One Parquet file of rows: its row groups, and one reader per thread (a reader is not shared by threads)."""

    def __init__(self, path: Path, columns: list[str] | None):
        self.path = path
        self.meta = pq.read_metadata(path)
        names = self.meta.schema.to_arrow_schema().names
        unknown = [c for c in columns or () if c not in names]
        if unknown:
            raise SamplingError(f"{path}: no column(s) {unknown}; columns are {names}")
        self.columns = list(columns) if columns else names
        self.has_row_id = "row_id" in names
        if self.has_row_id:
            _check_row_id_statistics(path, self.meta)
        self.starts = np.r_[0, np.cumsum([self.meta.row_group(g).num_rows for g in range(self.meta.num_row_groups)])]
        self._local = threading.local()

    def _reader(self) -> pq.ParquetFile:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            shared = [c for c in _SHARED_COLUMNS if c in self.columns]
            # Without pre-buffering, a column chunk is read when decoded, in this thread: no I/O pool, no coalesced
            # buffers held for the whole row group (measured faster and leaner by benchmarks/select_rows.py).
            reader = pq.ParquetFile(self.path, metadata=self.meta, read_dictionary=shared, pre_buffer=False)
            self._local.reader = reader
        return reader

    def read(self, group: int, positions: np.ndarray) -> pa.Table:
        """Rows at sorted file positions `positions`, all in row group `group`."""
        extra = ["row_id"] if self.has_row_id and "row_id" not in self.columns else []
        table = self._reader().read_row_group(group, columns=self.columns + extra, use_threads=False)
        table = table.take(pa.array(positions - self.starts[group]))
        if self.has_row_id and not np.array_equal(table["row_id"].to_numpy(), positions):
            raise SamplingError(f"{self.path}: row group {group} holds row_id values that are not the row positions "
                                "(row_id must be the row position, unique and increasing)")  # fmt: skip
        return table.select(self.columns)


def _read_jobs(jobs: list[tuple[_Source, int, np.ndarray]], workers: int) -> list[pa.Table]:
    """The chosen rows of each (source, row group, positions) job, in job order, read by `workers` threads.

    The calling thread takes a share too: its allocator already holds the memory the index and the sampler freed,
    and fresh memory (page faults) costs more than the decoding itself.
    """
    pieces: list[pa.Table | None] = [None] * len(jobs)

    def share(k: int) -> None:  # every `workers`-th row group: the shares stay equal and in file order
        for i in range(k, len(jobs), workers):
            source, group, positions = jobs[i]
            pieces[i] = source.read(group, positions)

    with ThreadPoolExecutor(max(1, workers - 1)) as pool:
        others = [pool.submit(share, k) for k in range(1, workers)]
        share(0)
        for done in others:
            done.result()
    return pieces  # type: ignore[return-value]


def read_rows(parquet_paths: Sequence[str | Path], row_ids: Sequence[int] | np.ndarray,
              columns: Sequence[str] | None = None, threads: int | None = None) -> pa.Table:  # fmt: skip
    """Rows `row_ids` (positions in the concatenation of the files) in the requested order, repeats included.

    Only the row groups holding chosen rows are read, one at a time per thread (`threads`: default up to 4, as
    CPUs allow), and only their chosen rows are kept; the table is never loaded whole. `instruction` and `input`
    come back dictionary-encoded (see `_SHARED_COLUMNS`).
    """
    if not parquet_paths:
        raise SamplingError("read_rows: no Parquet files given (expected the split's files, e.g. train.parquet)")
    first = _Source(Path(parquet_paths[0]), list(columns) if columns else None)
    sources = [first] + [_Source(Path(p), first.columns) for p in parquet_paths[1:]]  # the first file's columns
    ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
    bounds = np.r_[0, np.cumsum([s.meta.num_rows for s in sources])]
    total = int(bounds[-1])
    if ids.size and (ids.min() < 0 or ids.max() >= total):
        bad = int(ids[(ids < 0) | (ids >= total)][0])
        raise SamplingError(f"row id {bad} is outside 0..{total - 1} of {[str(s.path) for s in sources]}")
    unique, inverse = np.unique(ids, return_inverse=True)
    jobs = []
    file_of = np.searchsorted(bounds, unique, "right") - 1
    for f in np.unique(file_of):
        local = unique[file_of == f] - bounds[f]
        group_of = np.searchsorted(sources[f].starts, local, "right") - 1
        cuts = np.flatnonzero(np.diff(group_of)) + 1
        runs = zip(np.r_[0, cuts], np.split(local, cuts), strict=True)  # (start, positions) per row group
        jobs += [(sources[f], int(group_of[start]), positions) for start, positions in runs]
    if not jobs:
        return first._reader().schema_arrow.empty_table().select(first.columns)
    pieces = _read_jobs(jobs, max(1, min(threads or min(4, os.cpu_count() or 1), len(jobs))))
    if np.array_equal(inverse, np.arange(len(unique))):  # asked in file order: the pieces are the answer
        return pa.concat_tables(pieces, promote_options="permissive")
    # Reorder column by column, each read column dropped before its reordered copy is made: memory holds the rows
    # once, plus one column of them twice, instead of the whole table twice.
    table = pa.concat_tables(pieces, promote_options="permissive").unify_dictionaries()
    del pieces
    order = pa.array(inverse)
    schema, columns_out = table.schema, []
    for name in schema.names:
        column = table.column(name).combine_chunks()
        table = table.drop_columns([name])
        columns_out.append(column.take(order))
        del column
    return pa.table(columns_out, schema=schema)
