"""`wmtp train RECIPE`: the training asset's launch without Dagster.

Plans the job from params.yaml (validated before any process starts), runs torchrun, and publishes the result
into `<storage>/training/<asset>/` atomically, exactly where the asset writes it. A failed or killed run leaves
the previous version in place and its checkpoints behind; running the command again resumes from them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from wmtp_core.config import load_params
from wmtp_core.storage import publish
from wmtp_core.train.job import ASSET, GROUP, plan_job
from wmtp_core.train.launch import (
    Rendezvous,
    TrainingFailed,
    launch,
    processes_per_node,
    torchrun_command,
    write_job,
)


def default_tracking(storage: Path) -> tuple[str, str]:
    """The local MLflow store of a project: sqlite under storage/mlflow, artifacts beside it."""
    mlflow_dir = storage / "mlflow"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    return (os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            os.environ.get("WMTP_MLFLOW_ARTIFACTS") or (mlflow_dir / "artifacts").as_uri())  # fmt: skip


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command("train")
@click.argument("recipe", type=click.Choice(list(ASSET)))
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), default="params.yaml",
              show_default=True, help="the params file (its train.<recipe> and sampling sections)")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="storage root holding the input assets [default: $WMTP_STORAGE or storage/ beside params]")
@click.option("--nproc-per-node", type=int, default=0, show_default=True,
              help="processes per node; 0 = one per GPU, or 2 CPU processes on gloo")
@click.option("--nnodes", type=int, default=1, show_default=True)
@click.option("--rdzv-endpoint", default=None, help="host:port of the c10d rendezvous (several nodes)")
@click.option("--rdzv-id", default=None, help="run id shared by every node's torchrun (several nodes)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dry-run", is_flag=True, help="print the torchrun command and the job, start nothing")
def train_command(recipe: str, params_path: Path, storage: Path | None, nproc_per_node: int, nnodes: int,
                  rdzv_endpoint: str | None, rdzv_id: str | None, device: str, dry_run: bool) -> None:  # fmt: skip
    """Train RECIPE (critic, reference, baseline, verifiable, rho1, random_matched, shuffled) under torchrun."""
    params = load_params(params_path)
    storage = (storage or Path(os.environ.get("WMTP_STORAGE") or params_path.absolute().parent / "storage")).absolute()
    final = storage / GROUP / ASSET[recipe]
    device = resolve_device(device)
    rdzv = Rendezvous(processes_per_node(nproc_per_node, device), nnodes, rdzv_endpoint, rdzv_id)
    tracking_uri, artifacts = default_tracking(storage)
    world = rdzv.nproc_per_node * nnodes

    def job_file(out_dir: Path) -> Path:
        return write_job(plan_job(recipe, params, storage, out_dir=out_dir, tracking_uri=tracking_uri,
                                  artifact_location=artifacts, device=device, world_size=world))  # fmt: skip

    if dry_run:  # the job as it would run (a real run writes a temporary sibling, then renames it), nothing started
        path = job_file(final)
        click.echo(" ".join(torchrun_command(path, rdzv)))
        click.echo(path.read_text())
        return

    def run(tmp: Path) -> dict:
        launch(job_file(tmp), rdzv)
        return {}

    try:
        manifest = publish(final, run, params={"recipe": recipe, **params.train.recipe(recipe).model_dump(mode="json")})
    except TrainingFailed as e:
        raise click.ClickException(
            f"{e}\n{final} is unchanged; run the command again to resume from {storage / 'checkpoints' / ASSET[recipe]}"
        ) from e
    shutil.rmtree(storage / "checkpoints" / ASSET[recipe], ignore_errors=True)
    click.echo(f"wrote {final} ({len(manifest['files'])} files)")



commands = [train_command]
