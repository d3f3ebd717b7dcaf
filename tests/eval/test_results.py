"""The one evaluation format: the writer refuses anything else, the report's reader gets back what was written."""

from __future__ import annotations

import polars as pl
import pytest

from wmtp_core.eval.results import METRICS_KEYS, TABLES, ReportError, load_evaluation, write_evaluation
from wmtp_core.storage import verify


def _metrics() -> dict:
    metrics = dict.fromkeys(METRICS_KEYS)
    metrics.update(model="m", task="mbpp", n_tasks=1, n_tasks_available=500, n_samples=1, pass_at_k={"1": 1.0})
    return metrics


def _tables() -> dict[str, pl.DataFrame]:
    return {name: pl.DataFrame({"task_id": ["11"]}) for name in TABLES}


def test_written_evaluation_reads_back(tmp_path) -> None:
    write_evaluation(tmp_path / "eval", _metrics(), _tables(), params={"task": "mbpp"})
    assert sorted(verify(tmp_path / "eval")["files"]) == sorted([f"{t}.parquet" for t in TABLES] + ["metrics.json"])
    assert load_evaluation(tmp_path / "eval") == _metrics()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m, t: m.pop("speculative"), r"missing keys \['speculative'\]"),
        (lambda m, t: m.update(summary={}), r"unexpected keys \['summary'\]"),
        (lambda m, t: t.pop("speculative"), r"evaluation tables: got \['greedy', 'pass_at_k', 'per_task', 'samples'\]"),
    ],
)
def test_anything_but_the_format_is_refused(tmp_path, change, match) -> None:
    metrics, tables = _metrics(), _tables()
    change(metrics, tables)
    with pytest.raises(ValueError, match=match):
        write_evaluation(tmp_path / "eval", metrics, tables, params={})
    assert not (tmp_path / "eval").exists()


def test_reader_names_the_file_at_fault(tmp_path) -> None:
    with pytest.raises(ReportError, match="metrics.json: evaluation metrics not found"):
        load_evaluation(tmp_path)
    (tmp_path / "metrics.json").write_text('{"model": "m"}')
    with pytest.raises(ReportError, match=r"metrics.json: missing keys \['task'"):
        load_evaluation(tmp_path)
