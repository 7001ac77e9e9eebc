"""The warm fork server: a pre-imported Python that forks one child per run.

A skill server starts one of these (``python -m skillscale.skill_server.forkserver FD
MODULE...``) with a scrubbed environment: nothing of the skill server's
environment (API keys, tokens) is in the fork server's environment block,
which every child it forks carries as its own ``/proc/self/environ``. It
imports the configured modules once, then waits on FD, one end of a
socketpair the skill server kept the other end of. There is no socket path:
a skill cannot connect to the fork server and have it run something with an
environment of its choosing, because nothing but the skill server holds an
end, children close every inherited fd, and the fork server is not dumpable
(another process of the same user cannot ``ptrace`` it or take its fds;
root can, and root skills are trusted code anyway).

For each run the skill server creates a new socketpair and sends one end
over FD (``SCM_RIGHTS``). The fork server forks at once, without reading
anything from it:

* the child reads the run's JSON header (script, working directory,
  environment, resource limits) with the stdin, stdout and stderr pipe ends
  attached, starts a new session (so the skill server's timeout can kill the
  whole process group), takes the pipes as fds 0-2, closes every other fd,
  changes directory, replaces its environment, applies the rlimits, and runs
  the script with ``runpy`` as ``__main__``, exactly like ``python run.py``
  but without interpreter start-up or re-imports; each run is a fresh fork,
  so no module state leaks from one run to the next. Because only the child
  reads the header, an LLM key handed to one run never enters the fork
  server's memory, from which every later run is forked;
* the parent answers ``{"pid": N}`` at once and ``{"status": S}`` when the
  child exits (reaped on SIGCHLD), then closes the connection.

No process a run starts outlives it: the fork server and each child are
child subreapers, so a run's descendants stay below its child while it
lives and come to the fork server when it ends, which kills them with their
subtrees before it reports the status (see ``skillscale.skill_server.executor`` for
the mechanism and where it is unavailable).

The fork server is single-threaded on purpose: ``fork`` is only safe in a
process without other threads. It dies with its skill server (PDEATHSIG,
and the end of FD), killing every process below it first when it can.

Written here rather than with ``multiprocessing.forkserver``: that one
re-imports ``__main__``, pickles a callable per task, owns the child's
stdio and exit status, and offers no process groups or rlimits; a skill run
needs exactly those.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import json
import os
import resource
import runpy
import select
import selectors
import signal
import socket
import sys
import traceback
from typing import Any

from skillscale.core import stamps
from skillscale.skill_server.executor import kill_adopted, prctl

MAX_HEADER = 1024 * 1024
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 3600.0
"""Seconds a waiting child waits for its run before it ends (the skill server
then forks another when it needs one)."""
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def preload(modules: list[str]) -> list[str]:
    """Import what skills will import, so every fork starts warm; returns failures."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # an optional module (openai, httpx) may be absent
            failed.append(name)
    return failed


def _read_stdio(conn: socket.socket) -> list[int] | None:
    """The three stdio fds (sent with one byte); None if the skill server hung up.

    A timeout mode, not a blocking one, because the fork server's socket
    object shares this descriptor's (non-blocking) flags.
    """
    conn.settimeout(HEADER_TIMEOUT)
    raw, fds, flags, _addr = socket.recv_fds(conn, 1, 3)
    if not raw and not fds:
        return None
    if len(fds) != 3 or flags & socket.MSG_CTRUNC:
        raise ValueError(f"expected 3 fds, got {len(fds)}")
    return fds


def _read_header(conn: socket.socket) -> dict[str, Any] | None:
    """The run's header (one JSON line); None if the skill server hung up first
    or never sent one in ``IDLE_TIMEOUT`` seconds."""
    conn.settimeout(IDLE_TIMEOUT)
    try:
        raw = conn.recv(64 * 1024)
    except TimeoutError:
        return None
    if not raw:
        return None
    conn.settimeout(HEADER_TIMEOUT)  # once a header has begun, the rest is due
    while not raw.endswith(b"\n"):
        chunk = conn.recv(64 * 1024)
        if not chunk or len(raw) > MAX_HEADER:
            raise ValueError("incomplete header")
        raw += chunk
    header: dict[str, Any] = json.loads(raw)
    return header


def _child(conn: socket.socket, server_pid: int) -> None:
    """Become the skill process; never returns."""
    code = 1
    try:
        os.setsid()
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server_pid:
            os._exit(137)  # the fork server died before the death signal was armed
        prctl(_PR_SET_CHILD_SUBREAPER, 1)
        # Dumpable again, as a freshly exec'd skill is: nothing secret is
        # inherited, and the skill's own tools may read its /proc entries.
        prctl(_PR_SET_DUMPABLE, 1)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as a fresh interpreter has it
        try:
            fds = _read_stdio(conn)
            if fds is None:
                os._exit(0)  # never used: the skill server let this waiting child go
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            # The control socket, other runs' nothing: all go but this run's
            # connection, which the header is still to come on.
            keep = conn.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
            # Everything above runs before the request exists (a waiting
            # child); from here on it is the request's time.
            header = _read_header(conn)
            if header is None:
                os._exit(0)
        except (OSError, ValueError) as exc:
            print(f"fork server child: bad run request: {exc}", file=sys.stderr, flush=True)
            raise
        conn.close()
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
        if "argv" in header:  # not Python (run.sh): this process becomes it
            argv = [str(a) for a in header["argv"]]
            # As a shell would start it: SIGXFSZ was ignored for Python's sake.
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            if stamps.ON:
                stamps.stamp("child.ready")
            try:
                os.execve(argv[0], argv, header["env"])  # noqa: S606 - an argv, never a shell
            except OSError as exc:
                print(f"cannot run {argv[-1]}: {exc}", file=sys.stderr, flush=True)
                os._exit(127)
        script = header["script"]
        sys.argv = [script]
        sys.path[0] = os.path.dirname(script)
        if stamps.ON:  # only after closerange: stamp() opens a descriptor
            stamps.stamp("child.ready")
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
        if stamps.ON:
            stamps.stamp("child.ran")
    finally:
        os._exit(code & 0xFF)


class ForkServer:
    """The receive/fork/reap loop."""

    def __init__(self, control_fd: int) -> None:
        self.control = socket.socket(fileno=control_fd)
        self.control.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.control, selectors.EVENT_READ)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self.wake_w)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, lambda *_: None)
        # Ctrl-C reaches the whole foreground process group, us included; the
        # skill server decides how its running skills end (it drains them).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.children: dict[int, socket.socket] = {}
        self.retiring = False
        """The skill server closed its end: no new runs, exit after the last."""
        self.pid = os.getpid()
        # A run whose connection the skill server closes before its status
        # came was abandoned (cancelled mid-start, or the executor closed):
        # nobody would ever time it out, so it is killed. Hang-ups are watched
        # apart (EPOLLRDHUP) since the header bytes on the connection are the
        # child's to read, not ours.
        self.hangups = select.epoll() if hasattr(select, "epoll") else None
        if self.hangups is not None:
            self.selector.register(self.hangups.fileno(), selectors.EVENT_READ)

    def serve(self) -> None:
        """Run until the skill server closes its end (and the runs we forked
        have ended) or asks us to stop.

        A closed end with runs still going is a replacement (a fork server
        with a larger preload took over): those runs finish here as usual,
        and a run the skill server gives up on is killed as ever, when its
        connection closes.
        """
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    if not self._receive():
                        if not self.children:
                            return
                        self.selector.unregister(self.control)
                        self.retiring = True
                elif self.hangups is not None and key.fileobj == self.hangups.fileno():
                    self._abandoned()
                else:
                    if signal.SIGTERM in os.read(self.wake_r, 4096):
                        return
                    self._reap()
            if self.retiring and not self.children:
                return

    def shutdown(self) -> None:
        """Kill every process below us, runs and their leftovers alike."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        kill_adopted(lambda _pid, _st: True)

    def _receive(self) -> bool:
        """Fork a child per connection the skill server sent; False at its end."""
        while True:
            try:
                data, fds, flags, _addr = socket.recv_fds(self.control, 1, 1)
            except BlockingIOError:
                return True
            if not data:
                return False
            if len(fds) == 1 and not flags & socket.MSG_CTRUNC:
                self._fork(socket.socket(fileno=fds[0]))
            else:
                for fd in fds:
                    os.close(fd)

    def _fork(self, conn: socket.socket) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if stamps.ON:
            stamps.stamp("fork.start")
        pid = os.fork()
        if pid == 0:
            _child(conn, self.pid)
        if stamps.ON:
            stamps.stamp("fork.done")
        self.children[pid] = conn
        if self.hangups is not None:
            self.hangups.register(conn.fileno(), select.EPOLLRDHUP)
        conn.settimeout(5)
        # If the skill server gave up, this fails and so will the status.
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        self._reap()  # the child may already have exited

    def _reap(self) -> None:
        ended: list[tuple[socket.socket, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if stamps.ON:
                stamps.stamp("fork.reaped")
            conn = self.children.pop(pid, None)
            if conn is not None:  # else an orphan a run left us, killed already
                if self.hangups is not None:
                    with contextlib.suppress(OSError):  # gone if it hung up
                        self.hangups.unregister(conn.fileno())
                ended.append((conn, os.waitstatus_to_exitcode(status)))
        if ended and self._may_have_orphans():
            # What a run left behind dies before the run is reported over.
            kill_adopted(lambda pid, _st: pid not in self.children)
        for conn, code in ended:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"status": code}).encode() + b"\n")
            conn.close()

    def _abandoned(self) -> None:
        assert self.hangups is not None
        by_fd = {conn.fileno(): pid for pid, conn in self.children.items()}
        for fd, _events in self.hangups.poll(0):
            self.hangups.unregister(fd)
            if fd in by_fd:
                # Its descendants die when it is reaped, like any run's.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(by_fd[fd], signal.SIGKILL)

    def _may_have_orphans(self) -> bool:
        # One read of our (single) thread's children list says whether any
        # child is not a run of ours; waiting children make self.children
        # never empty, so the fallbacks below would always walk /proc.
        try:
            with open(f"/proc/self/task/{self.pid}/children") as fh:
                pids = {int(p) for p in fh.read().split()}
        except OSError:
            pass
        else:
            return not pids <= self.children.keys()
        if self.children or not hasattr(os, "waitid"):
            return True  # cannot tell runs from orphans without looking
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False  # no child at all
        return True


def main(argv: list[str]) -> int:
    """``python -m skillscale.skill_server.forkserver FD [MODULE ...]``."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(_PR_SET_DUMPABLE, 0)
    prctl(_PR_SET_CHILD_SUBREAPER, 1)
    control_fd, modules = int(argv[0]), argv[1:]
    failed = preload(modules)
    # What was imported is never collected: kept out of the collector's reach,
    # a child's collections do not touch (and so copy) those pages.
    gc.freeze()
    server = ForkServer(control_fd)
    # One line on stdout: the skill server waits for it before sending work.
    print(json.dumps({"ready": True, "pid": os.getpid(), "missing": failed}), flush=True)
    try:
        server.serve()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
