"""Resources shared by every asset: where files go, what params.yaml says, MLflow, and the training launcher.

Paths default to the project root: `WMTP_ROOT` if set, else the nearest directory at or above the current one
that holds `params.yaml` (DVC runs stage commands from the repository root, so both agree). The params file
is the root's params.yaml unless `WMTP_PARAMS` names another (absolute, or relative to the root), e.g.
`WMTP_PARAMS=presets/7b_1t_4.yaml`: `wmtp materialize`, `demo`, `ui` and DVC's stage commands all read it.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from wmtp_core.config import Params, load_params, params_file, project_dir


def project_root() -> Path:
    return project_dir()


def default_storage_root(root: Path | None = None) -> Path:
    if env := os.environ.get("WMTP_STORAGE"):
        return Path(env).absolute()
    return (root or project_root()) / "storage"


def dagster_home(storage_root: Path | None = None) -> Path:
    """The persistent DAGSTER_HOME (runs, event log, lineage), created with telemetry off if missing.

    `dagster dev`, `wmtp materialize` and DVC stages all use it, so their runs share one event log.
    """
    home = Path(os.environ.get("DAGSTER_HOME") or (storage_root or default_storage_root()) / "dagster_home")
    home = home.absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return home


class StorageResource(dg.ConfigurableResource):
    """The storage root; every asset lives in `<root>/<group>/<asset>/`."""

    root: str

    def asset_dir(self, group: str, name: str) -> Path:
        return Path(self.root) / group / name


class ParamsResource(dg.ConfigurableResource):
    """params.yaml, validated on every load so an edit between runs is seen."""

    path: str

    def load(self) -> Params:
        return load_params(self.path)


class MlflowResource(dg.ConfigurableResource):
    """Where runs are tracked. The default is a sqlite store under storage/ with artifacts beside it.

    An explicit artifact location keeps artifacts out of `./mlruns` of whatever directory a run starts in.
    """

    tracking_uri: str
    artifact_location: str
    experiment: str = "wmtp"

    def experiment_id(self) -> str:
        """The experiment's id, created (with the explicit artifact location) on first use.

        Through a client, not `mlflow.set_tracking_uri`: that also sets MLFLOW_TRACKING_URI in this process's
        environment, which every later resource build (and training launch) would then read.
        """
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            # sqlite creates the database file, not its directory.
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(self.experiment, artifact_location=self.artifact_location)


class LauncherResource(dg.ConfigurableResource):
    """How training processes start: `torchrun --nproc-per-node N --nnodes M` with this backend and device.

    `auto` picks nccl/cuda when a GPU is visible and gloo/cpu otherwise; `nproc_per_node: 0` is one process per
    visible GPU, or 2 CPU processes on gloo (the embedded default tests the distributed path on a laptop).
    """

    nproc_per_node: int = 0
    nnodes: int = 1
    backend: str = "auto"
    device: str = "auto"
    rdzv_endpoint: str = "127.0.0.1:29500"

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_nproc_per_node(self) -> int:
        from wmtp_core.train.launch import processes_per_node

        return processes_per_node(self.nproc_per_node, self.resolved_device())

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.resolved_device().startswith("cuda") else "gloo"

    def rendezvous(self):
        """torchrun's rendezvous: standalone on one node, the c10d endpoint across several."""
        from wmtp_core.train.launch import Rendezvous

        endpoint = self.rdzv_endpoint if self.nnodes > 1 else None
        return Rendezvous(self.resolved_nproc_per_node(), self.nnodes, endpoint)


def build_resources(storage_root: str | Path | None = None, params_path: str | Path | None = None) -> dict:
    """The resources of the code location. Environment variables override the defaults:

    WMTP_PARAMS, MLFLOW_TRACKING_URI, WMTP_MLFLOW_ARTIFACTS, WMTP_NPROC_PER_NODE, WMTP_NNODES, WMTP_BACKEND,
    WMTP_DEVICE, WMTP_RDZV_ENDPOINT.
    """
    root = project_root()
    storage = Path(storage_root).absolute() if storage_root else default_storage_root(root)
    mlflow_dir = storage / "mlflow"
    env = os.environ
    return {
        "storage": StorageResource(root=str(storage)),
        "params": ParamsResource(
            path=str(Path(params_path).absolute() if params_path else params_file(root))
        ),
        "mlflow": MlflowResource(
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            artifact_location=env.get("WMTP_MLFLOW_ARTIFACTS") or (mlflow_dir / "artifacts").as_uri(),
        ),
        "launcher": LauncherResource(
            nproc_per_node=int(env.get("WMTP_NPROC_PER_NODE", "0")),
            nnodes=int(env.get("WMTP_NNODES", "1")),
            backend=env.get("WMTP_BACKEND", "auto"),
            device=env.get("WMTP_DEVICE", "auto"),
            rdzv_endpoint=env.get("WMTP_RDZV_ENDPOINT", "127.0.0.1:29500"),
        ),
    }
