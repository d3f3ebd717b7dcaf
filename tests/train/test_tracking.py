"""MLflow tracking against a local sqlite store and a real `mlflow server`; the loss-curve PNG."""

from __future__ import annotations

import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import free_port
from wmtp_core.train.tracking import (
    MAX_PARAM_VALUE,
    TRUNCATED,
    Tracker,
    flatten,
    plot_loss_curves,
    sanitize_name,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def store(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A sqlite tracking URI (in a directory that does not exist yet) and an artifact directory; cwd is empty."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", tmp_path / "artifacts"


def test_params_metrics_artifacts_and_resume(store, tmp_path):
    uri, artifacts = store
    config = {"train": {"lr": 3e-4, "betas": [0.9, 0.95], "note": "x" * 7000}, "seed": 0}
    with Tracker(uri, artifacts, "wmtp-test", "baseline", tags={"recipe": "baseline"}) as tracker:
        run_id = tracker.run_id
        tracker.log_params(flatten(config))
        tracker.log_metrics({"loss/head1": 2.5, "pass@1": 0.25, "skipped": None, "nan": math.nan}, step=1)
        tracker.log_metrics({"loss/head1": 2.0}, step=2)
        (tmp_path / "curve.txt").write_text("hello")
        tracker.log_artifact(tmp_path / "curve.txt")
        tracker.log_dict({"a": 1}, "config/resolved.json")

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["recipe"] == "baseline"
    params = run.data.params
    assert params["train.lr"] == "0.0003" and params["train.betas"] == "[0.9, 0.95]" and params["seed"] == "0"
    assert len(params["train.note"]) == MAX_PARAM_VALUE and params["train.note"].endswith(TRUNCATED)
    assert run.data.metrics == {"loss/head1": 2.0, "pass_at_1": 0.25}
    # Artifacts land under the explicit location, and nothing in the working directory.
    assert run.info.artifact_uri.startswith(artifacts.as_uri())
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["config", "curve.txt"]
    assert list(artifacts.rglob("curve.txt")) and list(artifacts.rglob("resolved.json"))
    assert not Path("mlruns").exists() and not any(Path.cwd().iterdir())

    # Resume: same params are skipped, metrics append, a changed param is refused by name.
    with Tracker(uri, artifacts, "wmtp-test", "baseline", run_id=run_id) as resumed:
        assert client.get_run(run_id).info.status == "RUNNING"
        resumed.log_params(flatten(config))
        resumed.log_metrics({"loss/head1": 1.5}, step=3)
        with pytest.raises(ValueError, match=r"param 'train.lr' .*already '0.0003'.*cannot log '0.001'"):
            resumed.log_params({"train.lr": 1e-3, "train.new": 1})
    history = client.get_metric_history(run_id, "loss/head1")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert "train.new" not in client.get_run(run_id).data.params  # nothing of a refused batch is logged


def test_failure_marks_run_failed(store):
    uri, artifacts = store
    with (
        pytest.raises(RuntimeError, match="boom"),
        Tracker(uri, artifacts, "wmtp-test", "failing") as tracker,
    ):
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).info.status == "FAILED"
    with pytest.raises(ValueError, match=r"status='DONE'"):
        tracker.finish("DONE")


def test_disabled_tracker_does_nothing(store, monkeypatch):
    uri, artifacts = store
    off = Tracker(uri, artifacts, "wmtp-test", "off", enabled=False)
    monkeypatch.setenv("RANK", "1")
    other_rank = Tracker(uri, artifacts, "wmtp-test", "rank1")
    for tracker in (off, other_rank):
        assert tracker.run_id is None
        tracker.log_params({"a": 1})
        tracker.log_metrics({"b": 2.0}, step=1)
        tracker.log_artifact("/does/not/exist")
        tracker.log_dict({}, "x.json")
        tracker.finish()
    assert not Path(uri.removeprefix("sqlite:///")).exists() and not artifacts.exists()


def test_local_store_requires_artifact_location(store):
    uri, _ = store
    with pytest.raises(ValueError, match=r"needs an explicit artifact_location"):
        Tracker(uri, None, "wmtp-test", "x")


def test_names_and_flatten():
    assert sanitize_name("pass@1") == "pass_at_1"
    assert sanitize_name("valid/loss/head 1:x") == "valid/loss/head 1_x"
    assert sanitize_name("/a//b/") == "a/b"
    with pytest.raises(ValueError, match=r"'\.\./x'"):
        sanitize_name("../x")
    assert flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": {}}) == {"a.b.c": 1, "a.d": [1, 2], "e": {}}


def test_plot_loss_curves(tmp_path):
    history = []
    for step in range(1, 41):
        row = {"step": step, "lr": 3e-4 * min(1.0, step / 5), "value/loss": 0.1}
        for h in range(1, 5):
            row[f"loss/head{h}"] = (2 + h) * math.exp(-step / 20) + 0.5
        row["loss/total"] = sum(row[f"loss/head{h}"] for h in range(1, 5)) / 4
        if step % 10 == 0:
            row.update({f"valid/loss/head{h}": (2.2 + h) * math.exp(-step / 20) + 0.6 for h in range(1, 5)})
        history.append(row)
    path = plot_loss_curves(history, tmp_path / "plots" / "loss.png", "baseline: 4 heads")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width == 990 and height > 1000  # three panels: the heads' losses, the value loss, the learning rate

    no_lr = plot_loss_curves([{"step": 1, "loss/head1": -0.5}], tmp_path / "one.png", "one point")
    assert no_lr.read_bytes()[:8] == PNG_SIGNATURE
    # The critic has no heads' losses: its value loss gets the top panel.
    critic = [{"step": s, "value/loss": 0.5 / s, "valid/value/sq_error": 0.4, "lr": 1e-2} for s in range(1, 6)]
    panels = plot_loss_curves(critic, tmp_path / "critic.png", "critic").read_bytes()
    assert struct.unpack(">II", panels[16:24])[1] < height



def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"mlflow server at {url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def test_against_mlflow_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    cmd = [
        mlflow_cli, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(url, proc, log)
        (tmp_path / "note.txt").write_text("from the client")
        with Tracker(url, None, "wmtp-server", "remote") as tracker:
            tracker.log_params({"model.dim": 32})
            tracker.log_metrics({"pass@1": 0.5}, step=7)
            tracker.log_artifact(tmp_path / "note.txt")
        client = MlflowClient(tracking_uri=url)
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"model.dim": "32"} and run.data.metrics == {"pass_at_1": 0.5}
        assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["note.txt"]
        # Proxied: the server, not the client, wrote the file under --artifacts-destination.
        assert [p.read_text() for p in (tmp_path / "server-artifacts").rglob("note.txt")] == [
            "from the client"
        ]
        assert not (tmp_path / "mlruns").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
