"""The one format of an evaluation directory: what `wmtp evaluate` and `wmtp evaluate-completions` write and what
the experiment report reads.

  samples.parquet      every completion: task_id, sample, completion, status, passed, stderr_tail, wall_s,
                       finish_reason, n_tokens (the last two null for completions judged from a file)
  per_task.parquet     task_id, n, c, pass@k for each k
  pass_at_k.parquet    mean pass@k for every k up to the samples per task
  speculative.parquet  per prompt: greedy vs self-speculative decoding (no rows when not measured)
  greedy.parquet       one greedy completion per task, judged: task_id, completion, status, passed,
                       finish_reason, n_tokens (no rows unless `evaluation.greedy`)
  metrics.json         the keys of METRICS_KEYS
  MANIFEST.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from wmtp_core.storage import publish

METRICS_FILE = "metrics.json"
TABLES = ("samples", "per_task", "pass_at_k", "speculative", "greedy")
# Judging the completions (`Judgement.metrics`): n_samples is the samples per task (the fewest, when tasks differ).
JUDGING_KEYS = (
    "task", "split", "n_tasks", "n_tasks_available", "limit", "n_samples", "n_completions", "pass_at_k",
    "outcomes", "isolation", "timeout_s", "workers", "judge_seconds",
)  # fmt: skip
# Sampling them from a model; None when the completions came from a file.
GENERATION_KEYS = (
    "model_dir", "temperature", "top_p", "max_new_tokens", "seed", "finish_reasons", "prompts_truncated",
    "tokens_generated", "generation_seconds", "speculative", "greedy",
)  # fmt: skip
METRICS_KEYS = ("model", "completions", *JUDGING_KEYS, *GENERATION_KEYS)
REQUIRED_KEYS = ("model", "task", "n_tasks", "n_tasks_available", "limit", "n_samples", "pass_at_k")


class ReportError(ValueError):
    pass


def write_evaluation(
    out_dir: str | Path, metrics: dict[str, Any], tables: dict[str, pl.DataFrame], params: dict[str, Any]
) -> None:
    """Write the tables and metrics.json atomically, with a manifest; refuses anything but the one format."""
    missing = [k for k in METRICS_KEYS if k not in metrics]
    extra = sorted(set(metrics) - set(METRICS_KEYS))
    if missing or extra:
        raise ValueError(f"evaluation metrics: missing keys {missing}, unexpected keys {extra}; expected {METRICS_KEYS}")
    if sorted(tables) != sorted(TABLES):
        raise ValueError(f"evaluation tables: got {sorted(tables)}, expected {list(TABLES)}")

    def write(tmp: Path) -> dict[str, int]:
        for name in TABLES:
            tables[name].write_parquet(tmp / f"{name}.parquet")
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        return {"samples": tables["samples"].height, "tasks": metrics["n_tasks"]}

    publish(out_dir, write, params=params)


def load_evaluation(eval_dir: str | Path) -> dict[str, Any]:
    """Read `metrics.json` of one evaluation directory and check it has what the report needs."""
    path = Path(eval_dir) / METRICS_FILE
    if not path.is_file():
        raise ReportError(f"{path}: evaluation metrics not found (materialize the evaluation first)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in REQUIRED_KEYS if k not in metrics]
    if missing:
        raise ReportError(f"{path}: missing keys {missing}; expected {list(REQUIRED_KEYS)}")
    return metrics
