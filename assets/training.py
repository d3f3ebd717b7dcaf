"""Training: the critic, the tuned reference and the policies of the experiments and their controls.

Each asset plans its job (params validated, inputs checked, before any process starts), then launches torchrun
through Dagster Pipes: rank 0's log lines stream into the run and its figures come back as metadata. The model
is written into a temporary directory that replaces the asset only when training succeeded, so a failed or
killed run leaves the previous version intact, and its checkpoints let the next materialization resume.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # not exported; raised by PipesSubprocessClient

from assets._common import asset_metadata, image_metadata, markdown_table, materialized
from dagster_defs.resources import LauncherResource, MlflowResource, ParamsResource, StorageResource
from wmtp_core.storage import publish
from wmtp_core.train.job import ASSET, GROUP, START_FROM, plan_job
from wmtp_core.train.launch import FAILURE_FILE, write_job
from wmtp_core.train.loop import CURVES_FILE, RESULT_FILE

_DATA = [dg.AssetKey("codecontests_processed"), dg.AssetKey("codecontests_index"), dg.AssetKey("tokenizer")]
_DESCRIPTION = {
    "critic": "Value head pretrained on stage-1 rows (balanced correct/incorrect): R at every response token.",
    "reference": "The one-head reference model fine-tuned on correct rows, as Rho-1 trains its reference.",
    "baseline": "Policy fine-tuned with uniform token weights on correct rows (stage-2 sampler).",
    "verifiable": "Policy fine-tuned with the critic's TD-error token weights on correct and incorrect rows.",
    "rho1": "Policy fine-tuned on the tokens with the largest excess loss over the tuned reference (Rho-1).",
    "random_matched": "Control: LogNormal weights with the critic's weights' mean and std, trained like verifiable.",
    "shuffled": "Control: the critic's TD weights permuted within each row, trained like verifiable.",
}


def _preview(result: dict) -> str:
    final = result.get("final", {})
    rows = [{"figure": k, "value": f"{v:.4g}" if isinstance(v, float) else v} for k, v in sorted(final.items())
            if k.startswith(("loss/", "valid/", "value/", "weights/", "td/", "rho1/", "ce/"))]  # fmt: skip
    head = (f"`{result['recipe']}`: {result['steps']} steps, {result['tokens']:,} tokens, {result['rows']} rows, "
            f"{result['world_size']} processes; MLflow run `{result['mlflow_run_id']}`\n\n")  # fmt: skip
    return head + f"Loss curves: `{CURVES_FILE}` in the asset directory.\n\n" + markdown_table(rows)


def training_asset(recipe: str) -> dg.AssetsDefinition:
    name = ASSET[recipe]
    start_group, start = START_FROM[recipe]
    deps = [dg.AssetKey(start), *_DATA]
    if recipe == "rho1":
        deps.append(dg.AssetKey(ASSET["reference"]))
    stage = "stage1" if recipe == "critic" else "stage2"

    @dg.asset(
        name=name,
        group_name=GROUP,
        deps=deps,
        metadata={
            "dvc/params": ["train.defaults", f"train.{recipe}", f"sampling.{stage}"],
            "dvc/plots": [f"storage/{GROUP}/{name}/{CURVES_FILE}"],
        },
        description=_DESCRIPTION[recipe],
    )
    def _training(
        context,
        storage: StorageResource,
        params: ParamsResource,
        mlflow: MlflowResource,
        launcher: LauncherResource,
    ) -> dg.MaterializeResult:
        p = params.load()
        out = storage.asset_dir(GROUP, name)
        mlflow.experiment_id()  # creates the sqlite store once, before any rank opens it
        rdzv = launcher.rendezvous()
        reported: dict = {}

        def write(tmp: Path) -> dict:
            job = plan_job(recipe, p, storage.root, out_dir=tmp, tracking_uri=mlflow.tracking_uri,
                           artifact_location=mlflow.artifact_location, device=launcher.resolved_device(),
                           world_size=rdzv.nproc_per_node * rdzv.nnodes)  # fmt: skip
            job_file = write_job(job)
            command = [sys.executable, "-m", "wmtp_core.train.launch", str(job_file),
                       f"--nproc-per-node={rdzv.nproc_per_node}", f"--nnodes={rdzv.nnodes}"]  # fmt: skip
            if rdzv.endpoint:
                command.append(f"--rdzv-endpoint={rdzv.endpoint}")
            context.log.info(f"{name}: {' '.join(command)}")
            try:
                completed = dg.PipesSubprocessClient().run(command=command, context=context)
            except DagsterPipesExecutionError as e:
                failure = job_file.with_name(FAILURE_FILE)
                why = failure.read_text().strip() if failure.is_file() else str(e)
                raise dg.Failure(
                    description=f"{name}: {why}\nThe previous version of {out} is intact; materializing again "
                    f"resumes from the last checkpoint in {job.checkpoint_dir}.",
                ) from e
            reported.update(completed.get_materialize_result().metadata)
            return {"steps": json.loads((tmp / RESULT_FILE).read_text())["steps"]}

        manifest = publish(out, write, params={"recipe": recipe, **p.train.recipe(recipe).model_dump(mode="json")})
        shutil.rmtree(Path(storage.root) / "checkpoints" / name, ignore_errors=True)
        result = json.loads((out / RESULT_FILE).read_text())
        meta = asset_metadata(out, manifest, preview=_preview(result))
        meta.update({k: v for k, v in reported.items() if k not in meta})
        meta["loss_curves"] = image_metadata(out / CURVES_FILE, f"{name}: loss curves")
        return materialized(meta)

    return _training


training_assets = [training_asset(recipe) for recipe in ASSET]
