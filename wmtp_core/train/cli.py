"""`wmtp train RECIPE` and `wmtp launch RECIPE`: the training asset's launch without Dagster.

`train` plans the job from the params file (validated before any process starts), runs torchrun, and
publishes the result into `<storage>/training/<asset>/` atomically, exactly where the asset writes it. A
failed or killed run leaves the previous version in place and its checkpoints behind; running the command
again resumes from them.

`launch` is the same run for one node of a cluster: every node runs the same command, rank 0 (on whichever
node the rendezvous put it) writes the model into a staging directory on the shared storage, and the first
agent to claim it publishes the asset. `--dry-run` prints the torchrun command, `--dry-run --k8s` a Kubeflow
PyTorchJob (`wmtp_core.train.k8s`).

The params file is `--params`, else `$WMTP_PARAMS`, else the project's params.yaml; the storage root is
`--storage`, else `$WMTP_STORAGE`, else `storage/` of the project the params file belongs to.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import click

from wmtp_core.config import PARAMS_ENV, load_params, params_file, project_dir
from wmtp_core.storage import publish
from wmtp_core.train.job import ASSET, GROUP, TrainJobError, plan_job
from wmtp_core.train.launch import (
    JOB_FILE,
    STAGING,
    Rendezvous,
    TrainingFailed,
    claim_output,
    launch,
    launch_dir,
    processes_per_node,
    torchrun_command,
    write_job,
)
from wmtp_core.train.memory_plan import memory_plan_command


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


def resolve_paths(params_path: Path | None, storage: Path | None) -> tuple[Path, Path]:
    """The params file and the storage root a command uses (see the module docstring)."""
    params_path = Path(params_path) if params_path else params_file()
    if storage is None:
        project = project_dir(params_path.absolute().parent)
        storage = Path(os.environ.get("WMTP_STORAGE") or project / "storage")
    return params_path, storage.absolute()


def _run_options(command):
    """Options shared by `train` and `launch`: what to read, and how many processes on how many nodes."""
    options = [
        click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help=f"the params file (its train.<recipe> and sampling sections) [default: "
                     f"${PARAMS_ENV} or the project's params.yaml]"),
        click.option("--storage", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="storage root holding the input assets [default: $WMTP_STORAGE or storage/ of the "
                     "project the params file belongs to]"),
        click.option("--nproc-per-node", type=int, default=0, show_default=True,
                     help="processes per node; 0 = one per GPU, or 2 CPU processes on gloo"),
        click.option("--nnodes", type=int, default=1, show_default=True),
        click.option("--rdzv-endpoint", default=None,
                     help="host:port of the c10d rendezvous (several nodes)"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@click.command("train")
@click.argument("recipe", type=click.Choice(list(ASSET)))
@_run_options
@click.option("--rdzv-id", default=None, help="run id shared by every node's torchrun (several nodes)")
@click.option("--dry-run", is_flag=True, help="print the torchrun command and the job, start nothing")
def train_command(recipe: str, params_path: Path | None, storage: Path | None, nproc_per_node: int,
                  nnodes: int, rdzv_endpoint: str | None, device: str, rdzv_id: str | None,
                  dry_run: bool) -> None:  # fmt: skip
    """Train RECIPE (critic, reference, baseline, verifiable, rho1, random_matched, shuffled) under torchrun."""
    params_path, storage = resolve_paths(params_path, storage)
    params = load_params(params_path)
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


def _pod_env(params_path: Path, extra: tuple[str, ...]) -> dict[str, str]:
    """Every pod's environment: the params file (as a path inside the project), MLflow, NCCL, then `--env`."""
    root = project_dir(params_path.absolute().parent)
    try:
        relative = params_path.absolute().relative_to(root).as_posix()
    except ValueError:
        raise click.BadParameter(
            f"{params_path} lies outside the project {root}; the pods read the params file from the image, "
            "so keep it in the project (e.g. presets/)",
            param_hint="--params",
        ) from None
    env = {PARAMS_ENV: relative}
    for key in ("MLFLOW_TRACKING_URI", "WMTP_MLFLOW_ARTIFACTS"):
        if value := os.environ.get(key):
            env[key] = value
    if env.get("MLFLOW_TRACKING_URI", "http").split(":")[0] not in ("http", "https", "databricks"):
        click.echo(f"warning: MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']} is local to this machine; "
                   "the pods need a tracking server (unset, they log to sqlite on the storage volume)",
                   err=True)  # fmt: skip
    env["NCCL_DEBUG"] = "WARN"
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def _k8s_manifest(recipe: str, params_path: Path, nproc_per_node: int, nnodes: int, options: dict) -> str:
    from wmtp_core.train import k8s

    for flag in ("image", "storage_pvc"):
        if not options[flag]:
            raise click.UsageError(f"--k8s needs --{flag.replace('_', '-')}: the pods run that image and "
                                   "keep the storage root on that claim")  # fmt: skip
    gpus = options["gpus_per_node"] or nproc_per_node or 4
    pod = k8s.PodOptions(image=options["image"], storage_pvc=options["storage_pvc"],
                         namespace=options["namespace"], workdir=options["workdir"], gpus_per_node=gpus,
                         env=_pod_env(params_path, options["env"]), cpu=options["cpu"],
                         memory=options["memory"])  # fmt: skip
    name = options["name"] or k8s.job_name(ASSET[recipe])
    return k8s.render(k8s.pytorch_job(recipe, name, nnodes, nproc_per_node or gpus, pod))


@click.command("launch")
@click.argument("recipe", type=click.Choice(list(ASSET)))
@_run_options
@click.option("--rdzv-id", default=None, help="run id shared by every node's agent [default: wmtp-<asset>]")
@click.option("--dry-run", is_flag=True, help="print this node's torchrun command (with --k8s: a manifest)")
@click.option("--k8s", is_flag=True, help="with --dry-run: print a Kubeflow PyTorchJob running this launch")
@click.option("--image", default=None, help="--k8s: container image holding the project and its environment")
@click.option("--namespace", default="default", show_default=True, help="--k8s: namespace of the job")
@click.option("--name", default=None, help="--k8s: the job's name [default: wmtp-<asset>]")
@click.option("--gpus-per-node", type=int, default=None,
              help="--k8s: GPUs per pod [default: --nproc-per-node or 4]")
@click.option("--storage-pvc", default=None, help="--k8s: PersistentVolumeClaim mounted as the storage root "
              "(ReadWriteMany for several nodes)")  # fmt: skip
@click.option("--workdir", default="/workspace/wmtp", show_default=True,
              help="--k8s: the project's directory inside the image")
@click.option("--cpu", default=None, help="--k8s: CPU request and limit per pod, e.g. 32")
@click.option("--memory", default=None, help="--k8s: memory request and limit per pod, e.g. 512Gi")
@click.option("--env", multiple=True, help="--k8s: KEY=VALUE set in every pod, e.g. NCCL_SOCKET_IFNAME=eth0 "
              "(repeatable)")  # fmt: skip
def launch_command(recipe: str, params_path: Path | None, storage: Path | None, nproc_per_node: int,
                   nnodes: int, rdzv_endpoint: str | None, device: str, rdzv_id: str | None, dry_run: bool,
                   k8s: bool, **k8s_options) -> None:  # fmt: skip
    """Train RECIPE on this node of a cluster: plan the job, run torchrun, publish the asset once.

    Run the same command on every node. With several nodes torchrun uses a c10d rendezvous at
    --rdzv-endpoint (host:port of one of them) and assigns node ranks in the order the agents join, so there
    is no --node-rank: rank 0 lands on whichever node, writes the model to the shared storage, and the first
    agent to claim it publishes `<storage>/training/<asset>`. Every node must see the same storage.
    """
    params_path, storage = resolve_paths(params_path, storage)
    params = load_params(params_path)  # a wrong key stops here, on every path (dry or not)
    asset = ASSET[recipe]
    if k8s:
        if not dry_run:
            raise click.UsageError("--k8s prints a manifest: add --dry-run (and apply it with kubectl)")
        click.echo(_k8s_manifest(recipe, params_path, nproc_per_node, nnodes, k8s_options), nl=False)
        return
    if nnodes > 1 and rdzv_endpoint is None:
        raise click.BadParameter(f"--nnodes {nnodes}: the nodes meet at a c10d rendezvous; name host:port "
                                 "of one of them", param_hint="--rdzv-endpoint")  # fmt: skip
    device = resolve_device(device)
    rdzv_id = rdzv_id or (f"wmtp-{asset}" if nnodes > 1 else None)  # the same on every node without naming it
    rdzv = Rendezvous(processes_per_node(nproc_per_node, device), nnodes, rdzv_endpoint, rdzv_id)
    final = storage / GROUP / asset
    checkpoints = storage / "checkpoints" / asset
    staging = launch_dir(checkpoints) / STAGING
    tracking_uri, artifacts = default_tracking(storage)

    def plan() -> Path:
        return write_job(plan_job(recipe, params, storage, out_dir=staging, checkpoint_dir=checkpoints,
                                  tracking_uri=tracking_uri, artifact_location=artifacts, device=device,
                                  world_size=rdzv.nproc_per_node * rdzv.nnodes))  # fmt: skip

    if dry_run:
        try:
            job_file = plan()
            note = (f"wrote {job_file}: the line trains into {staging}; `wmtp launch` without --dry-run also "
                    f"publishes it as {final}")  # fmt: skip
        except TrainJobError as e:  # e.g. inputs not materialized yet; a dry run still shows the command
            job_file = launch_dir(checkpoints) / JOB_FILE
            note = f"{job_file} is not written ({e}); `wmtp launch` plans it before starting torchrun"
        click.echo(shlex.join(torchrun_command(job_file, rdzv)))
        if nnodes > 1:
            click.echo(f"# the same line on each of the {nnodes} nodes: c10d assigns node ranks in "
                       "rendezvous order (no --node-rank)", err=True)  # fmt: skip
        click.echo(f"# {note}", err=True)
        return

    from wmtp_core.train.loop import RESULT_FILE

    # A failed run's partial output. Safe on every node: no rank writes before all agents have joined.
    shutil.rmtree(staging, ignore_errors=True)
    try:
        launch(plan(), rdzv)
        claimed = claim_output(staging, RESULT_FILE)
    except TrainingFailed as e:
        raise click.ClickException(
            f"{e}\n{final} is unchanged; run the command again (on every node) to resume from {checkpoints}"
        ) from e
    if claimed is None:
        click.echo(f"training finished; another node's agent publishes {final}")
        return

    def move(tmp: Path) -> dict:
        for child in sorted(claimed.iterdir()):
            shutil.move(child, tmp / child.name)
        return {}

    recipe_params = {"recipe": recipe, **params.train.recipe(recipe).model_dump(mode="json")}
    manifest = publish(final, move, params=recipe_params)
    shutil.rmtree(claimed, ignore_errors=True)
    shutil.rmtree(checkpoints, ignore_errors=True)
    click.echo(f"wrote {final} ({len(manifest['files'])} files)")


commands = [train_command, launch_command, memory_plan_command]
