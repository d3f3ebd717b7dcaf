"""The Kubernetes manifest of a training launch: a Kubeflow `PyTorchJob` (kubeflow.org/v1), built as a dict.

Why a PyTorchJob and not an indexed batch/v1 Job with a headless Service: the training operator makes one
object of the whole run. It creates the Master and Worker pods and a headless Service per replica (so
`<name>-master-0` resolves to the Master pod, the c10d rendezvous host), restarts or fails the replicas
together and reports one job status; gang scheduling (Volcano, scheduler-plugins) plugs into its `runPolicy`.
An indexed Job needs a second object (the Service), `subdomain` wiring and per-index failure handling for the
same, and a failed pod there does not stop its peers, which then wait in a broken rendezvous. The cost: the
cluster needs the Kubeflow training operator (v1).

Every pod runs the same command, `wmtp launch RECIPE --nnodes N --nproc-per-node G --device cuda
--rdzv-endpoint <name>-master-0:29400 --rdzv-id <name>`: the per-node agent, which plans the job from the
params file and the storage on the mounted volume, runs torchrun with exactly those rendezvous arguments (the
`wmtp/torchrun-args` annotation repeats them) and publishes the trained asset once. Raw torchrun would need
the job file planned beforehand and would leave the model unpublished. With c10d the node ranks follow
rendezvous order, so Master and Workers differ only in the replica type the operator needs.

`restartPolicy: OnFailure` with torchrun's `--max-restarts=0` (PITFALLS.md: restarts inside torchrun are
flaky): when a rank fails, every agent exits non-zero, the containers restart, re-plan and resume from the
last checkpoint on the volume; `backoffLimit` bounds the retries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from wmtp_core.train.launch import Rendezvous

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator sets MASTER_ADDR & co. only in a container of this name
PORT_NAME = "pytorchjob-port"  # ... and takes MASTER_PORT and the Service's port from the port of this name
RDZV_PORT = 29400
GPU = "nvidia.com/gpu"
DEFAULT_WORKDIR = "/workspace/wmtp"
STORAGE_VOLUME = "storage"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def job_name(asset: str) -> str:
    """A DNS-1123 name for the asset's job: `wmtp-policy-baseline`."""
    return "wmtp-" + asset.replace("_", "-").lower()


@dataclass(frozen=True)
class PodOptions:
    """What the cluster needs beyond the launch itself: where the code is, where the storage is, resources."""

    image: str
    storage_pvc: str  # a PersistentVolumeClaim (ReadWriteMany when nnodes > 1) holding the storage root
    namespace: str = "default"
    workdir: str = DEFAULT_WORKDIR  # the project (params.yaml, presets/) inside the image
    gpus_per_node: int = 4
    env: dict[str, str] = field(default_factory=dict)  # WMTP_PARAMS, MLFLOW_TRACKING_URI, NCCL_* ...
    cpu: str | None = None
    memory: str | None = None
    backoff_limit: int = 3


def rendezvous(name: str, nnodes: int, nproc_per_node: int) -> Rendezvous:
    """One pod: standalone. Several: c10d on the Master pod's Service, the job's name as the run id."""
    if nnodes == 1:
        return Rendezvous(nproc_per_node, 1)
    return Rendezvous(nproc_per_node, nnodes, f"{name}-master-0:{RDZV_PORT}", name)


def launch_command(recipe: str, rdzv: Rendezvous) -> list[str]:
    """The command of every pod: `wmtp launch` with the rendezvous its torchrun will use."""
    command = ["wmtp", "launch", recipe, "--nnodes", str(rdzv.nnodes), "--nproc-per-node",
               str(rdzv.nproc_per_node), "--device", "cuda"]  # fmt: skip
    if rdzv.endpoint is not None:
        command += ["--rdzv-endpoint", rdzv.endpoint, "--rdzv-id", str(rdzv.run_id)]
    return command


def _pod_template(recipe: str, rdzv: Rendezvous, pod: PodOptions) -> dict[str, Any]:
    limits: dict[str, Any] = {GPU: pod.gpus_per_node}
    requests: dict[str, Any] = {GPU: pod.gpus_per_node}
    for key, value in (("cpu", pod.cpu), ("memory", pod.memory)):
        if value is not None:
            limits[key] = requests[key] = value
    container = {
        "name": CONTAINER,
        "image": pod.image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": pod.workdir,
        "command": launch_command(recipe, rdzv),
        "env": [{"name": k, "value": v} for k, v in pod.env.items()],
        "ports": [{"name": PORT_NAME, "containerPort": RDZV_PORT}],
        "resources": {"limits": limits, "requests": requests},
        "volumeMounts": [
            {"name": STORAGE_VOLUME, "mountPath": f"{pod.workdir.rstrip('/')}/storage"},
            {"name": "dshm", "mountPath": "/dev/shm"},  # NCCL's shared memory; a container's default is 64 MB
        ],
    }
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "wmtp", "wmtp/recipe": recipe}},
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": STORAGE_VOLUME, "persistentVolumeClaim": {"claimName": pod.storage_pvc}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


def pytorch_job(recipe: str, name: str, nnodes: int, nproc_per_node: int, pod: PodOptions) -> dict[str, Any]:
    """`recipe` on `nnodes` pods of `nproc_per_node` processes each: 1 Master and nnodes - 1 Workers."""
    if not _DNS_LABEL.match(name) or len(name) > 50:  # the operator appends -worker-NN to pod names
        raise ValueError(f"job name {name!r}: expected lowercase letters, digits and '-', at most 50 of them")
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes={nnodes}, nproc_per_node={nproc_per_node}: expected positive integers")
    if nproc_per_node > pod.gpus_per_node:
        raise ValueError(
            f"nproc_per_node={nproc_per_node} exceeds gpus_per_node={pod.gpus_per_node}: one process per GPU"
        )
    rdzv = rendezvous(name, nnodes, nproc_per_node)
    counts = {"Master": 1, "Worker": nnodes - 1}
    # Each replica gets its own template (one shared dict would come out of YAML as an anchor and an alias).
    replicas = {
        kind: {"replicas": n, "restartPolicy": "OnFailure", "template": _pod_template(recipe, rdzv, pod)}
        for kind, n in counts.items()
        if n > 0
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": pod.namespace,
            "labels": {"app.kubernetes.io/name": "wmtp", "wmtp/recipe": recipe},
            "annotations": {"wmtp/torchrun-args": " ".join(rdzv.args())},
        },
        "spec": {
            "nprocPerNode": str(nproc_per_node),
            "runPolicy": {"backoffLimit": pod.backoff_limit, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": replicas,
        },
    }


def render(manifest: dict[str, Any]) -> str:
    return yaml.safe_dump(manifest, sort_keys=False, width=float("inf"))  # no folded lines in commands
