"""Start torchrun for a training job and, when it fails, say which rank failed and how.

    python -m wmtp_core.train.launch JOB_JSON --nproc-per-node 2

runs `python -m torch.distributed.run ... -m wmtp_core.train.worker JOB_JSON`, echoing its output and keeping a
copy (`torchrun.log` beside the job file). torchrun's own summary sometimes names a survivor it stopped (SIGTERM)
as the root cause, so the failure is read from every rank it lists: a rank killed by another signal, else one
whose traceback is not the broken connection to a dead peer. The Dagster asset runs this same module through
Pipes and attaches that text to the failed step (`failure.txt`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from wmtp_core.train import worker

# The module torchrun starts on every rank. Imported, not only named, so the code that trains (the worker and
# everything it imports) counts as a dependency of every training stage (dagster_defs.versions follows imports).
WORKER_MODULE = worker.__name__
FAILURE_FILE = "failure.txt"
LOG_FILE = "torchrun.log"
JOB_FILE = "job.json"
STAGING = "output"  # `wmtp launch`: where rank 0 writes the model, inside the launch directory
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class TrainingFailed(RuntimeError):
    """torchrun exited non-zero; the message names the rank and its exit signal or exception."""


@dataclass(frozen=True)
class Rendezvous:
    """How ranks find each other: one machine needs nothing (`--standalone` picks a free port); several name
    a c10d endpoint (host:port of one node) and a run id shared by every node's agent."""

    nproc_per_node: int = 1
    nnodes: int = 1
    endpoint: str | None = None
    run_id: str | None = None

    def args(self) -> list[str]:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ValueError(f"nproc_per_node={self.nproc_per_node}, nnodes={self.nnodes}: expected positive integers")
        out = [f"--nproc-per-node={self.nproc_per_node}", f"--nnodes={self.nnodes}", "--max-restarts=0"]
        if self.nnodes == 1 and self.endpoint is None:
            return [*out, "--standalone"]
        if self.endpoint is None:
            raise ValueError(f"nnodes={self.nnodes}: name the rendezvous endpoint (host:port of one node)")
        return [*out, "--rdzv-backend=c10d", f"--rdzv-endpoint={self.endpoint}",
                f"--rdzv-id={self.run_id or 'wmtp-' + uuid.uuid4().hex[:8]}"]  # fmt: skip


def processes_per_node(requested: int, device: str) -> int:
    """`requested`, or for 0 one process per visible GPU, or 2 on CPU (gloo): the embedded default runs the
    distributed path on a laptop."""
    if requested > 0:
        return requested
    if device.startswith("cuda"):
        import torch

        return torch.cuda.device_count()
    return 2


def torchrun_command(job_file: str | Path, rdzv: Rendezvous, python: str = sys.executable) -> list[str]:
    """`python -m torch.distributed.run` (the torchrun of this environment) with the worker module."""
    # --max-restarts stays 0: a restart on gloo often fails to re-rendezvous; the orchestrator retries and the
    # job resumes from its checkpoint instead.
    return [python, "-m", "torch.distributed.run", *rdzv.args(), "-m", WORKER_MODULE, str(job_file)]


def launch_dir(checkpoint_dir: str | Path) -> Path:
    """Where a job's file, torchrun's logs and `wmtp launch`'s staged output live: beside its checkpoints."""
    checkpoint_dir = Path(checkpoint_dir)
    return checkpoint_dir.with_name(checkpoint_dir.name + ".launch")


def write_job(job) -> Path:
    """job.json in the job's launch directory (beside its checkpoints, outside the asset being written)."""
    work = launch_dir(job.checkpoint_dir)
    work.mkdir(parents=True, exist_ok=True)
    return job.write(work / JOB_FILE)


def claim_output(staging: str | Path, result_file: str) -> Path | None:
    """After torchrun succeeded on this node: move the finished output in `staging` aside for this node's
    agent to publish, or None when another node's agent took it first (a rename is atomic on a shared file
    system).

    Every rank passes a barrier after rank 0 wrote its files, so any agent whose torchrun exited 0 finds them.
    """
    staging = Path(staging)
    if not staging.exists():
        return None
    if not (staging / result_file).is_file():
        raise TrainingFailed(f"torchrun exited 0, but {staging} holds no {result_file}: no model was written")
    claimed = staging.with_name(f"{staging.name}.{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(staging, claimed)
    except FileNotFoundError:
        return None
    return claimed


def _blocks(log: str) -> list[dict[str, str]]:
    """The per-rank entries of torchrun's failure summary."""
    entries = []
    for block in re.split(r"\n\[\d+\]:\n", log)[1:]:
        entry: dict[str, str] = {}
        lines = block.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"\s+(rank|exitcode|traceback)\s*:\s?(.*)", line)
            if m and m.group(1) not in entry:
                value = m.group(2)
                if m.group(1) == "traceback":
                    rest = []
                    for more in lines[i + 1 :]:
                        if more.startswith(("---", "===", "Root Cause")):
                            break
                        rest.append(more.strip())
                    value = "\n".join([value, *[r for r in rest if r]])
                entry[m.group(1)] = value.strip()
        if "rank" in entry:
            entries.append(entry)
    return entries


def describe_failure(log: str, returncode: int) -> str:
    """One paragraph: which rank failed first and how (signal name or the exception's last lines)."""
    entries = _blocks(log)
    if not entries:
        tail = "\n".join(log.strip().splitlines()[-15:])
        return f"torchrun exited with code {returncode} before any rank reported:\n{tail}"

    def code(e: dict[str, str]) -> int:
        m = re.match(r"(-?\d+)", e.get("exitcode", ""))
        return int(m.group(1)) if m else 1

    killed = [e for e in entries if code(e) < 0 and -code(e) != signal.SIGTERM]
    raised = [e for e in entries if code(e) > 0 and not any(p in e.get("traceback", "") for p in _PEER_LOST)]
    culprit = (killed or raised or entries)[0]
    rank = culprit["rank"].split(" ")[0]
    c = code(culprit)
    if c < 0:
        name = signal.Signals(-c).name
        how = f"was killed by signal {name} (exit code {c}); a killed rank leaves no traceback"
    else:
        lines = culprit.get("traceback", "").splitlines()
        where = [x for x in lines if x.startswith("File ")]
        exc = lines[-1] if lines else "no traceback recorded"
        how = f"raised {exc}" + (f" ({where[-1]})" if where else "") if lines else f"exited with code {c}: {exc}"
    others = [e["rank"].split(" ")[0] for e in entries if e is not culprit]
    tail = f" (torchrun then stopped rank(s) {', '.join(others)})" if others else ""
    return f"training failed: rank {rank} {how}{tail}"


def launch(job_file: str | Path, rdzv: Rendezvous, *, env: dict[str, str] | None = None) -> None:
    """Run torchrun for `job_file`, echoing its output; raise TrainingFailed describing the failing rank."""
    job_file = Path(job_file).absolute()
    work = job_file.parent
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (work / FAILURE_FILE).unlink(missing_ok=True)
    run_env = {**os.environ, **(env or {})}
    run_env["TMPDIR"] = str(tmp)  # torchrun leaves /tmp/torchelastic_* behind otherwise
    run_env.setdefault("OMP_NUM_THREADS", "1")
    run_env.setdefault("PYTHONUNBUFFERED", "1")
    command = torchrun_command(job_file, rdzv)
    # Each node's agent keeps its own log when several share the launch directory (a shared file system).
    log_path = work / (LOG_FILE if rdzv.nnodes == 1 else f"torchrun.{socket.gethostname()}-{os.getpid()}.log")
    try:
        with open(log_path, "w") as log, subprocess.Popen(
            command, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                log.write(line)
            returncode = proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # torchrun's per-run files; the log above keeps what they said
    if returncode != 0:
        message = describe_failure(log_path.read_text(), returncode)
        (work / FAILURE_FILE).write_text(message + "\n")
        raise TrainingFailed(message)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wmtp_core.train.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="job.json (see wmtp_core.train.job)")
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--rdzv-endpoint", default=None, help="host:port of the c10d rendezvous (several nodes)")
    parser.add_argument("--rdzv-id", default=None, help="run id shared by every node's torchrun")
    args = parser.parse_args(argv)
    try:
        launch(args.job, Rendezvous(args.nproc_per_node, args.nnodes, args.rdzv_endpoint, args.rdzv_id))
    except TrainingFailed as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
