"""The sandbox contains hostile programs: each one below would pass its test if it escaped."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.sandbox.conftest import processes_with
from wmtp_core.sandbox.core import Limits, Sandbox, SandboxError, namespaces_available, run
from wmtp_core.sandbox.function_tests import judge_program

# Small limits keep the hostile programs cheap on a shared 2-core machine.
LIMITS = Limits(address_space_mb=256, nproc=16, fsize_mb=1, nofile=32)
PASSING_TEST = "\nassert answer() == 42\n"


@pytest.fixture(scope="module")
def sandbox():
    assert namespaces_available(), "these machines run tests as root with namespaces; the sandbox must use them"
    with Sandbox(limits=LIMITS) as box:
        assert box.isolation == "namespaces"
        yield box


def judge(sandbox: Sandbox, body: str, timeout_s: float = 5.0):
    """A completion `body` followed by `answer()` and a test it passes unless the sandbox stops it."""
    return judge_program(f"{body}\ndef answer():\n    return 42\n{PASSING_TEST}", sandbox=sandbox, timeout_s=timeout_s)


def test_runs_as_unprivileged_uid_with_scrubbed_env_and_stdin(sandbox: Sandbox) -> None:
    os.environ["WMTP_SECRET_FOR_TEST"] = "leak"
    try:
        result = sandbox.run(
            "import os, sys\nprint(os.getuid(), os.getgid(), os.getgroups())\nprint(sorted(os.environ))\n"
            "print(os.getcwd())\nprint(sys.stdin.read().strip().upper())\nprint(os.getpid(), os.getpgid(0))\n"
            "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
            stdin="hello\n",
            timeout_s=5,
        )
    finally:
        del os.environ["WMTP_SECRET_FOR_TEST"]
    assert result.status == "ok", result.stderr_tail
    ids, env, cwd, echoed, pid_group, visible = result.stdout.splitlines()
    uid, gid, groups = ids.split(" ", 2)
    assert int(uid) >= 10_000_000 and int(gid) == int(uid) and groups == "[]"
    assert "WMTP_SECRET_FOR_TEST" not in env and "AWS" not in env
    assert cwd == "/tmp/program"
    assert echoed == "HELLO"
    pid, group = pid_group.split()
    assert pid == group  # its own process group
    assert visible == "[1, 2]"  # its own PID namespace: its init and itself
    closed = sandbox.run("import sys\nprint(repr(sys.stdin.read()))", timeout_s=5)
    assert closed.stdout.strip() == "''"


def test_exit_status_and_stderr_tail(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\nprint('x')\nraise KeyError('boom')", timeout_s=5)
    assert result.status == "error" and result.returncode == 1
    assert result.stdout == "x\n"
    assert result.stderr_tail.rstrip().endswith("KeyError: 'boom'")


def test_output_larger_than_file_size_limit_is_an_error(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\nsys.stdout.write('x' * (4 << 20))", timeout_s=5)
    assert result.status == "error"
    assert len(result.stdout) <= 1 << 20


def test_deleting_or_writing_files_outside_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    tag = secrets.token_hex(8)
    private = tmp_path / "canary.txt"
    private.write_text("canary")
    shared_dir = Path("/tmp") / f"wmtp-canary-{tag}"
    shared_dir.mkdir(mode=0o777)
    shared_dir.chmod(0o777)  # world-writable: only the private /tmp of the sandbox protects it
    shared = shared_dir / "canary.txt"
    shared.write_text("canary")
    shared.chmod(0o666)
    try:
        for target in (private, shared, shared_dir):
            verdict = judge(sandbox, f"import os, shutil\nshutil.rmtree({str(target)!r}) if os.path.isdir({str(target)!r}) "
                                     f"else os.remove({str(target)!r})")
            assert not verdict.passed, target
        overwrite = judge(sandbox, f"open({str(shared)!r}, 'w').write('pwned')")
        assert not overwrite.passed
        # Writes the sandbox allows (its cwd, its own /tmp, /var/tmp, /dev/shm) pass but vanish with it.
        probes = [f"/tmp/wmtp-probe-{tag}", f"/var/tmp/wmtp-probe-{tag}", f"/dev/shm/wmtp-probe-{tag}"]
        writes = "".join(f"open({p!r}, 'w').write('x')\n" for p in probes) + "open('local.txt', 'w').write('x')\n"
        allowed = judge(sandbox, writes)
        assert allowed.passed, allowed.stderr_tail
        assert not any(Path(p).exists() for p in probes)
        assert private.read_text() == "canary" and shared.read_text() == "canary"
        assert sorted(p.name for p in shared_dir.iterdir()) == ["canary.txt"]
    finally:
        shared.unlink(missing_ok=True)
        shared_dir.rmdir()


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    verdict = judge(sandbox, "while True:\n    pass", timeout_s=1.5)
    assert verdict.status == "timeout"
    assert verdict.wall_s < 30


def test_cpu_time_limit_counts_as_timeout() -> None:
    with Sandbox(limits=Limits(cpu_s=1, address_space_mb=256)) as box:
        result = box.run("while True:\n    pass", timeout_s=20)
    assert result.status == "timeout" and result.signal == "SIGXCPU"
    assert result.wall_s < 20


def test_timeout_kills_every_process_even_outside_the_group(sandbox: Sandbox) -> None:
    token = f"1000.{secrets.randbelow(10**9)}"  # a sleep duration nobody else uses marks the escaped child
    body = f"import subprocess\nsubprocess.Popen(['sleep', '{token}'], start_new_session=True)\nwhile True:\n    pass"
    verdict = judge(sandbox, body, timeout_s=1.5)
    assert verdict.status == "timeout"
    assert processes_with(token) == []


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    body = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    verdict = judge(sandbox, body, timeout_s=2)
    assert not verdict.passed
    # The machine still starts processes afterwards.
    assert subprocess.run(["true"]).returncode == 0


def test_unbounded_allocation_is_contained(sandbox: Sandbox) -> None:
    verdict = judge(sandbox, "hog = []\nwhile True:\n    hog.append(bytearray(1 << 24))")
    assert verdict.status == "error"
    assert "MemoryError" in verdict.stderr_tail


def test_network_connection_to_host_listener_fails(sandbox: Sandbox) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        body = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')"
        verdict = judge(sandbox, body)
        assert not verdict.passed
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_signalling_parent_or_host_processes_fails(sandbox: Sandbox) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for body in (
            "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
            f"import os, signal\nos.kill({bystander.pid}, signal.SIGKILL)",
            "import os, signal\nos.kill(-1, signal.SIGKILL)",
            "import os, signal\nos.killpg(0, signal.SIGKILL)",
        ):
            assert not judge(sandbox, body).passed, body
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_fallback_without_namespaces_warns_and_still_limits() -> None:
    with pytest.warns(RuntimeWarning, match="WITHOUT NAMESPACES"):
        box = Sandbox(limits=LIMITS, isolation="rlimits")
    assert box.isolation == "rlimits"
    start = time.perf_counter()
    assert judge(box, "while True:\n    pass", timeout_s=1.5).status == "timeout"
    assert time.perf_counter() - start < 30
    assert judge(box, "import os\nos._exit(0)").status == "failed"
    who = box.run("import os\nprint(os.getuid())", timeout_s=5)
    assert int(who.stdout) != 0
    bomb = judge(box, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", timeout_s=2)
    assert not bomb.passed
    assert judge(box, f"{PASSING_TEST}").status == "error"  # answer() undefined: NameError, not a pass


def test_stdin_for_contest_style_programs() -> None:
    result = run("n = int(input())\nprint(sum(map(int, input().split())) * n)", "2\n1 2 3\n", 5)
    assert (result.status, result.stdout) == ("ok", "12\n")


def test_server_restarts_after_close() -> None:
    with Sandbox(limits=LIMITS) as box:
        assert box.run("print(1)", timeout_s=5).stdout == "1\n"
        box.close()
        assert box.run("print(2)", timeout_s=5).stdout == "2\n"


def test_missing_interpreter_is_reported() -> None:
    with pytest.raises(SandboxError, match="python3.11"):
        Sandbox(interpreter="/nonexistent/python3.11")


def test_signal_numbers_are_reported(sandbox: Sandbox) -> None:
    result = sandbox.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", timeout_s=5)
    assert result.status == "error" and result.signal == signal.Signals.SIGSEGV.name
