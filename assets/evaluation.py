"""Evaluation: pass@k of each model on HumanEval and MBPP, judged in the sandbox, and the experiment report.

One asset per (model, task) pair, `eval_<model>_<task>`, made by `evaluation_asset`: the base model and the policy
of every experiment and weight control (EVALUATED_MODELS). The report also reads what each training run wrote
(held-out loss per head, training curves, token-weight histograms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from assets._common import asset_metadata, image_metadata, markdown_table, materialized, table_metadata
from dagster_defs.resources import LauncherResource, MlflowResource, ParamsResource, StorageResource
from wmtp_core.eval.evaluate import evaluate
from wmtp_core.eval.report import METRICS_FILE, ui_tables, write_report
from wmtp_core.storage import publish, read_manifest, verify
from wmtp_core.tokenizer import tokenizer_file
from wmtp_core.train.layout import ASSET
from wmtp_core.train.layout import GROUP as TRAINING_GROUP
from wmtp_core.train.layout import model_dir as trained_model_dir
from wmtp_core.train.tracking import Tracker, flatten, sanitize_name

GROUP = "evaluation"
POLICIES = [ASSET[r] for r in ("baseline", "verifiable", "rho1", "random_matched", "shuffled")]
# (storage group, asset name): the untrained base model first, the report's point of comparison
EVALUATED_MODELS: list[tuple[str, str]] = [("models", "base_model"), *((TRAINING_GROUP, p) for p in POLICIES)]
BASELINE_MODEL = "base_model"
# Training runs whose results the report shows beside the evaluations (the critic and the tuned reference too)
REPORTED_TRAINING = [*POLICIES, ASSET["reference"], ASSET["critic"]]
TASKS = ["humaneval", "mbpp"]
_TASK_DATA = {"humaneval": "humaneval_processed", "mbpp": "mbpp_processed"}


def _log_run(
    mlflow_res: MlflowResource, run_name: str, params: dict, metrics: dict, files: list[Path]
) -> str:
    tracker = Tracker(mlflow_res.tracking_uri, mlflow_res.artifact_location, mlflow_res.experiment, run_name)
    with tracker:
        tracker.log_params(params)
        tracker.log_metrics(metrics, step=0)
        for f in files:
            tracker.log_artifact(f)
    return tracker.run_id


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    flat = {f"pass@{k}": v for k, v in metrics["pass_at_k"].items()}
    flat.update({f"outcome/{k}": v for k, v in metrics["outcomes"].items()})
    flat["n_tasks"] = metrics["n_tasks"]
    spec = metrics.get("speculative")
    if spec:
        flat.update(
            tokens_per_forward=spec["tokens_per_forward"],
            speculative_identical=float(spec["identical_to_greedy"]),
        )
        if spec["speedup"] is not None:  # None when it means nothing; spec["speedup_not_meaningful"] says why
            flat["speculative_speedup"] = spec["speedup"]
    return flat


def evaluation_asset(model_group: str, model: str, task: str) -> dg.AssetsDefinition:
    name = f"eval_{model}_{task}"
    data_asset = _TASK_DATA[task]

    @dg.asset(
        name=name,
        group_name=GROUP,
        deps=[dg.AssetKey(model), dg.AssetKey(data_asset), dg.AssetKey("tokenizer")],
        # Its metrics.json also holds lists and nulls (per-repeat timings, the model's path), which DVC's metrics
        # cannot show: the report's metrics.json carries its numbers to `dvc metrics show`.
        metadata={"dvc/params": "evaluation"},
        description=f"{model} on {task}: sampled completions judged in the sandbox, pass@k, speculative decoding.",
    )
    def _evaluation(
        context,
        storage: StorageResource,
        params: ParamsResource,
        mlflow: MlflowResource,
        launcher: LauncherResource,
    ) -> dg.MaterializeResult:
        p = params.load().evaluation
        if p.limit is not None:
            context.log.warning(
                f"{name}: evaluation.limit = {p.limit}: only the first {p.limit} tasks are evaluated"
            )
        model_dir = storage.asset_dir(model_group, model)
        if model_group == TRAINING_GROUP:  # a training asset keeps its model beside the run's files
            model_dir = trained_model_dir(model_dir)
        tokenizer_dir = storage.asset_dir("sources", "tokenizer")
        data_dir = storage.asset_dir("data", data_asset)
        for d in (tokenizer_dir, data_dir):  # the model directory is verified once, by evaluate()'s load
            verify(d)
        out = storage.asset_dir(GROUP, name)
        metrics = evaluate(
            model_dir,
            tokenizer_file(tokenizer_dir),
            task,
            out,
            p,
            task_source=data_dir / f"{task}.parquet",
            model_name=model,
            device=launcher.resolved_device(),
        )
        flat = _flat_metrics(metrics)
        run_id = _log_run(
            mlflow, name, {"model": model, "task": task, **p.model_dump()}, flat, [out / METRICS_FILE]
        )
        coverage = "all" if metrics["limit"] is None else f"LIMIT {metrics['limit']}:"
        preview = (
            f"{model} on {task}: {coverage} {metrics['n_tasks']} of {metrics['n_tasks_available']} tasks, "
            f"{metrics['n_samples']} samples each\n\n"
            + markdown_table([{"metric": k, "value": f"{v:.4g}"} for k, v in flat.items()])
        )
        meta = asset_metadata(out, read_manifest(out), preview=preview)
        meta.update({sanitize_name(k): float(v) for k, v in flat.items()})
        meta["mlflow_run_id"] = run_id
        return materialized(meta)

    return _evaluation


evaluations = [evaluation_asset(group, model, task) for group, model in EVALUATED_MODELS for task in TASKS]


REPORT = "experiment_report"
REPORT_PLOTS = ["pass_at_k.png", "training_curves.png", "heldout_loss.png", "token_weights.png"]


@dg.asset(
    name=REPORT,
    group_name=GROUP,
    deps=[*evaluations, *(dg.AssetKey(name) for name in REPORTED_TRAINING)],
    metadata={
        "dvc/metrics": [f"storage/{GROUP}/{REPORT}/{METRICS_FILE}"],
        "dvc/plots": [f"storage/{GROUP}/{REPORT}/{png}" for png in REPORT_PLOTS],
    },
    description="The experiments side by side: pass@k against the base model, completion length, samples, "
    "held-out loss per head, training curves, token-weight histograms (Markdown + JSON + PNG).",
)
def experiment_report(
    storage: StorageResource, params: ParamsResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    p = params.load().experiment_report
    eval_dirs = [storage.asset_dir(GROUP, a.key.to_user_string()) for a in evaluations]
    training_dirs = [storage.asset_dir(TRAINING_GROUP, name) for name in REPORTED_TRAINING]
    for d in eval_dirs + training_dirs:
        verify(d)
    out = storage.asset_dir(GROUP, REPORT)
    summary: dict = {}

    def write(tmp: Path) -> dict:
        summary.update(write_report(eval_dirs, tmp, p, training_dirs=training_dirs, baseline=BASELINE_MODEL))
        return {"models": len(summary["models"]), "tasks": len(summary["tasks"]), "training_runs": len(training_dirs)}

    manifest = publish(out, write, params=p.model_dump())
    report = (out / "report.md").read_text()
    flat = _flat_report_metrics(json.loads((out / METRICS_FILE).read_text()))
    run_id = _log_run(
        mlflow, REPORT, p.model_dump(), flat, sorted(out.glob("*.png")) + [out / "report.md", out / "report.json"]
    )
    meta = asset_metadata(out, manifest, preview=report)
    for table, rows in ui_tables(summary).items():
        meta[f"table/{table}"] = table_metadata(rows)
    for png in summary.get("plots", []):
        meta[f"plot/{Path(png).stem}"] = image_metadata(out / png, Path(png).stem.replace("_", " "))
    meta["report"] = dg.MetadataValue.path(str(out / "report.md"))
    meta["mlflow_run_id"] = run_id
    return materialized(meta)


def _flat_report_metrics(tree: dict) -> dict[str, float]:
    """metrics.json's numbers as MLflow metric names (model/task/metric; the Tracker sanitizes them)."""
    return {
        name: float(value)
        for name, value in flatten(tree, sep="/").items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
