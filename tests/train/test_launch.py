"""The torchrun command for one node or several, and the diagnosis of a failed run from torchrun's summary."""

from __future__ import annotations

import sys

import pytest

from wmtp_core.train.launch import Rendezvous, describe_failure, torchrun_command

# torchrun's summary after rank 1 was SIGKILLed: it names the survivor it stopped first, the dead rank as root cause.
KILLED = """\
============================================================
wmtp_core.train.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-02_05:19:32
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 25944)  (SIGTERM)
  error_file: /tmp/torchelastic_x/attempt_0/0/error.json
  traceback : Traceback (most recent call last):
    File "/work/main/wmtp_core/train/loop.py", line 12, in run
      dist.all_reduce(counts)
  RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:9110: Connection reset by peer.

------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_05:19:32
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 25945)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 25945
============================================================
"""

# Rank 1 raised; rank 0 lost its peer and raised too, before torchrun stopped it.
RAISED = """\
Failures:
[1]:
  time      : 2026-12-02_05:19:36
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 25957)
  error_file: /tmp/torchelastic_y/attempt_0/0/error.json
  traceback : Traceback (most recent call last):
    File "/work/main/wmtp_core/train/loop.py", line 12, in run
      dist.barrier()
  RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:40150.

------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_05:19:36
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 25958)
  error_file: /tmp/torchelastic_y/attempt_0/1/error.json
  traceback : Traceback (most recent call last):
    File "/work/main/wmtp_core/train/recipes.py", line 11, in recipe_step
      raise ValueError("bad thing on rank 1")
  ValueError: bad thing on rank 1

============================================================
"""


def test_a_killed_rank_is_named_with_its_signal_even_when_torchrun_lists_a_survivor_first():
    message = describe_failure(KILLED, 1)
    assert "rank 1 was killed by signal SIGKILL (exit code -9)" in message
    assert "stopped rank(s) 0" in message


def test_a_raising_rank_is_named_with_its_exception_not_the_peer_that_lost_it():
    message = describe_failure(RAISED, 1)
    assert message.startswith("training failed: rank 1 raised ValueError: bad thing on rank 1")
    assert "recipes.py" in message


def test_a_failure_before_any_rank_reports_shows_the_end_of_the_log():
    message = describe_failure("some\nstart-up\nerror: address already in use\n", 1)
    assert "exited with code 1 before any rank reported" in message and "address already in use" in message


def test_one_node_is_standalone_several_share_a_c10d_rendezvous():
    one = torchrun_command("job.json", Rendezvous(2))
    assert one[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in one and "--nproc-per-node=2" in one and "--max-restarts=0" in one
    assert one[-3:] == ["-m", "wmtp_core.train.worker", "job.json"]
    many = torchrun_command("job.json", Rendezvous(4, 2, "10.0.0.1:29500", "exp1"))
    assert "--standalone" not in many
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29500", "--rdzv-id=exp1"} <= set(many)
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        torchrun_command("job.json", Rendezvous(4, 2))
    with pytest.raises(ValueError, match="nproc_per_node=0"):
        torchrun_command("job.json", Rendezvous(0))
