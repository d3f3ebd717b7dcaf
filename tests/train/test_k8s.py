"""`wmtp launch --dry-run`: the torchrun line of one node or of each of several, and (with --k8s) a Kubeflow
PyTorchJob whose pods run that same launch."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import REPO
from wmtp_core.train.cli import launch_command

PRESET = str(REPO / "presets" / "7b_1t_4.yaml")


def _option(command: list[str], name: str) -> str:
    assert command.count(name) == 1, f"{name} in {command}"
    return command[command.index(name) + 1]


def _dry_run(args: list[str]) -> tuple[str, str]:
    result = CliRunner().invoke(launch_command, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("WMTP_PARAMS", "WMTP_STORAGE", "WMTP_ROOT", "MLFLOW_TRACKING_URI", "WMTP_MLFLOW_ARTIFACTS"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_pytorchjob_runs_the_launch_on_every_node(clean_env, tmp_path: Path):
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.ml.svc:5000")
    manifest_text, _ = _dry_run(["rho1", "--k8s", "--params", PRESET, "--nnodes", "3",
                                 "--nproc-per-node", "4", "--image", "registry.example.com/wmtp:1",
                                 "--storage-pvc", "wmtp-storage", "--namespace", "ml", "--cpu", "48",
                                 "--memory", "900Gi", "--env", "NCCL_SOCKET_IFNAME=eth0",
                                 "--env", "NCCL_DEBUG=INFO"])  # fmt: skip
    job = yaml.safe_load(manifest_text)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"]["name"] == "wmtp-policy-rho1" and job["metadata"]["namespace"] == "ml"
    spec = job["spec"]
    assert spec["nprocPerNode"] == "4"
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    endpoint = "wmtp-policy-rho1-master-0:29400"  # the operator's Service of the Master pod
    for kind, replica in replicas.items():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == "registry.example.com/wmtp:1", kind
        assert container["workingDir"] == "/workspace/wmtp"
        command = container["command"]
        assert command[:3] == ["wmtp", "launch", "rho1"]
        assert _option(command, "--nnodes") == "3" and _option(command, "--nproc-per-node") == "4"
        assert _option(command, "--rdzv-endpoint") == endpoint
        assert _option(command, "--rdzv-id") == "wmtp-policy-rho1"
        assert _option(command, "--device") == "cuda"
        assert "--node-rank" not in command  # c10d assigns node ranks
        assert {"name": "pytorchjob-port", "containerPort": 29400} in container["ports"]
        resources = container["resources"]
        assert resources["limits"] == {"nvidia.com/gpu": 4, "cpu": "48", "memory": "900Gi"}
        assert resources["requests"] == resources["limits"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"storage": "/workspace/wmtp/storage", "dshm": "/dev/shm"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["storage"]["persistentVolumeClaim"] == {"claimName": "wmtp-storage"}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"WMTP_PARAMS": "presets/7b_1t_4.yaml",
                       "MLFLOW_TRACKING_URI": "http://mlflow.ml.svc:5000",
                       "NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "eth0"}  # fmt: skip
    args = job["metadata"]["annotations"]["wmtp/torchrun-args"].split()
    assert {"--nnodes=3", "--nproc-per-node=4", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            "--rdzv-id=wmtp-policy-rho1", "--max-restarts=0"} == set(args)  # fmt: skip

    # What each pod's `wmtp launch` runs: torchrun with exactly those rendezvous arguments.
    pod_command = replicas["Worker"]["template"]["spec"]["containers"][0]["command"]
    line, _ = _dry_run([*pod_command[2:], "--params", PRESET, "--storage", str(tmp_path / "storage")])
    torchrun = shlex.split(line.strip())
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    assert set(args) <= set(torchrun)
    job_file = tmp_path / "storage" / "checkpoints" / "policy_rho1.launch" / "job.json"
    assert torchrun[-3:] == ["-m", "wmtp_core.train.worker", str(job_file)]


def test_one_pod_is_a_standalone_master(clean_env):
    manifest, _ = _dry_run(["baseline", "--k8s", "--params", PRESET, "--image", "wmtp:1",
                            "--storage-pvc", "s"])  # fmt: skip
    job = yaml.safe_load(manifest)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["wmtp", "launch", "baseline", "--nnodes", "1", "--nproc-per-node", "4",
                                    "--device", "cuda"]  # fmt: skip
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert "--standalone" in job["metadata"]["annotations"]["wmtp/torchrun-args"]
    assert {e["name"] for e in container["env"]} == {"WMTP_PARAMS", "NCCL_DEBUG"}  # no MLflow URI set here


def test_k8s_asks_for_what_it_cannot_guess(clean_env):
    runner = CliRunner()
    k8s = ["baseline", "--dry-run", "--k8s", "--params", PRESET, "--image", "x"]
    no_pvc = runner.invoke(launch_command, k8s)
    assert no_pvc.exit_code == 2 and "--k8s needs --storage-pvc" in no_pvc.output
    not_dry = runner.invoke(launch_command, ["baseline", "--k8s", "--params", PRESET, "--image", "x",
                                             "--storage-pvc", "s"])  # fmt: skip
    assert not_dry.exit_code == 2 and "add --dry-run" in not_dry.output
    bad_env = runner.invoke(launch_command, [*k8s, "--storage-pvc", "s", "--env", "NOVALUE"])
    assert bad_env.exit_code == 2 and "expected KEY=VALUE" in bad_env.output


def test_dry_run_prints_one_torchrun_line_for_one_node_or_each_of_several(clean_env, training_root: Path):
    params = str(training_root / "params.yaml")
    job_file = training_root / "storage" / "checkpoints" / "policy_baseline.launch" / "job.json"

    one, note = _dry_run(["baseline", "--params", params, "--nproc-per-node", "2", "--device", "cpu"])
    assert one.count("\n") == 1  # one line to paste
    line = shlex.split(one)
    assert line[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--standalone", "--nproc-per-node=2", "--nnodes=1", "--max-restarts=0"} <= set(line)
    assert line[-3:] == ["-m", "wmtp_core.train.worker", str(job_file)]
    # The inputs are materialized, so the job is planned: rank 0 writes into the launch's staging directory.
    assert f"wrote {job_file}" in note
    assert json.loads(job_file.read_text())["out_dir"] == str(job_file.parent / "output")

    several, note = _dry_run(["baseline", "--params", params, "--nnodes", "2", "--nproc-per-node", "2",
                              "--device", "cpu", "--rdzv-endpoint", "node0:29400"])  # fmt: skip
    line = shlex.split(several)
    assert several.count("\n") == 1 and "--standalone" not in line
    assert {"--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400",
            "--rdzv-id=wmtp-policy_baseline"} <= set(line)  # fmt: skip
    assert "the same line on each of the 2 nodes" in note and "no --node-rank" in note

    missing = CliRunner().invoke(launch_command, ["baseline", "--params", params, "--nnodes", "2",
                                                  "--dry-run"])  # fmt: skip
    assert missing.exit_code == 2 and "--rdzv-endpoint" in missing.output and "c10d" in missing.output


def test_every_node_publishes_nothing_twice(tmp_path: Path):
    """The claim of a finished output: the first agent gets it, a later one finds it gone."""
    from wmtp_core.train.launch import TrainingFailed, claim_output

    staging = tmp_path / "output"
    staging.mkdir()
    with pytest.raises(TrainingFailed, match="holds no result.json: no model was written"):
        claim_output(staging, "result.json")
    (staging / "result.json").write_text("{}")
    first = claim_output(staging, "result.json")
    assert first is not None and (first / "result.json").is_file() and not staging.exists()
    assert claim_output(staging, "result.json") is None
