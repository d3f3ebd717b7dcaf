"""Stage sampling from an index: proportions, limits, length matching, curriculum order, determinism."""

from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from wmtp_core.data.index import IndexFileError, sampler_columns
from wmtp_core.data.params import CurriculumPhase, Stage1Sampling, Stage2Sampling
from wmtp_core.data.sampling import SamplingError, read_rows, sample_stage1, sample_stage2


def make_index(n_problems: int = 200, rows_per_problem: int = 30, seed: int = 1) -> pa.Table:
    """Incorrect rows are longer on average, as in CodeContests, so length predicts the label unless matched."""
    rng = np.random.default_rng(seed)
    n = n_problems * rows_per_problem
    problem = np.repeat(np.arange(n_problems), rows_per_problem)
    is_correct = rng.random(n) < 0.4
    n_tokens = np.where(is_correct, rng.normal(300, 80, n), rng.normal(450, 120, n)).clip(20, 2048).astype(np.int32)
    difficulty = np.repeat(rng.choice([1, 7, 8, 9, 10, 11, 12], n_problems), rows_per_problem)
    train = pa.table({
        "split": pa.array(["train"] * n).dictionary_encode(),
        "row_id": pa.array(np.arange(n), pa.int64()),
        "problem_id": pa.array([f"p{p}" for p in problem]),
        "is_correct": pa.array(is_correct),
        "difficulty": pa.array(difficulty, pa.int64()),
        "n_tokens": pa.array(n_tokens),
    })  # fmt: skip
    other = train.slice(0, 50).set_column(0, "split", pa.array(["valid"] * 50).dictionary_encode())
    return pa.concat_tables([train, other])


INDEX = make_index()
ROWS = INDEX.filter(pa.compute.equal(INDEX["split"].cast(pa.string()), "train")).to_pandas().set_index("row_id")


def test_stage1_proportions_and_limits():
    cfg = Stage1Sampling(n_samples=1000, correct_ratio=0.3, difficulty_range=(7, 10), max_rows_per_problem=12,
                         match_length=False, seed=3)  # fmt: skip
    ids = sample_stage1(INDEX, cfg)
    assert len(ids) == 1000 and len(set(ids.tolist())) == 1000
    chosen = ROWS.loc[ids]
    assert chosen["is_correct"].sum() == 300
    assert chosen["difficulty"].between(7, 10).all()
    assert chosen.groupby("problem_id").size().max() <= 12


def test_stage1_is_deterministic_from_the_seed():
    cfg = Stage1Sampling(n_samples=500, seed=11)
    assert np.array_equal(sample_stage1(INDEX, cfg), sample_stage1(INDEX, cfg))
    assert not np.array_equal(sample_stage1(INDEX, cfg), sample_stage1(INDEX, cfg.model_copy(update={"seed": 12})))


def test_stage1_length_matching_equalizes_length_distributions():
    plain = ROWS.loc[sample_stage1(INDEX, Stage1Sampling(n_samples=1500, match_length=False, seed=0))]
    gap = plain[~plain.is_correct].n_tokens.mean() - plain[plain.is_correct].n_tokens.mean()
    assert gap > 100
    cfg = Stage1Sampling(n_samples=1500, correct_ratio=0.5, match_length=True, length_bins=10, seed=0)
    matched = ROWS.loc[sample_stage1(INDEX, cfg)]
    assert matched.is_correct.sum() == 750 and len(matched) == 1500
    pooled = ROWS.n_tokens.to_numpy()
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, 11))[1:-1])
    hist_c = np.bincount(np.searchsorted(edges, matched[matched.is_correct].n_tokens, "right"), minlength=10)
    hist_i = np.bincount(np.searchsorted(edges, matched[~matched.is_correct].n_tokens, "right"), minlength=10)
    assert np.abs(hist_c - hist_i).max() <= 1
    assert abs(matched[~matched.is_correct].n_tokens.mean() - matched[matched.is_correct].n_tokens.mean()) < 25


def test_stage1_errors_name_the_parameter():
    with pytest.raises(SamplingError, match=r"n_samples=5000 x correct_ratio=0.5 needs 2500 correct rows"):
        sample_stage1(INDEX, Stage1Sampling(n_samples=5000, match_length=False))
    with pytest.raises(SamplingError, match=r"stage1.n_samples=4000 with match_length"):
        sample_stage1(INDEX, Stage1Sampling(n_samples=4000, correct_ratio=0.5))
    with pytest.raises(ValidationError, match="difficulty_range"):
        Stage1Sampling(difficulty_range=(9, 2))


def test_stage2_curriculum_order_and_bin_weights():
    cfg = Stage2Sampling(
        n_samples=800,
        bins={"easy": (0, 8), "hard": (9, 28)},
        curriculum=(CurriculumPhase(until=0.5, weights={"easy": 1.0}),
                    CurriculumPhase(until=1.0, weights={"easy": 1.0, "hard": 3.0})),
        seed=5,
    )  # fmt: skip
    ids = sample_stage2(INDEX, cfg)
    assert len(ids) == 800 and len(set(ids.tolist())) == 800
    chosen = ROWS.loc[ids]
    assert chosen.is_correct.all()
    first, second = chosen.iloc[:400], chosen.iloc[400:]
    assert (first.difficulty <= 8).all()
    assert collections.Counter(second.difficulty <= 8) == {False: 300, True: 100}
    assert np.array_equal(ids, sample_stage2(INDEX, cfg))


def test_stage2_all_rows_and_exhausted_bin():
    cfg = Stage2Sampling(n_samples=600, correct_only=False, seed=1)
    assert not ROWS.loc[sample_stage2(INDEX, cfg)].is_correct.all()
    with pytest.raises(SamplingError, match=r"needs \d+ more rows from bin 'medium' \(difficulty \(9, 10\)\)"):
        sample_stage2(INDEX, Stage2Sampling(n_samples=5900, correct_only=False, seed=1))
    with pytest.raises(ValidationError, match="unknown bins"):
        Stage2Sampling(curriculum=(CurriculumPhase(until=1.0, weights={"expert": 1.0}),))
    with pytest.raises(ValidationError, match="end at 1.0"):
        Stage2Sampling(curriculum=(CurriculumPhase(until=0.5, weights={"easy": 1.0}),))


def test_samplers_read_an_index_file_a_row_group_at_a_time(tmp_path):
    path = tmp_path / "index.parquet"
    pq.write_table(INDEX, path, row_group_size=1024)  # the last group mixes train and valid rows
    cols = sampler_columns(path, "train")
    assert cols["row_id"].tolist() == ROWS.index.tolist()
    assert cols["difficulty"].tolist() == ROWS.difficulty.tolist() and cols["n_tokens"].tolist() == ROWS.n_tokens.tolist()
    assert cols["is_correct"].tolist() == ROWS.is_correct.tolist()
    same_problem = cols["problem"][:, None] == cols["problem"][None, ::97]  # codes: equal exactly when problems are
    assert (same_problem == (ROWS.problem_id.to_numpy()[:, None] == ROWS.problem_id.to_numpy()[None, ::97])).all()
    assert sampler_columns(path, "valid")["row_id"].tolist() == list(range(50))
    assert sampler_columns(path, "test")["row_id"].size == 0
    cfg1 = Stage1Sampling(n_samples=600, max_rows_per_problem=10, seed=4)
    assert np.array_equal(sample_stage1(path, cfg1), sample_stage1(INDEX, cfg1))
    cfg2 = Stage2Sampling(n_samples=1200, max_rows_per_problem=12, seed=4)
    assert np.array_equal(sample_stage2(path, cfg2), sample_stage2(INDEX, cfg2))
    with pytest.raises(IndexFileError, match=r"missing\.parquet: index file missing"):
        sampler_columns(tmp_path / "missing.parquet", "train")


def test_read_rows_matches_a_full_read(tmp_path):
    rng = np.random.default_rng(0)
    tables = []
    for part in range(2):
        n = 1000 + part * 37
        t = pa.table({"row_id": np.arange(n), "output": [f"print({part}, {i})" for i in range(n)],
                      "problem_id": [f"p{i // 40}" for i in range(n)],
                      "instruction": [f"problem {part} {i // 40}" for i in range(n)]})  # fmt: skip
        pq.write_table(t, tmp_path / f"part{part}.parquet", row_group_size=128)
        tables.append(t)
    full = pa.concat_tables(tables)
    ids = rng.choice(full.num_rows, 300, replace=False)
    ids = np.r_[ids, ids[:5]]  # repeats come back as repeats, in the requested order
    paths = [tmp_path / "part0.parquet", tmp_path / "part1.parquet"]
    got = read_rows(paths, ids)
    expected = full.take(ids)
    assert got.column_names == full.column_names
    for name in ("row_id", "output", "problem_id"):
        assert got[name].to_pylist() == expected[name].to_pylist()
    assert pa.types.is_dictionary(got["instruction"].type)  # read once per problem, not copied per row
    assert got["instruction"].to_pylist() == expected["instruction"].to_pylist()
    for threads in (1, 3):  # one reader per thread; the rows do not depend on how many
        assert read_rows(paths, ids, threads=threads).to_pylist() == got.to_pylist()
    in_file_order = np.unique(ids)  # asked in file order, the rows come back as read, with no reordering copy
    assert read_rows(paths, in_file_order)["output"].to_pylist() == full.take(in_file_order)["output"].to_pylist()
    assert read_rows(paths, [5], columns=["output"]).column_names == ["output"]
    assert read_rows(paths, []).num_rows == 0
    with pytest.raises(SamplingError, match="no Parquet files given"):
        read_rows([], [0])
    with pytest.raises(SamplingError, match="row id 2037 is outside 0..2036"):
        read_rows(paths, [3, 2037])


def test_read_rows_without_or_with_a_wrong_row_id_column(tmp_path):
    t = pa.table({"output": [f"x{i}" for i in range(500)]})
    pq.write_table(t, tmp_path / "plain.parquet", row_group_size=64)
    assert read_rows([tmp_path / "plain.parquet"], [499, 0, 77])["output"].to_pylist() == ["x499", "x0", "x77"]
    pq.write_table(t.append_column("row_id", pa.array(np.arange(500) + 1)), tmp_path / "shifted.parquet")
    with pytest.raises(SamplingError, match=r"shifted\.parquet: row group 0 has row_id range \(1, 500\), expected \(0, 499\)"):
        read_rows([tmp_path / "shifted.parquet"], [3])
    with pytest.raises(SamplingError, match=r"no column\(s\) \['reward'\]"):
        read_rows([tmp_path / "plain.parquet"], [3], columns=["reward"])
