"""The warm fork server: a pre-imported Python that forks one child per run.

A skill server starts one of these (``python .../skill_server/forkserver.py FD
MODULE...``, by path: see :func:`main`) with a scrubbed environment: nothing of the skill server's
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
over FD (``SCM_RIGHTS``), with the run's stdin, stdout and stderr pipe ends
and its report channel (:data:`RUN_FDS`). The fork server forks at once,
without reading anything from the connection:

* the child reads the run's header (script, working directory,
  environment, resource limits) from it, starts a new session (so the
  skill server's timeout can kill the whole process group), takes the
  pipes as fds 0-2, closes every other fd,
  changes directory, replaces its environment, applies the rlimits, and runs
  the script as ``__main__`` (``_run_main``), exactly like ``python run.py``
  but without interpreter start-up or re-imports; each run is a fresh fork,
  so no module state leaks from one run to the next. Because only the child
  reads the header, an LLM key handed to one run never enters the fork
  server's memory, from which every later run is forked;
* the parent closes its copies of the run's fds, answers ``{"pid": N}`` at
  once and ``{"status": S}`` when the child exits (reaped on SIGCHLD), then
  closes the connection.

A run of a skill of ``isolation: reused-process`` brings, with its header,
one more fd: the child's own channel to the skill server. After a run that
left nothing behind (no child, no thread) the child says so there
(:data:`AGAIN`), reports the run over, and waits on that channel for its
skill's next run (header and fresh stdio and report channel) instead of
exiting; its connection here is closed before the script runs, as in
every run, so the status lines stay the fork server's alone.

No process a run starts outlives it: the fork server and each child are
child subreapers, so a run's descendants stay below its child while it
lives and come to the fork server when it ends, which kills them with their
subtrees before it reports the status (see ``skillscale.skill_server.executor`` for
the mechanism and where it is unavailable).

Runs that only exec (``run.sh``) are forked by the *exec server*, a child
the fork server forks before it imports anything (see
:func:`_start_exec_server`): the same loop and the same child code, from a
process a fifth of the size, so their fork and exec cost less. The skill
server asks for such a child with ``E`` instead of ``R``; the fork server
passes the connection on, or forks the child itself if the exec server died.

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
import builtins
import contextlib
import ctypes
import gc
import importlib
import importlib.machinery
import io
import json
import marshal
import os
import resource
import select
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
import types
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TextIO

if __name__ == "__main__" and sys.path and os.path.basename(sys.path[0]) == "skill_server":
    # Started by path (see main): the folder of this file is no place to
    # import from; the one holding the skillscale package is.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.basename(_root) == "skillscale":  # installed: .../skillscale/skill_server
        _root = os.path.dirname(_root)
    sys.path[0] = _root


class _NoStamps:
    """Timestamps off: nothing of skillscale is imported for them."""

    ON = False

    @staticmethod
    def stamp(stage: str) -> None:
        """Never called (``ON`` is False)."""


stamps: Any = _NoStamps
if os.environ.get("SKILLSCALE_STAMPS"):  # bench only: this imports the skillscale package
    stamps = importlib.import_module("skillscale.core.stamps")


MAX_HEADER = 1024 * 1024
MAX_CODE = 64 * 1024 * 1024
"""Bound on a compiled script sent after a header."""
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 3600.0
"""Seconds a waiting child waits for its run before it ends (the skill server
then forks another when it needs one)."""
_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
RUN_FDS = 5
"""What comes with each run request on the control socket: the run's
connection (the child reads its header there, the fork server answers its
pid and status), then the child's stdin, stdout, stderr and report channel.
One message: the child has its stdio from the fork, with no second receive
(some 20 copy-on-write faults of a fresh fork, and a send, per run)."""
AGAIN = b"again\n"
"""What a reused process says on its channel after a run it reports over
when it waits for the next (see ``_child``)."""
STARTED = b"run\n"
"""What a reused process says on its channel when a next run's script
begins: a run that ends before it (an exit of something the last run
left, between the two runs) is no result of its script."""
RUN = b"R"
"""A run to fork here (a Python entry point: from the preloaded interpreter)."""
EXEC = b"E"
"""A run that only exec's (``run.sh``): forked by the exec server, see main."""
# signal's C functions themselves: the module's Python wrappers convert
# numbers and handlers to and from enums, and in a fresh fork that machinery
# writes to (so copies) some 30 more pages of the fork server's memory than
# the calls themselves do: about 100 µs of a waiting child's CPU here.
_csignal: Any = importlib.import_module("_signal")
_DEFAULT_IN_CHILD = tuple(
    int(signum) for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE)
)
_SIGXFSZ = int(signal.SIGXFSZ)
_SIGKILL = int(signal.SIGKILL)
# The process-tree code (prctl, the orphan sweep) lives here, in a module of
# the standard library only, so that neither the fork server nor its exec
# server imports anything of skillscale for it; the skill server's cold path
# (skillscale.skill_server.executor) uses the same functions.
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _LIBC = None


_PRCTL: Any = None
"""``prctl(2)`` itself, bound once with its C types, or None off Linux. A
fresh fork's first call through a Python wrapper writes to shared pages
(three calls: 16 copy-on-write faults through :func:`prctl`, 4 through
this), so a child calls it directly."""
if _LIBC is not None and sys.platform.startswith("linux"):
    _PRCTL = _LIBC.prctl
    _PRCTL.argtypes = (ctypes.c_int, *(ctypes.c_ulong,) * 4)
    _PRCTL.restype = ctypes.c_int


def prctl(option: int, value: int) -> bool:
    """``prctl(2)`` with one argument; False where it is unavailable or refused."""
    if _PRCTL is None:
        return False
    if not 0 <= value < 2**64:  # c_ulong would wrap it silently
        raise ValueError(f"prctl value {value} out of range")
    return bool(_PRCTL(option, value, 0, 0, 0) == 0)


class ProcStat(NamedTuple):
    """The fields of ``/proc/PID/stat`` the orphan sweep needs."""

    ppid: int
    session: int
    state: str
    """``Z`` for a zombie (exited, not yet reaped)."""


def proc_stat(pid: int) -> ProcStat | None:
    """What ``/proc`` says about ``pid``, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: parse from the last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcStat(int(fields[1]), int(fields[3]), fields[0].decode())


def _process_table() -> dict[int, ProcStat]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_stat(int(name))) is not None:
            table[int(name)] = stat
    return table


def _own_children() -> dict[int, ProcStat]:
    """This process's children: from ``/proc/self/task/*/children`` where the
    kernel has it (one small read per thread), else from a walk of ``/proc``."""
    me = os.getpid()
    pids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as fh:
                pids.update(int(p) for p in fh.read().split())
    except OSError:  # no CONFIG_PROC_CHILDREN, or a thread just ended
        return {pid: st for pid, st in _process_table().items() if st.ppid == me}
    stats = {pid: proc_stat(pid) for pid in pids}
    return {pid: st for pid, st in stats.items() if st is not None and st.ppid == me}


def _subtree(table: Mapping[int, ProcStat], roots: Iterable[int]) -> list[int]:
    """``roots`` and all their descendants, parents before children."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, stat in table.items():
        children[stat.ppid].append(pid)
    order: list[int] = []
    seen: set[int] = set()
    queue = list(roots)
    while queue:
        pid = queue.pop(0)
        if pid not in seen:
            seen.add(pid)
            order.append(pid)
            queue.extend(children.get(pid, ()))
    return order


def _kill_verified(pid: int, parents: set[int]) -> int | None:
    """SIGKILL ``pid`` if its parent is still one of ``parents``; its pidfd, if any.

    The pidfd pins the process before the parent check, so a pid recycled
    since the walk of ``/proc`` is never signalled.
    """
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except (OSError, AttributeError):  # kernel < 5.3: plain kill, checked just before
        pidfd = None
    stat = proc_stat(pid)
    if stat is None or stat.ppid not in parents:
        if pidfd is not None:
            os.close(pidfd)
        return None
    try:
        if pidfd is None:
            os.kill(pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        # It changed its uid (a setuid program a run started): out of our
        # reach, like an escape from the tree; not a reason to stop.
        if pidfd is not None:
            os.close(pidfd)
        return None
    return pidfd


def _await_exit(pidfds: list[int], deadline: float) -> None:
    """Block until every pidfd says its process exited, or until ``deadline``."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    pending = set(pidfds)
    while pending and (remaining := deadline - time.monotonic()) > 0:
        for fd, _event in poller.poll(remaining * 1000):
            poller.unregister(fd)
            pending.discard(fd)


def kill_adopted(adopted: Callable[[int, ProcStat], bool], patience: float = 2.0) -> int:
    """Kill every child of this process that ``adopted`` accepts, with its whole
    subtree, and reap those children; returns how many processes were signalled.

    For a subreaper these are the orphans it inherited from runs that ended.
    Rounds repeat until none is left: a process forked between the walk of
    ``/proc`` and the kill of its parent is re-parented here and caught by the
    next round (a process with a SIGKILL pending can fork no more).
    """
    if not os.path.exists("/proc/self/stat"):
        return 0  # not Linux, or no /proc: only the process-group kill is left
    me = os.getpid()
    deadline = time.monotonic() + patience
    signalled = 0
    while True:
        orphans = {pid: st for pid, st in _own_children().items() if adopted(pid, st)}
        live = [pid for pid, st in orphans.items() if st.state != "Z"]
        if live and time.monotonic() < deadline:
            doomed = _subtree(_process_table(), live)
            parents = {me, *doomed}
            pidfds = [fd for pid in doomed if (fd := _kill_verified(pid, parents)) is not None]
            signalled += len(doomed)
            try:
                _await_exit(pidfds, deadline)
            finally:
                for fd in pidfds:
                    os.close(fd)
        for pid in orphans:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if not live or time.monotonic() >= deadline:
            return signalled


def preload(modules: list[str]) -> list[str]:
    """Import what skills will import, so every fork starts warm; returns failures."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # an optional module (openai, httpx) may be absent
            failed.append(name)
    return failed


def _report_over(report: int, channel: tuple[int, int] | None, code: int, run_pid: int) -> bool:
    """Tell the skill server this run is over, with its exit code, before the
    exit itself: one byte on ``report``.

    The exit of a fork of the fork server tears down its page tables, and
    the pipes' EOF, the pidfd and the fork server's status line all wait for
    that: 1.1-1.5 ms on the request's path here (``bench/speed.py
    --only-breakdown``). The report goes only when nothing of the run is
    left: this process is a subreaper, so no child at all means no
    descendant at all; a run that left any falls back to the exit, the reap
    and the fork server's kill of its leftovers. fds 0-2 close first so the
    skill server sees the output's end at once. The skill could write the
    byte itself, early, with any code: it could exit early with any code
    too, and the skill server kills the process group on the report, so
    that gains it nothing. A process the script forked (without an exec)
    that ends its copy of the script ends here too, and must not report
    the run over: only ``run_pid`` does.
    """
    if os.getpid() != run_pid or _has_children():
        return False
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        # The script may have closed fd ``report`` and opened a file that got
        # its number: the byte goes only where it was meant to (``channel``).
        return (
            channel is not None
            and _fd_id(report) == channel
            and os.write(report, bytes((code & 0xFF,))) == 1
        )
    except OSError:
        return False


def _has_children() -> bool:
    """Whether this process has a child (zombies reaped on the way)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass  # a zombie child of the run's, reaped: look again
        return True  # a child still runs
    except ChildProcessError:
        return False


def _fd_id(target: int | str) -> tuple[int, int] | None:
    """The file an fd (or a path) is, as device and inode; None if there is none."""
    try:
        st = os.stat(target)
    except OSError:
        return None
    return st.st_dev, st.st_ino


MAX_REUSED_FDS = 1024
"""A reused process with this many fds open (or half its ``RLIMIT_NOFILE``)
takes no next run: a run that leaks fds would leave a later caller's run
unable to receive its own (see :func:`_next_run`)."""
_RLIMITS = tuple(
    getattr(resource, name) for name in sorted(dir(resource))
    if name.startswith("RLIMIT_") and name != "RLIMIT_OFILE"
)  # fmt: skip
_STATUS_KEPT = (
    b"Umask", b"Uid", b"Gid", b"Groups", b"SigBlk", b"SigIgn", b"SigCgt",
    b"CapInh", b"CapPrm", b"CapEff", b"CapBnd", b"CapAmb", b"NoNewPrivs", b"Seccomp",
    b"Seccomp_filters", b"Cpus_allowed_list", b"Mems_allowed_list", b"VmLck", b"THP_enabled",
)  # fmt: skip
"""What of ``/proc/self/status`` a run must leave as it found it: the
process's umask, credentials, signal dispositions and mask as the kernel
has them (set outside Python too), capabilities, syscall filters, CPU and
memory-node affinity, locked memory, transparent huge pages."""
_PROC_KEPT = ("/proc/self/oom_score_adj", "/proc/self/timerslack_ns", "/proc/self/cgroup")
_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}.get(os.uname().machine)
"""``ioprio_get``'s syscall number here (None: the I/O priority is not compared)."""


_LIBC_SIGNALS = sum(1 << (signum - 1) for signum in range(32, int(signal.SIGRTMIN)))
"""Signals 32 to SIGRTMIN-1, glibc's own: its first thread installs their
handlers (SIGCANCEL, SIGSETXID), which a fresh process of the skill would
install too as soon as it made a thread."""


def _status_line(line: bytes) -> bytes:
    name, _, value = line.partition(b":")
    if name in (b"SigCgt", b"SigIgn"):
        return name + b":%x" % (int(value, 16) & ~_LIBC_SIGNALS)
    return line


def _read_proc(path: str, size: int) -> bytes:
    """Up to ``size`` bytes of a ``/proc`` file, in one read (no file object:
    this runs once per reused run)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _identity(namespaces: Iterable[str]) -> tuple[object, ...]:
    """Who and where this process is, as a reused process's next run would
    inherit it: credentials and capabilities, its ``namespaces`` (names in
    ``/proc/self/ns``), its root directory and its parent-death signal (see
    :meth:`_Reuse.reusable`), its OOM score, timer slack, cgroup, personality
    and scheduling policy. About 100 µs of CPU here, once per reused run."""
    status = _read_proc("/proc/self/status", 64 * 1024)
    kept = tuple(_status_line(line) for line in status.splitlines()
                 if line.split(b":", 1)[0] in _STATUS_KEPT)  # fmt: skip
    links = tuple(os.readlink("/proc/self/ns/" + name) for name in namespaces)
    files = tuple(_read_proc(path, 4096) for path in _PROC_KEPT)
    death = ctypes.c_int(-1)
    if _PRCTL is not None:
        _PRCTL(_PR_GET_PDEATHSIG, ctypes.addressof(death), 0, 0, 0)
    personality = _LIBC.personality(0xFFFFFFFF) if _LIBC is not None else None
    scheduler = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    # ioprio_get(IOPRIO_WHO_PROCESS, this process): no libc wrapper, a syscall.
    ioprio = _LIBC.syscall(_IOPRIO_GET, 1, 0) if _LIBC is not None and _IOPRIO_GET else None
    return (kept, links, files, _fd_id("/proc/self/root"), death.value, personality,
            scheduler, ioprio)  # fmt: skip


class _Reuse:
    """What a reused process (``isolation: reused-process``) checks after each
    run and sets back before the next: the state a fresh process of its
    skill would start with, taken before its first run."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.channel_id = _fd_id(channel.fileno())
        self.pid = os.getpid()
        self.rlimits = [(kind, resource.getrlimit(kind)) for kind in _RLIMITS]
        self.priority = os.getpriority(os.PRIO_PROCESS, 0)
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.mask = _csignal.pthread_sigmask(_csignal.SIG_BLOCK, ())
        self.handlers: dict[int, Any] = {}
        for signum in _csignal.valid_signals():
            handler = _csignal.getsignal(signum)
            if handler is not None:  # (None: set outside Python, left alone)
                self.handlers[signum] = handler
        try:
            self.namespaces = sorted(os.listdir("/proc/self/ns"))
            self.identity: tuple[object, ...] | None = _identity(self.namespaces)
        except OSError:
            self.namespaces, self.identity = [], None  # no /proc: reusable() says no
        self.environ, self.environb = os.environ, os.environb
        self.environ_data: dict[bytes, bytes] = {}
        self.stdio = _stdio_ids()
        self.timers = os.path.exists("/proc/self/timers")
        self.main = sys.modules.get("__main__")
        self.argv, self.path = list(sys.argv), list(sys.path)
        self.gc = (gc.isenabled(), gc.get_threshold(), list(gc.callbacks))
        self.trace = (sys.gettrace(), sys.getprofile())
        self.hooked = False
        """A run added an audit hook: it cannot be removed, and it runs in the
        code between two runs too (where an exit of its would pass for the
        next run's result), so this process takes no next run."""
        # Every hook's addition (sys.addaudithook, or the C API's) is itself
        # an audit event, which this records. A C function as the hook: one
        # in Python, called on every audited event (every open, every frame
        # lookup of logging's), made a logging-heavy run 1.8 times slower;
        # a wrapper of sys.addaudithook was reachable past (its __self__).
        self.events: dict[str, object] = {}
        sys.addaudithook(self.events.setdefault)
        self.builtins = dict(vars(builtins))
        """The builtins a fresh process has: the code between two runs calls
        them (exec, open, len), so a run that replaced one would run its code
        there."""

    def reusable(self, report: int) -> bool:
        """Whether this process may take its skill's next run: it is the run's
        own process, and nothing the run started or changed outlives it in a
        way the next run could meet (a child, a sibling of ours in our
        session, a thread, an fd still on this run's stdio or report
        channel, more fds than a next run may need room beside, a limit,
        priority, credential, capability, namespace, root directory,
        parent-death signal or subreaper flag changed), its channel is the
        one runs come on, and the runs so far left each kernel limit counted
        per process (CPU seconds, address space) half its room."""
        if (
            self.hooked
            or _ADDED_HOOK in self.events
            or not self._builtins_kept()
            or os.getpid() != self.pid
            or _has_children()
            or _fd_id(self.channel.fileno()) != self.channel_id
        ):
            return False
        try:
            if not _one_thread() or self._siblings_in_session():
                return False
            if self._fds_in_the_way(report) or _identity(self.namespaces) != self.identity:
                return False
            if _stdio_ids() != self.stdio or (self.timers and self._posix_timers()):
                return False
            with open("/proc/self/statm", "rb") as fh:
                size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return False  # no /proc: what is left cannot be seen, so no reuse
        if any(resource.getrlimit(kind) != limits for kind, limits in self.rlimits):
            return False
        if os.getpriority(os.PRIO_PROCESS, 0) != self.priority:
            return False
        if _PRCTL is not None:
            flag = ctypes.c_int(0)
            if (
                _PRCTL(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag), 0, 0, 0) != 0
                or not flag.value
            ):
                return False
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = resource.getrlimit(resource.RLIMIT_CPU)[0]
        memory = resource.getrlimit(resource.RLIMIT_AS)[0]
        infinity = resource.RLIM_INFINITY
        return (cpu == infinity or usage.ru_utime + usage.ru_stime < cpu / 2) and (
            memory == infinity or size < memory / 2
        )

    def _builtins_kept(self) -> bool:
        now = vars(builtins)
        return len(now) == len(self.builtins) and all(
            now.get(name, self) is value for name, value in self.builtins.items()
        )

    @staticmethod
    def _posix_timers() -> bool:
        # timer_create's timers (not setitimer's) outlive a run: one would
        # fire in a later run, another caller's.
        return bool(_read_proc("/proc/self/timers", 1))

    def _siblings_in_session(self) -> bool:
        # A process of the run's that left this process's tree for the fork
        # server's (CLONE_PARENT, or a double fork with the subreaper flag
        # off) is a child of the fork server in our session.
        parent = os.getppid()
        with open(f"/proc/{parent}/task/{parent}/children", "rb") as fh:
            siblings = [int(p) for p in fh.read().split()]
        for pid in siblings:
            if (
                pid != self.pid
                and (stat := proc_stat(pid)) is not None
                and stat.session == self.pid
            ):
                return True
        return False

    def _fds_in_the_way(self, report: int) -> bool:
        # A copy of the run's stdin, stdout, stderr or report channel under
        # another number would reach the next run's caller (what is left to
        # read) or hold the pipes open; too many fds would leave the next
        # request's no room (MSG_CTRUNC: that run would fail).
        names = os.listdir("/proc/self/fd")
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile != resource.RLIM_INFINITY and len(names) >= nofile // 2:
            return True
        if len(names) >= MAX_REUSED_FDS:
            return True
        ours = {_fd_id(fd) for fd in (0, 1, 2, report)} - {None}
        for name in names:
            fd = int(name)
            if fd not in (0, 1, 2, report, self.channel.fileno()) and _fd_id(fd) in ours:
                return True
        return False

    def reset(self) -> None:
        """Set back what a fresh process starts with and the run may have
        changed: its std streams (stdin always new, the last one closed),
        ``__main__``, ``sys.argv`` and ``sys.path``, exit handlers, weakref
        finalizers' shutdown flag, timers, signal handlers, wakeup fd and
        mask, umask, environment (the C one too), trace and profile
        functions, the collector's settings.

        Called at the run's end, before its last flush and its report: what
        this drops (a handler, an exit function, a stream the script put in
        ``sys``) is finalized now, into this run's output or its exit,
        never into the next run's, which may be another caller's. A
        finalizer may change some of it again: :meth:`clean` tells.
        """
        # What the run's audited events left recorded (their first arguments
        # too) goes, once its hooks are noted.
        self.hooked = self.hooked or _ADDED_HOOK in self.events
        self.events.clear()
        old = (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__)
        stdout, stderr = sys.stdout, sys.stderr
        if not (_intact(stdout, 1) and _intact(stderr, 2)):
            _unused, stdout, stderr = child_stdio()
        # A new stdin each run: what buffered the last one's unread input
        # is closed, so a module that kept it fails, never reads it later.
        stdin = new_stdin()
        streams = (stdin, stdout, stderr)
        for stream in [kept for kept in old if kept is not None]:
            if any(stream is new for new in streams):
                continue
            try:
                if type(stream) is io.TextIOWrapper and stream.buffer in (
                    stdout.buffer,
                    stderr.buffer,
                ):
                    # (``sys.stdout = io.TextIOWrapper(sys.stdout.buffer)``:
                    # closing the old wrapper would close the new one's buffer.)
                    stream.detach()
                elif any(stream is last for last in (old[0], old[3])):
                    stream.close()
            except Exception:  # noqa: S110 - the script's own stream: dropped all the same
                pass
        _use_stdio(streams)
        self.streams = streams
        del old, stream
        sys.modules["__main__"] = self.main  # type: ignore[assignment]
        sys.argv, sys.path = list(self.argv), list(self.path)
        with contextlib.suppress(Exception):  # a script's replacement of atexit: nothing to clear
            atexit._clear()
        # A run's exit functions ended with weakref's, which stops every
        # finalizer after it: the next run's must work, and register again.
        weakref.finalize._shutdown = False  # type: ignore[attr-defined]
        weakref.finalize._registered_with_atexit = False  # type: ignore[attr-defined]
        _csignal.alarm(0)
        for timer in _ITIMERS:
            _csignal.setitimer(timer, 0)
        for signum, handler in self.handlers.items():
            if _csignal.getsignal(signum) is not handler:
                with contextlib.suppress(OSError, ValueError, TypeError):
                    _csignal.signal(signum, handler)
        with contextlib.suppress(ValueError):
            _csignal.set_wakeup_fd(-1)
        _csignal.pthread_sigmask(_csignal.SIG_SETMASK, self.mask)
        os.umask(self.umask)
        # os.environ may have been replaced, and os.putenv changes only the C
        # environment (which subprocesses inherit): both go back to empty,
        # as in a fresh run before its header's variables.
        os.environ, os.environb = self.environ, self.environb
        if _LIBC is not None:
            _LIBC.clearenv()
        else:  # pragma: no cover - non-glibc platforms
            self.environ.clear()
        self.environ_data = {}
        for mapping in (self.environ, self.environb):
            object.__setattr__(mapping, "_data", self.environ_data)
        sys.settrace(self.trace[0])
        sys.setprofile(self.trace[1])
        enabled, threshold, callbacks = self.gc
        gc.callbacks[:] = callbacks
        gc.set_threshold(*threshold)
        (gc.enable if enabled else gc.disable)()

    def clean(self) -> bool:
        """Whether what :meth:`reset` set back is still as it left it (a
        finalizer run since, by the collector, may have changed it again:
        then this process takes no next run)."""
        try:
            return (
                (sys.stdin, sys.stdout, sys.stderr) == self.streams
                and (sys.__stdin__, sys.__stdout__, sys.__stderr__) == self.streams
                and sys.modules.get("__main__") is self.main
                and type(sys.argv) is list
                and sys.argv == self.argv
                and type(sys.path) is list
                and sys.path == self.path
                and atexit._ncallbacks() == 0
                and not weakref.finalize._shutdown  # type: ignore[attr-defined]
                and all(_csignal.getitimer(timer) == (0.0, 0.0) for timer in _ITIMERS)
                and all(_csignal.getsignal(n) is h for n, h in self.handlers.items())
                and _csignal.pthread_sigmask(_csignal.SIG_BLOCK, ()) == self.mask
                and os.environ is self.environ
                and os.environb is self.environb
                and vars(self.environ).get("_data") is self.environ_data
                and not self.environ_data
                and (_LIBC is None or ctypes.c_void_p.in_dll(_LIBC, "environ").value is None)
                and (sys.gettrace(), sys.getprofile()) == self.trace
                and (gc.isenabled(), gc.get_threshold(), gc.callbacks) == self.gc
            )
        except Exception:
            return False


_ADDED_HOOK = "sys.addaudithook"


def _one_thread() -> bool:
    """Whether this process has one thread. A thread Python joined may not
    have exited yet (the join waits for its Python code, not for the OS
    thread's end): a few ms for it to go, only when a run made one."""
    for _ in range(25):
        if len(os.listdir("/proc/self/task")) == 1:
            return True
        time.sleep(0.0002)
    return False


def _stdio_ids() -> tuple[tuple[int, int] | None, ...]:
    return _fd_id(0), _fd_id(1), _fd_id(2)


_ITIMERS = (_csignal.ITIMER_REAL, _csignal.ITIMER_VIRTUAL, _csignal.ITIMER_PROF)
_WRITERS = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)


def _pure(stream: object) -> bool:
    """Whether ``stream`` is made of the io module's own classes down to a
    FileIO: its methods then run no Python code of anyone's."""
    if type(stream) is io.TextIOWrapper:
        stream = stream.buffer
    if type(stream) in (io.BufferedReader, io.BufferedWriter, io.BufferedRandom):
        stream = stream.raw  # type: ignore[attr-defined]
    return type(stream) is io.FileIO


_ORIGINALS = (sys.__stdin__, sys.__stdout__, sys.__stderr__)
"""The fork server's own std streams, held here: with ``sys.__stdin__`` and
the rest a run's (see main), a child that replaced ``sys.stdin`` would free
them, which writes to (and so copies) their pages: some 9 faults a run."""
_ORIGINAL_STDIO = _ORIGINALS[1:]
"""The fork server's own stdout and stderr (frozen, so unseen by gc.get_objects)."""


def _flush_writers(*, ours_only: bool = False) -> None:
    """Flush every writer over fd 1 or 2 that the run made and left open (a
    module's cached ``open(1, "w", closefd=False)``): python flushes them
    at its exit, into that run's output; a fork's ``os._exit`` would drop
    what they hold, and in a reused process the next run would flush it
    into another caller's output. Only objects made since the fork
    server's ``gc.freeze()`` are seen (some 60-90 of them, 20-60 µs), and
    the fork server's premade and own std streams, which are frozen.
    ``ours_only``: only writers made of the io module's own classes, so
    that no code of the script's runs (after a reused run's reset)."""
    try:
        found = [obj for obj in gc.get_objects() if type(obj) in _WRITERS]
    except Exception:  # (a failed allocation) the output is what it is
        return
    found += [*(_CHILD_STDIO or ())[1:], *_ORIGINAL_STDIO]
    if ours_only:
        found = [obj for obj in found if _pure(obj)]
    # Text wrappers first: their flush writes into a buffered writer.
    for text in (True, False):
        for obj in found:
            if (type(obj) is io.TextIOWrapper) is text:
                try:
                    if not obj.closed and obj.fileno() in (1, 2):
                        obj.flush()
                except Exception:  # noqa: S110 - a broken writer of the script's
                    pass


_HEADER_SIZE = struct.Struct("!I")


def encode_header(header: Mapping[str, Any], compiled: bytes | None = None) -> bytes:
    """A run request as the child reads it (:func:`_read_header`): the
    header's size (4 bytes), the header (a marshalled dict: script, cwd,
    env, rlimits, argv), then ``compiled`` if given (``"code"``: its size).

    marshal, not JSON: in a fresh fork ``json.loads`` writes to some 40 more
    of the fork server's pages than ``marshal.loads`` (about 120 µs of CPU on
    the request's path here), and the skill server's encoding is six times
    cheaper. The request comes from the skill server only, on this run's own
    connection, like the compiled script beside it.
    """
    body = dict(header)
    if compiled is not None:
        body["code"] = len(compiled)
    blob = marshal.dumps(body)
    return _HEADER_SIZE.pack(len(blob)) + blob + (compiled or b"")


def _recv_until(conn: socket.socket, raw: bytes, size: int, what: str) -> bytes:
    """``raw`` and what follows it on ``conn``, ``size`` bytes at least."""
    if len(raw) >= size:
        return raw
    buf = bytearray(raw)  # amortised appends: a compiled script may be megabytes
    while len(buf) < size:
        chunk = conn.recv(min(size - len(buf), 1024 * 1024))
        if not chunk:
            raise ValueError(f"incomplete {what}")
        buf += chunk
    return bytes(buf)


def _read_header(conn: socket.socket) -> tuple[dict[str, Any], bytes | None] | None:
    """The run's header and the compiled script that follows it if the
    header says so (see :func:`encode_header`); None if the skill server hung
    up first or never sent one in ``IDLE_TIMEOUT`` seconds."""
    request = _read_request(conn, 0)
    return None if request is None else request[:2]


def _read_request(
    conn: socket.socket, nfds: int, *, exact: bool = True
) -> tuple[dict[str, Any], bytes | None, list[int]] | None:
    """:func:`_read_header`, with the ``nfds`` fds that come with its first
    byte (a reused process's channel with its first run, its stdio and
    report channel with each next one, see :func:`_next_run`); a request
    with other than those (fewer, with ``exact=False``) is refused, and no
    fd received is left open on an error."""
    conn.settimeout(IDLE_TIMEOUT)
    fds: list[int] = []
    try:
        try:
            if nfds:
                # recvmsg itself, not socket.recv_fds: that Python wrapper's
                # first run in a fresh fork writes to shared pages (see _fork).
                raw, ancillary, flags, _addr = conn.recvmsg(64 * 1024, socket.CMSG_SPACE(4 * nfds))
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds += [int.from_bytes(data[i : i + 4], sys.byteorder, signed=True)
                                for i in range(0, len(data) - len(data) % 4, 4)]  # fmt: skip
                if raw and flags & socket.MSG_CTRUNC:
                    raise ValueError(f"no room for the {nfds} fds of a run request (MSG_CTRUNC)")
                if raw and len(fds) != nfds and exact:
                    raise ValueError(f"a run request with {len(fds)} fds, not {nfds}")
            else:
                raw = conn.recv(64 * 1024)
        except TimeoutError:
            raw = b""
        if not raw:
            for fd in fds:
                os.close(fd)
            return None
        conn.settimeout(HEADER_TIMEOUT)  # once a header has begun, the rest is due
        header, code = _parse_request(conn, raw)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return header, code, fds


def _parse_request(conn: socket.socket, raw: bytes) -> tuple[dict[str, Any], bytes | None]:
    raw = _recv_until(conn, raw, _HEADER_SIZE.size, "header")
    (length,) = _HEADER_SIZE.unpack_from(raw)
    if length > MAX_HEADER:
        raise ValueError(f"header of {length} bytes, more than {MAX_HEADER}")
    end = _HEADER_SIZE.size + length
    raw = _recv_until(conn, raw, end, "header")
    try:
        header = marshal.loads(raw[_HEADER_SIZE.size : end])  # noqa: S302 - the skill server's
    except (EOFError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable header: {exc}") from None
    if type(header) is not dict:
        raise ValueError("the header is not a mapping")
    size = header.get("code")
    if size is None:
        if len(raw) > end:
            raise ValueError("bytes after a header without a compiled script")
        return header, None
    if type(size) is not int or not 0 < size <= MAX_CODE:
        raise ValueError(f"bad compiled script size {size!r}")
    if len(raw) > end + size:
        raise ValueError("more bytes than the compiled script's size")
    code = _recv_until(conn, raw[end:], size, "compiled script")
    return header, code


def _run_main(
    script: str, compiled: bytes | None = None, main: types.ModuleType | None = None
) -> None:
    """Run ``script`` as ``python script`` runs it: compiled from its source
    (a coding cookie honoured, none of our ``__future__`` flags), in a fresh
    ``__main__`` module with the globals ``python script`` gives it (the
    builtins module, a ``SourceFileLoader``, ``__spec__``, ``__package__``
    and ``__cached__`` None, empty ``__annotations__``).

    ``compiled`` is that code, marshalled, compiled by the skill server from
    the script's current version: the compiler's first use in a fresh fork
    costs some 250 µs of CPU (its copy-on-write faults, mostly) on the
    request's path, and ``marshal.loads`` almost none. It comes from the skill
    server only, on this run's own connection, never from a skill.

    Not ``runpy.run_path`` itself: in a fresh fork its path-hook lookups and
    module bookkeeping write to some 280 more of the shared pages than this
    does, and those copy-on-write faults cost the run 1.3 ms of CPU here
    (the children's CPU per run in a loop of warm runs; ``docs/speed.md``,
    sixth pass). The cold trampoline (``executor.TRAMPOLINE``) runs scripts
    the same way.
    """
    if compiled is not None:
        code = marshal.loads(compiled)  # noqa: S302 - the skill server's, see above
    else:
        with open(script, "rb") as fh:
            code = compile(fh.read(), script, "exec", dont_inherit=True)
    if main is None:
        main = _main_module(script)
    exec(code, main.__dict__)  # noqa: S102 - the skill's own script, as python would run it


def _main_module(script: str) -> types.ModuleType:
    """A fresh ``__main__`` for ``script`` (see :func:`_run_main`), in ``sys.modules``."""
    main = types.ModuleType("__main__")
    loader = importlib.machinery.SourceFileLoader("__main__", script)
    main.__dict__.update(__file__=script, __cached__=None, __annotations__={},
                         __builtins__=builtins, __loader__=loader)  # fmt: skip
    sys.modules["__main__"] = main
    return main


Stdio = tuple[io.TextIOWrapper, io.TextIOWrapper, io.TextIOWrapper]


def new_stdin() -> io.TextIOWrapper:
    """A new ``sys.stdin`` over fd 0, with nothing buffered."""
    return io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")


def child_stdio() -> Stdio:
    """New ``sys.stdin``, ``stdout`` and ``stderr`` over fds 0-2, which need
    nothing of the fork server's own wrappers (their buffers, their fds' past)."""
    stdout, stderr = (io.FileIO(fd, "w", closefd=False) for fd in (1, 2))
    return (
        new_stdin(),
        io.TextIOWrapper(stdout, encoding="utf-8", line_buffering=False),
        io.TextIOWrapper(stderr, encoding="utf-8", errors="backslashreplace", line_buffering=True),
    )


def premade_stdio() -> Stdio | None:
    """:func:`child_stdio`, made once in the fork server for every child it
    forks, which then only assigns them: making them in a fresh fork wrote
    to some 30 shared pages per run (their objects, the codec lookups).

    They are never used here. They are made while fds 0-2 are pipes, as a
    run's are, because the wrappers note at creation whether their fd is
    seekable (the fork server's stdin is ``/dev/null``, which is); then the
    fork server's own fds 0-2 come back. None (each child makes its own) if
    one of those fds is closed.
    """
    try:
        for fd in (0, 1, 2):
            # All three open, so the copies below get numbers above 2 (a
            # closed fd 2 would be dup's answer and then swapped around).
            os.fstat(fd)
    except OSError:
        return None
    saved: list[int] = []
    pipes: list[tuple[int, int]] = []
    try:
        for fd in (0, 1, 2):
            saved.append(os.dup(fd))
        for _ in range(3):
            pipes.append(os.pipe())
        for target, (read, write) in enumerate(pipes):
            os.dup2(read if target == 0 else write, target)
        return child_stdio()
    except OSError:
        return None  # out of fds: each child makes its own
    finally:
        for target, fd in enumerate(saved):
            os.dup2(fd, target)
            os.close(fd)
        for pipe in pipes:
            for fd in pipe:
                os.close(fd)


def _use_stdio(streams: tuple[TextIO, TextIO, TextIO]) -> None:
    """Make ``streams`` this run's ``sys.stdin``, ``stdout`` and ``stderr``, and
    its ``sys.__stdin__`` and the rest too, as python starts a script: the
    originals the fork server had, or a last run left there, would read or
    write past this run (a buffer of a last run's unread input)."""
    sys.stdin, sys.stdout, sys.stderr = streams
    # Through the dict: typeshed marks the originals final.
    vars(sys).update(__stdin__=streams[0], __stdout__=streams[1], __stderr__=streams[2])


_CHILD_STDIO: Stdio | None = None
"""This fork server's :func:`premade_stdio` (see :func:`main`)."""


def _child(conn: socket.socket, server_pid: int, fds: list[int]) -> None:
    """Become the skill process (``fds``: its stdin, stdout, stderr and report
    channel, see :data:`RUN_FDS`); never returns."""
    code = 1
    try:
        os.setsid()
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != server_pid:
            os._exit(137)  # the fork server died before the death signal was armed
        if _PRCTL is not None:
            _PRCTL(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            # Dumpable again, as a freshly exec'd skill is: nothing secret is
            # inherited, and the skill's own tools may read its /proc entries.
            _PRCTL(_PR_SET_DUMPABLE, 1, 0, 0, 0)
        _csignal.set_wakeup_fd(-1)
        for signum in _DEFAULT_IN_CHILD:
            _csignal.signal(signum, _csignal.SIG_DFL)
        _csignal.signal(_SIGXFSZ, _csignal.SIG_IGN)  # as a fresh interpreter has it
        try:
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            report = fds[3]
            os.set_inheritable(report, False)  # gone at an exec (run.sh): EOF, no report
            reported_to = _fd_id(report)
            # The control socket, other runs' nothing: all go but this run's
            # connection, which the header is still to come on, and the report channel.
            low = 3
            for keep in sorted((conn.fileno(), report)):
                os.closerange(low, keep)
                low = keep + 1
            os.closerange(low, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
            # Python's view of fds 0-2 needs nothing of the request either.
            # (sys.__stdin__ and the rest are these already, see main:
            # setting them here cost each run some 12 copy-on-write faults.)
            sys.stdin, sys.stdout, sys.stderr = _CHILD_STDIO or child_stdio()
            # The fork server's environment goes now, not once the header is
            # here: the clear writes to (and so copies) the pages of every
            # variable, some 150 µs of the request's time otherwise.
            os.environ.clear()
            # Everything above runs before the request exists (a waiting
            # child); from here on it is the request's time.
            # With the header of a skill whose runs reuse their process
            # (``isolation: reused-process``) comes its channel to the skill
            # server: the next runs come there, never on this connection,
            # which the fork server's pid and status lines use.
            request = _read_request(conn, 1, exact=False)
            if request is None:
                os._exit(0)
            header, compiled, extra = request
            channel: socket.socket | None = None
            if header.get("reuse") is True and "argv" not in header and len(extra) == 1:
                channel = socket.socket(fileno=extra[0])
                channel.set_inheritable(False)
            else:
                for fd in extra:
                    os.close(fd)
        except (OSError, ValueError) as exc:
            print(f"fork server child: bad run request: {exc}", file=sys.stderr, flush=True)
            raise
        conn.close()
        for kind, value in header.get("rlimits", []):
            resource.setrlimit(kind, (value, value))
        os.chdir(header["cwd"])
        os.environ.update(header["env"])
        if "argv" in header:  # not Python (run.sh): this process becomes it
            argv = [str(a) for a in header["argv"]]
            # As a shell would start it: SIGXFSZ was ignored for Python's sake.
            _csignal.signal(_SIGXFSZ, _csignal.SIG_DFL)
            if stamps.ON:
                stamps.stamp("child.ready")
            try:
                os.execve(argv[0], argv, header["env"])  # noqa: S606 - an argv, never a shell
            except OSError as exc:
                print(f"cannot run {argv[-1]}: {exc}", file=sys.stderr, flush=True)
                os._exit(127)
        run_pid = os.getpid()
        reuse = None if channel is None else _Reuse(channel)
        begun: socket.socket | None = None  # a first run's begin needs no word
        while True:
            code, clean = _run_script(header["script"], compiled, reuse, begun)
            again = reuse is not None and clean and reuse.reusable(report)
            if again:
                assert channel is not None
                # Before the report, so the skill server has it when it sees the run over.
                try:
                    channel.sendall(AGAIN)
                except OSError:
                    again = False
            reported = _report_over(report, reported_to, code, run_pid)
            if reported and reuse is not None:
                # Its run has its code. From here until the next run ends, an
                # exit (after an "again" the script wrote itself, at a next run
                # this process cannot take, a directory gone) must not read as
                # that next run's success.
                code = 1
            if not (again and reported and reuse is not None):
                break
            following = _next_run(reuse.channel, report)
            if following is None:
                break  # the skill server let this process go (or sent no run)
            header, compiled, report = following
            reported_to = _fd_id(report)
            reuse.stdio = _stdio_ids()
            begun = reuse.channel
            os.chdir(header["cwd"])
            os.environ.update(header["env"])
    finally:
        os._exit(code & 0xFF)


def _run_script(
    script: str, compiled: bytes | None, reuse: _Reuse | None, begun: socket.socket | None = None
) -> tuple[int, bool]:
    """Run ``script`` as ``__main__`` (``sys.argv``, ``sys.path[0]`` and all);
    its exit code once its exit handlers ran and its output is flushed, and
    whether that flush worked (else output may be left in a buffer) and, in
    a reused process, what the run changed was set back and stayed so.
    ``begun``: a reused process's channel, told when a next run's script begins.

    As python's own shutdown does, ``__main__``'s globals are cleared before
    the flush, so what only they held (a buffered writer over fd 1 the
    script never flushed) is finalized into this run's output. In a reused
    process (``reuse``), what the run changed is set back here too (see
    :meth:`_Reuse.reset`), and what that leaves in cycles collected, so
    that all of it is finalized before the last flush and the report."""
    sys.argv = [script]
    sys.path[0] = os.path.dirname(script)
    if stamps.ON:  # only after closerange: stamp() opens a descriptor
        stamps.stamp("child.ready")
    # The dict the script runs in, held here: the script may replace its
    # module in sys.modules or change the module's class.
    namespace = _main_module(script).__dict__
    if begun is not None:
        try:
            begun.sendall(STARTED)  # (see STARTED) the last step before the script
        except OSError:
            os._exit(1)  # the skill server let go of this process: no run to answer
    try:
        _run_main(script, compiled, sys.modules["__main__"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    # try/except, not contextlib.suppress: a fresh fork's first use of a
    # context manager object writes to shared pages (see _fork).
    try:  # noqa: SIM105
        atexit._run_exitfuncs()
    except Exception:  # noqa: S110 - a broken handler must not cost the report
        pass
    try:
        # python's order: its std streams flushed, then modules cleared.
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: S110 - a closed or broken stream: checked below
        pass
    clean = True
    try:
        namespace.clear()
        _flush_writers()
        if reuse is not None:
            reuse.reset()
            gc.collect()
            # What the reset's and the collector's finalizers wrote, with no
            # code of the script's run after the check below.
            _flush_writers(ours_only=True)
            clean = reuse.clean()
    except BaseException:  # a finalizer's error: the output is what it is
        clean = False
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: the output is what it is
            clean = False
    if stamps.ON:
        stamps.stamp("child.ran")
    return code, clean


def _next_run(conn: socket.socket, report: int) -> tuple[dict[str, Any], bytes | None, int] | None:
    """Wait for a reused process's next run: its header, compiled script and
    report channel, its stdio in place as fds 0-2 and ``sys`` streams, the
    previous run's report channel gone (and its state, see :meth:`_Reuse.reset`).
    None when the skill server lets this process go instead, or sends
    something that is no run request (fds it cannot take: a script that
    left too many open), or this process is out of fds itself."""
    with contextlib.suppress(OSError):
        os.close(report)
    # fds 0-2 were closed with the report: /dev/null holds their numbers, so
    # the fds that come with the request are numbered above them.
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            if target != null:
                os.dup2(null, target)
        if null > 2:
            os.close(null)
        # Whatever was written since the last run's final flush (a
        # finalizer's print) goes there, not into the next run's output.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        request = _read_request(conn, RUN_FDS - 1)
    except (OSError, ValueError):
        return None
    if request is None:
        return None
    header, compiled, fds = request
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    os.set_inheritable(fds[3], False)
    # stdout and stderr stay the objects they were if the last run left
    # them as it got them: what holds them (a logging handler made at an
    # import) writes to this run's pipes, and they are flushed at its end.
    # Flushed at the last run's end too, they hold nothing of it. stdin is
    # always new: its buffer may hold what the last run did not read.
    if _intact(sys.stdout, 1) and _intact(sys.stderr, 2):
        stdin = new_stdin()
        _use_stdio((stdin, sys.stdout, sys.stderr))
    else:
        _use_stdio(child_stdio())
    return header, compiled, fds[3]


def _intact(stream: object, fd: int) -> bool:
    """Whether ``stream`` is still a text stream over ``fd``, open, made of
    the io module's own classes only (so that nothing here runs a script's
    code: the buffer's ``closed`` and ``fileno`` could be Python)."""
    if type(stream) is not io.TextIOWrapper or not _pure(stream) or stream.closed:
        return False
    # As child_stdio makes them: a reconfigure() (say, to ASCII) would carry over.
    settings = (stream.encoding, stream.errors, stream.line_buffering, stream.write_through)
    if settings != ("utf-8", "backslashreplace" if fd == 2 else "strict", fd == 2, False):
        return False
    try:
        return stream.fileno() == fd
    except (OSError, ValueError):
        return False


def _hung_up(conn: socket.socket) -> bool:
    """Whether the skill server closed its end of ``conn`` (bench stamps only)."""
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP if hasattr(select, "POLLRDHUP") else 0)
    return any(events & (select.POLLHUP | getattr(select, "POLLRDHUP", 0))
               for _fd, events in poller.poll(0))  # fmt: skip


class ForkServer:
    """The receive/fork/reap loop."""

    def __init__(
        self, control_fd: int, exec_server: tuple[int, socket.socket] | None = None
    ) -> None:
        self.exec_pid: int | None = exec_server[0] if exec_server else None
        self.exec_sock: socket.socket | None = exec_server[1] if exec_server else None
        """The exec server (our child, see main) and our end of its socket."""
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
        self.children_path = f"/proc/self/task/{self.pid}/children"
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
                        self._close_exec_server()  # it finishes its runs too
                        if not self.children and self.exec_pid is None:
                            return
                        self.selector.unregister(self.control)
                        self.retiring = True
                elif self.hangups is not None and key.fileobj == self.hangups.fileno():
                    self._abandoned()
                else:
                    if signal.SIGTERM in os.read(self.wake_r, 4096):
                        return
                    self._reap()
            if self.retiring and not self.children and self.exec_pid is None:
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
                data, fds, flags, _addr = socket.recv_fds(self.control, 1, RUN_FDS)
            except BlockingIOError:
                return True
            if not data:
                return False
            if len(fds) == RUN_FDS and not flags & socket.MSG_CTRUNC:
                if data != EXEC or not self._pass_to_exec_server(fds):
                    try:
                        conn = socket.socket(fileno=fds[0])
                    except OSError:  # not a socket: no run, and this process goes on
                        for fd in fds:
                            os.close(fd)
                    else:
                        self._fork(conn, fds[1:])
            else:
                for fd in fds:
                    os.close(fd)

    def _pass_to_exec_server(self, fds: list[int]) -> bool:
        """Hand a run's connection and fds to the exec server; False if it is gone."""
        if self.exec_sock is None:
            return False
        try:
            socket.send_fds(self.exec_sock, [RUN], fds)
        except OSError:
            return False  # it died: this process forks such runs itself from now on
        for fd in fds:
            os.close(fd)
        return True

    def _close_exec_server(self) -> None:
        if self.exec_sock is not None:
            self.exec_sock.close()
            self.exec_sock = None

    def _fork(self, conn: socket.socket, fds: list[int]) -> None:
        # Every step here after the fork writes to pages each waiting child
        # still shares, so each costs a copy (a fork server's own page faults
        # were a third of its CPU per run): no flush of our stdio (nothing is
        # pending: the ready line is flushed, stderr is line-buffered, and a
        # child never flushes these wrappers), no context managers, and no
        # reap here (a child that has exited already is SIGCHLD's next wake-up).
        if stamps.ON:
            stamps.stamp("fork.start")
        try:
            pid = os.fork()
            if pid == 0:
                _child(conn, self.pid, fds)
        except OSError as exc:
            # Out of processes (a skill can use up the user's RLIMIT_NPROC) or
            # of memory: this run fails, not this process with every run in
            # flight. Its connection closes unanswered, which the skill server
            # takes as this child lost (a retry, then a cold start).
            print(f"fork server: cannot fork a run: {exc}", file=sys.stderr, flush=True)
            conn.close()
            return
        finally:
            for fd in fds:  # the child's now, or nobody's
                os.close(fd)
        if stamps.ON:
            stamps.stamp("fork.done")
        self.children[pid] = conn
        if self.hangups is not None:
            self.hangups.register(conn.fileno(), select.EPOLLRDHUP)
        conn.settimeout(5)
        try:  # noqa: SIM105 - no context manager here, see _fork
            conn.sendall(b'{"pid": %d}\n' % pid)
        except OSError:
            pass  # the skill server gave up: the status will fail too

    def _reap(self) -> None:
        ended: list[tuple[socket.socket, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if stamps.ON and pid in self.children and not _hung_up(self.children[pid]):
                # (A child whose connection is closed was let go, never a run.)
                stamps.stamp("fork.reaped")
            if pid == self.exec_pid:
                self.exec_pid = None  # its runs died with it; we fork them now
                self._close_exec_server()
                continue
            conn = self.children.pop(pid, None)
            if conn is not None:  # else an orphan a run left us, killed already
                if self.hangups is not None:
                    try:  # noqa: SIM105 - no context manager here, see _fork
                        self.hangups.unregister(conn.fileno())
                    except OSError:
                        pass  # gone if it hung up
                ended.append((conn, os.waitstatus_to_exitcode(status)))
        if ended and self._may_have_orphans():
            # What a run left behind dies before the run is reported over.
            kill_adopted(lambda pid, _st: pid not in self.children and pid != self.exec_pid)
        for conn, code in ended:
            try:  # noqa: SIM105 - no context manager here, see _fork
                conn.sendall(b'{"status": %d}\n' % code)
            except OSError:
                pass  # the skill server gave up on the run
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
        # Raw fd calls, not open(): a file object costs four more system
        # calls and its text layer, on every reap (9 % of this process's samples).
        try:
            fd = os.open(self.children_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                listed = b""
                while chunk := os.read(fd, 1 << 16):
                    listed += chunk
            finally:
                os.close(fd)
        except OSError:
            pass
        else:
            pids = {int(p) for p in listed.split()}
            return not pids <= self.children.keys() | {self.exec_pid}
        if self.children or self.exec_pid is not None or not hasattr(os, "waitid"):
            return True  # cannot tell runs from orphans without looking
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False  # no child at all
        return True


def _start_exec_server(control_fd: int) -> tuple[int, socket.socket] | None:
    """Fork the exec server: a second fork server, for runs that only exec.

    It is forked before the preload, so it is this interpreter with nothing
    imported but what the loop needs (about a fifth of the memory): forking
    a child of it copies fewer page tables, and the child's exec tears down
    less. ``run.sh`` runs are forked there (same child code, same
    guarantees: session, death signal, subreaper, limits, fds), Python runs
    here. It dies with us (death signal), and without it we fork every run.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None  # every run is forked here
    if pid:
        theirs.close()
        return pid, ours
    code = 0
    try:
        ours.close()
        os.close(control_fd)  # the skill server talks to us through the fork server only
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(137)
        prctl(_PR_SET_DUMPABLE, 0)
        prctl(_PR_SET_CHILD_SUBREAPER, 1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)  # the fork server's ready line is the fork server's
        os.close(devnull)
        gc.freeze()
        server = ForkServer(theirs.detach())
        try:
            server.serve()
        finally:
            server.shutdown()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def main(argv: list[str]) -> int:
    """``python .../skill_server/forkserver.py FD [MODULE ...]``.

    Started by path, not with ``-m``: ``-m`` would import the skillscale
    package first, which the exec server does not need.
    """
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(_PR_SET_DUMPABLE, 0)
    prctl(_PR_SET_CHILD_SUBREAPER, 1)
    control_fd, modules = int(argv[0]), argv[1:]
    sys.stdout.flush()
    exec_server = _start_exec_server(control_fd)
    failed = preload(modules)
    global _CHILD_STDIO
    _CHILD_STDIO = premade_stdio()
    if _CHILD_STDIO is not None:
        # A run's sys.__stdout__ is its sys.stdout, as python starts a
        # script (an idiom restores sys.stdout from it), at no cost per run.
        stdin, stdout, stderr = _CHILD_STDIO
        vars(sys).update(__stdin__=stdin, __stdout__=stdout, __stderr__=stderr)
    # What was imported is never collected: kept out of the collector's reach,
    # a child's collections do not touch (and so copy) those pages.
    gc.freeze()
    server = ForkServer(control_fd, exec_server)
    # One line on stdout: the skill server waits for it before sending work.
    exec_pid = exec_server[0] if exec_server else None
    ready = {"ready": True, "pid": os.getpid(), "missing": failed, "exec_server": exec_pid}
    print(json.dumps(ready), flush=True)
    try:
        server.serve()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
