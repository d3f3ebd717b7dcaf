"""Two torchrun agents of one process each on 127.0.0.1 form one world of 2 through a c10d rendezvous, as two
nodes would, and train one job together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from wmtp_core import model as wm
from wmtp_core.config import load_params
from wmtp_core.train.job import plan_job
from wmtp_core.train.launch import write_job

pytestmark = pytest.mark.slow


def test_two_nodes_train_one_job(inputs_root: Path, tmp_path: Path):
    params = load_params(inputs_root / "params.yaml")
    job = plan_job("baseline", params, inputs_root / "storage", out_dir=tmp_path / "out",
                   checkpoint_dir=tmp_path / "ckpt" / "policy_baseline", world_size=2)  # fmt: skip
    job_file = write_job(job)
    endpoint = f"127.0.0.1:{free_port()}"
    node = [sys.executable, "-m", "wmtp_core.train.launch", str(job_file), "--nnodes=2", "--nproc-per-node=1",
            f"--rdzv-endpoint={endpoint}", "--rdzv-id=two-nodes"]  # fmt: skip
    agents = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [a.communicate(timeout=600)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    # One world of 2 (the log says "x 2 ranks"); global rank 0, on whichever node, wrote the model.
    assert any("x 2 ranks" in out for out in outputs)
    assert wm.load(tmp_path / "out" / "model").n_future == 4
    logs = sorted(job_file.parent.glob("torchrun.*.log"))
    assert len(logs) == 2
