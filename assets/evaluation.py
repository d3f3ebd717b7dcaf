"""Evaluation: pass@k of each model on HumanEval and MBPP, judged in the sandbox, and the experiment report.

One asset per (model, task) pair, `eval_<model>_<task>`, made by `evaluation_asset`. A trained policy joins the
evaluation (and the report) by adding its (group, asset) pair to EVALUATED_MODELS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from assets._common import asset_metadata, markdown_table, materialized
from dagster_defs.resources import LauncherResource, MlflowResource, ParamsResource, StorageResource
from wmtp_core.eval.evaluate import evaluate
from wmtp_core.eval.report import METRICS_FILE, write_report
from wmtp_core.storage import publish, read_manifest, verify
from wmtp_core.train.tracking import Tracker, sanitize_name

GROUP = "evaluation"
EVALUATED_MODELS: list[tuple[str, str]] = [("models", "base_model")]  # (storage group, asset name)
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
        metadata={
            "dvc/params": "evaluation",
            "dvc/metrics": [f"storage/{GROUP}/{name}/{METRICS_FILE}"],
        },
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
        tokenizer_dir = storage.asset_dir("sources", "tokenizer")
        data_dir = storage.asset_dir("data", data_asset)
        for d in (tokenizer_dir, data_dir):  # the model directory is verified once, by evaluate()'s load
            verify(d)
        out = storage.asset_dir(GROUP, name)
        metrics = evaluate(
            model_dir,
            tokenizer_dir / "tokenizer.model",
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


@dg.asset(
    group_name=GROUP,
    deps=evaluations,
    metadata={
        "dvc/metrics": [f"storage/{GROUP}/experiment_report/{METRICS_FILE}"],
    },
    description="pass@k of every evaluated model side by side, speculative acceptance, plots (Markdown + JSON).",
)
def experiment_report(
    storage: StorageResource, params: ParamsResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    p = params.load().experiment_report
    eval_dirs = [storage.asset_dir(GROUP, a.key.to_user_string()) for a in evaluations]
    for d in eval_dirs:
        verify(d)
    out = storage.asset_dir(GROUP, "experiment_report")

    def write(tmp: Path) -> dict:
        summary = write_report(eval_dirs, tmp, p)
        return {"models": len(summary["models"]), "tasks": len(summary["tasks"])}

    manifest = publish(out, write, params=p.model_dump())
    report = (out / "report.md").read_text()
    flat = {
        f"{model}/{task}/{sanitize_name(k)}": v
        for model, tasks in json.loads((out / METRICS_FILE).read_text()).items()
        for task, values in tasks.items()
        for k, v in values.items()
    }
    run_id = _log_run(
        mlflow, "experiment_report", p.model_dump(), flat, sorted(out.glob("*.png")) + [out / "report.md"]
    )
    meta = asset_metadata(out, manifest, preview=report)
    meta["mlflow_run_id"] = run_id
    return materialized(meta)
