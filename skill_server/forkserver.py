"""The warm fork server: a pre-imported Python that forks one child per run.

A skill server starts one of these (``python -m skill_server.forkserver
SOCKET``). It imports the configured modules once, then waits on a UNIX
socket. For each run the skill server connects, sends a JSON header (script,
working directory, environment, resource limits) with the child's stdin,
stdout and stderr pipe ends attached (``SCM_RIGHTS``), and the fork server
forks:

* the child starts a new session (so the skill server's timeout can kill the
  whole process group), takes the pipes as fds 0-2, closes every other fd,
  changes directory, replaces its environment, applies the rlimits, and runs
  the script with ``runpy`` as ``__main__``, exactly like ``python run.py``
  but without interpreter start-up or re-imports; each run is a fresh fork,
  so no module state leaks from one run to the next;
* the parent answers ``{"pid": N}`` at once and ``{"status": S}`` when the
  child exits (reaped on SIGCHLD), then closes the connection.

The fork server is single-threaded on purpose: ``fork`` is only safe in a
process without other threads. It dies with its skill server (PDEATHSIG).

Written here rather than with ``multiprocessing.forkserver``: that one
re-imports ``__main__``, pickles a callable per task, owns the child's
stdio and exit status, and offers no process groups or rlimits; a skill run
needs exactly those.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import io
import json
import os
import resource
import runpy
import selectors
import signal
import socket
import sys
import traceback
from typing import Any

MAX_HEADER = 1024 * 1024
_PR_SET_PDEATHSIG = 1


def preload(modules: list[str]) -> list[str]:
    """Import what skills will import, so every fork starts warm; returns failures."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # an optional module (openai, httpx) may be absent
            failed.append(name)
    return failed


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child(header: dict[str, Any], fds: list[int]) -> None:
    """Become the skill process; never returns."""
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as a fresh interpreter has it
        _die_with_parent()
        for kind, value in header.get("rlimits", []):
            resource.setrlimit(kind, (value, value))
        os.chdir(header["cwd"])
        os.environ.clear()
        os.environ.update(header["env"])
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                      line_buffering=False)  # fmt: skip
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)  # fmt: skip
        script = header["script"]
        sys.argv = [script]
        sys.path[0] = os.path.dirname(script)
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    finally:
        os._exit(code & 0xFF)


class ForkServer:
    """The accept/fork/reap loop."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(128)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.children: dict[int, socket.socket] = {}

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    os.read(self.wake_r, 4096)
                    self._reap()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            conn.settimeout(5)
            raw, fds, _flags, _addr = socket.recv_fds(conn, MAX_HEADER, 3)
            header = json.loads(raw)
            if len(fds) != 3:
                raise ValueError(f"expected 3 fds, got {len(fds)}")
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(header, fds)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        # If the skill server gave up, this fails and so will the status.
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        self._reap()  # the child may already have exited

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"status": code}).encode() + b"\n")
            conn.close()


def main(argv: list[str]) -> int:
    """``python -m skill_server.forkserver SOCKET [MODULE ...]``."""
    _die_with_parent()
    path, modules = argv[0], argv[1:]
    failed = preload(modules)
    server = ForkServer(path)
    # One line on stdout: the skill server waits for it before sending work.
    print(json.dumps({"ready": True, "pid": os.getpid(), "missing": failed}), flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
