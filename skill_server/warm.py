"""The warm executor: Python skills forked from a pre-imported fork server.

Each request still gets its own process (fresh fork, own session and process
group, own pipes, working directory, environment, rlimits and timeout), but
not a fresh interpreter: start-up and the imports skills share (the standard
library, ``skillscale.skillkit``, and ``httpx``/``openai`` once a skill that
imports them has run) were paid once by the fork server. Skill files are read
on every run, so edits take effect on the next request.

Children are forked ahead of their runs while runs come (``waiting_children``,
each used for one run), none at start, and let go after ``waiting_idle``
seconds without a run, as php-fpm's ``ondemand`` manager does: an idle server
is just itself and its fork server, and the first run after an idle period
pays its own fork.

A ``run.sh`` entry point is exec'd (bash) by a waiting child once its limits,
directory and environment are set: no Python start-up for the trampoline. Such
children are forked by the fork server's small exec server (forked before the
preload), so their fork and exec cost a fraction of a fork of the full one.
Skills whose ``metadata.warm`` is ``false``, and any run while the fork server
is (re)starting, take the cold path.

A skill whose ``metadata.isolation`` is ``reused-process`` (opt-in, for
trusted skills that keep no per-caller state) gives up the fresh fork per
run: its runs take turns in processes forked the same way, each of which,
after a run that left nothing behind, waits for its skill's next run on a
channel of its own (:data:`REUSED_PROCESS`; ``docs/skills.md`` says what is
given up and what is kept).

The fork server starts with an environment of its own (:func:`forkserver_env`),
never the skill server's, since every warm skill inherits its environment
block; a run's own environment (with the LLM settings for skills that asked
for them) travels in the run's header to the forked child alone. The two
talk over an inherited socketpair, not a socket path a skill could find.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import logging
import marshal
import os
import re
import socket
import stat
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from skillscale.core.runtime import fd_ready, within
from skillscale.core.skill_format import Skill
from skillscale.skill_server.executor import (
    ChildProcess,
    ExecutionLimits,
    SubprocessExecutor,
    open_pipes,
    rlimit_pairs,
    scrubbed_env,
    sweep_orphans,
)
from skillscale.skill_server.forkserver import AGAIN, EXEC, RUN, STARTED, encode_header

log = logging.getLogger(__name__)

FORKSERVER = str(Path(__file__).with_name("forkserver.py"))
"""Started by path (see its ``main``)."""

PRELOAD_CANDIDATES = (
    "argparse", "ast", "base64", "collections", "csv", "dataclasses", "datetime",
    "decimal", "functools", "hashlib", "io", "itertools", "json", "logging", "math",
    "pathlib", "random", "re", "statistics", "string", "subprocess", "tempfile",
    "textwrap", "time", "typing", "urllib.parse", "uuid",
    "skillscale.skillkit",
)  # fmt: skip
"""Modules the fork server imports once a skill of this server imports them
(see ``WarmExecutor.expect``): never all of them up front, since every
module the fork server holds is page tables copied at every fork, pages
faulted in every child and torn down at every exit, for skills that never
use it too (``docs/speed.md``, seventh pass). A module not listed here is
never imported by the fork server on a skill's say-so: importing runs the
module's code in the process every later run is forked from."""
OPTIONAL_PRELOAD = ("httpx", "openai")
"""The expensive imports LLM-calling skills make: candidates like the above
where they are installed."""
MAX_COMPILED_SOURCE = 256 * 1024
"""Scripts up to this size go to their child compiled (larger ones it compiles)."""
MAX_COMPILED_GROWTH = 8
"""Compiled code larger than this many times its source (plus 64 KiB) is left to the child."""
MAX_COMPILED_CACHE = 32 * 1024 * 1024
"""Bytes of sources and compiled code kept; past it the cache starts over."""
READY_TIMEOUT = 60.0
SEND_TIMEOUT = 10.0
MAX_STATUS_LINE = 4096
"""Bytes of a line from the fork server (a pid or a status) past which it is not believed."""
REFILL_DELAY = 0.002
"""Seconds after a run's exit before its replacement is forked (its reply first)."""
WAITING_CHILDREN = 2
"""Children forked ahead, each waiting for one run: the fork (and the setup
that needs no request) is off the request's path. Each is a fresh fork used
for one run only; two keep both default workers supplied while it refills."""
WAITING_IDLE = 10.0
"""Seconds without a run after which the waiting children are let go (the
idle timeout of php-fpm's ``ondemand`` manager, whose default it is). None
wait at start either: an idle server holds only itself and its fork server,
and the first run after an idle period forks its own child on its path."""
REUSED_PROCESS = "reused-process"
"""``metadata.isolation`` of a skill whose runs may share a process, in
turn: each run still gets its own pipes, environment, working directory,
timeout and report, but not a fresh fork, so what one run leaves in the
process (module state, caches, globals of imported modules, signal
handlers) the next run of the same skill sees. Never shared between skills.
The default, ``fresh-process``, forks every run anew."""
MAX_REUSED_RUNS = 1000
"""Runs one reused process takes before it is let go (a bound on what runs leave in it)."""
MAX_REUSED_IDLE = 16
"""Reused processes waiting for their skill's next run, at most (over all skills)."""
_REUSED = b"U"
"""Reused processes, as a kind of waiting children (see ``drop_waiting``)."""
FORKSERVER_ENV = (
    "PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "SKILLSCALE_STAMPS",
)  # fmt: skip
"""Besides a skill's own allow-list, what the fork server needs to import what
the skill server imports: none of it is a credential."""


def forkserver_env(python: str) -> dict[str, str]:
    """The fork server's entire environment, hence every warm skill's ``/proc/self/environ``."""
    env = scrubbed_env(python, {})
    env.update({k: v for k, v in os.environ.items() if k in FORKSERVER_ENV or k.startswith("LC_")})
    return env


def preload_candidates() -> list[str]:
    """What the default fork server may preload: :data:`PRELOAD_CANDIDATES`
    and the optional modules that are installed."""
    optional = [m for m in OPTIONAL_PRELOAD if importlib.util.find_spec(m) is not None]
    return [*PRELOAD_CANDIDATES, *optional]


_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w., \t]+)", re.M)
_FROM = re.compile(r"^[ \t]*from[ \t]+([\w.]+)[ \t]+import\b", re.M)


def imported_names(source: str) -> frozenset[str]:
    """The absolute module names ``source``'s import statements name (``import
    a.b, c as d`` and ``from a.b import x``, each at the start of a line).

    A look at the text, not a parse: the preload is an optimisation, and a
    name this misses (an import in a string, or spread over lines) only
    means the run imports the module itself, as a cold start would.
    """
    names = {m.group(1) for m in _FROM.finditer(source)}
    for m in _IMPORT.finditer(source):
        for part in m.group(1).split(","):
            if words := part.split():
                names.add(words[0])
    return frozenset(names)


def wanted(names: frozenset[str], candidates: Sequence[str]) -> frozenset[str]:
    """The candidates that ``names`` import (a candidate, or a submodule of one)."""
    return frozenset(c for c in candidates if any(n == c or n.startswith(c + ".") for n in names))


def _read_regular(path: Path, limit: int) -> bytes | None:
    """``path``'s bytes if it is a regular file of at most ``limit`` bytes;
    None otherwise (missing, a FIFO or a device, larger, changing as we read).

    Skills' files are theirs to replace with anything: opened non-blocking, a
    FIFO in a script's place cannot block our loop, and nothing past the
    bound is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        # Sized reads: a read of the bound would allocate the bound, every run.
        data = os.read(fd, st.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == st.st_size else None


class ForkServerUnavailable(Exception):
    """The fork server is not running (starting, or it died)."""


class WarmProcess:
    """A child of the fork server, seen through the :class:`ChildProcess` interface.

    It owns our end of the child's connection to the fork server (which
    brings its pid, then its exit status) and our ends of its pipes until a
    run takes them. All of it is raw non-blocking fds served by loop
    callbacks, no streams: see ``executor._Run`` for why.
    """

    def __init__(self, sock: socket.socket, pipes: tuple[int, int, int], report_fd: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.pid = 0
        """Known once :attr:`ready` is."""
        self._sock = sock
        self._pipes: tuple[int, int, int] | None = pipes
        self._report_fd: int | None = report_fd
        self._received = bytearray()
        self._unsent = memoryview(b"")
        self._unsent_to = sock
        self.generation = 0
        """Which fork server (start) forked it."""
        self.reuse: tuple[str, str, tuple[tuple[int, int], ...]] | None = None
        """For a skill of ``isolation: reused-process``: what its runs share
        (script, working directory, rlimits); None for a fresh fork per run."""
        self.runs = 0
        """Runs started in this process."""
        self.channel: socket.socket | None = None
        """A reused process's channel (ours, non-blocking): its next runs go
        there, and it says there that it waits for one (``forkserver.AGAIN``).
        The script can write to it too: it is read at a run's end only, for
        exactly that word, and anything else lets the process go."""
        self._began: bool | None = None
        """:meth:`began`, as read when the process's connection closed."""
        self.on_free: Callable[[WarmProcess], None] | None = None
        """Called with this process once a run of it ended and it waits for another."""
        self.ready: asyncio.Future[int | None] = self._loop.create_future()
        """Its pid, once forked; None if the fork server hung up first."""
        self.waiter: asyncio.Future[int] = self._loop.create_future()
        """Its exit status, from the fork server; the connection closes with it."""
        self.waiter.add_done_callback(self._hang_up)
        # Watched from the start, so the connection is always read to its
        # end and closed, whatever happens to the run.
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def start(self, header: bytes, fds: Sequence[int] = ()) -> None:
        """Hand the waiting child its run (it reads ``header`` and runs);
        what the socket does not take at once follows as it drains. ``fds``
        go with the first byte (a reused process's next run, see :meth:`next_run`)."""
        self.runs += 1
        sock = self._sock if self.runs == 1 or self.channel is None else self.channel
        sent = socket.send_fds(sock, [header], fds) if fds else sock.send(header)
        if sent < len(header):
            self._unsent = memoryview(header)[sent:]
            self._unsent_to = sock
            self._loop.add_writer(sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        sock = self._unsent_to
        try:
            sent = sock.send(self._unsent)
        except BlockingIOError:
            return
        except OSError:
            sent = len(self._unsent)  # the child is gone: its status says so
        self._unsent = self._unsent[sent:]
        if not self._unsent:
            self._loop.remove_writer(sock.fileno())

    def _on_readable(self) -> None:
        try:
            chunk = self._sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._finish(None)
            return
        self._received += chunk
        while (end := self._received.find(b"\n")) >= 0:
            line = bytes(self._received[:end])
            del self._received[: end + 1]
            key = "status" if self.ready.done() else "pid"
            try:
                value = int(json.loads(line)[key])
            except (ValueError, KeyError, TypeError, IndexError):
                self._finish(None)
                return
            if key == "pid":
                self.pid = value
                self.ready.set_result(value)
            else:
                self._finish(value)
                return
        if len(self._received) > MAX_STATUS_LINE:
            self._finish(None)

    def _finish(self, status: int | None) -> None:
        if self.waiter.done():
            return
        orphaned = status is None and self.ready.done()
        if not self.ready.done():
            self.ready.set_result(None)
        # Resolved, and the connection hung up now (not from the waiter's
        # callback a loop step later), before anything that could raise: a
        # watch left on a socket at EOF would spin the loop.
        self.waiter.set_result(-9 if status is None else status)
        self._hang_up(None)
        if orphaned:
            # The fork server died (or said nonsense): its children died
            # with it, and what they started was re-parented to us.
            try:
                sweep_orphans()
            except OSError:
                log.exception("could not kill what a dead fork server's runs left")

    def _hang_up(self, _: object) -> None:
        if self._unsent and self._unsent_to.fileno() >= 0:
            self._loop.remove_writer(self._unsent_to.fileno())
        self._unsent = memoryview(b"")
        fd = self._sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
        self._sock.close()
        if self.channel is not None and self.channel.fileno() >= 0:
            # Whether its last run began is read before the channel goes
            # (once: this runs again from the waiter's callback): the exit's
            # status may come before the run's end is handled.
            if self._began is None:
                self._began = self._said_started()
            self.channel.close()
        if not self.ready.done():
            self.ready.set_result(None)

    def discard(self) -> None:
        """Let a child that will never run (again) go: closing its connection
        makes the fork server kill it; our pipe ends close with it."""
        if not self.waiter.done():
            self.waiter.set_result(-9)
        elif self.channel is not None:
            self.channel.close()  # (the waiter's callback closed the rest)
        for fd in self._take_all():
            os.close(fd)

    def _take_all(self) -> list[int]:
        fds = list(self._pipes or ())
        self._pipes = None
        report = self.take_report_fd()
        return [*fds, report] if report is not None else fds

    def take_pipes(self) -> tuple[int, int, int]:
        """Our ends of its stdin, stdout and stderr, non-blocking, once; the caller closes them."""
        pipes, self._pipes = self._pipes, None
        assert pipes is not None, "the pipes were taken already"
        return pipes

    def take_report_fd(self) -> int | None:
        """Our end of the report channel (see ``forkserver._report_over``),
        non-blocking; the caller closes it. None once taken."""
        fd, self._report_fd = self._report_fd, None
        return fd

    def next_run(self, header: bytes) -> None:
        """Hand a reused process (waiting after a run) its next run: new pipes
        and report channel, sent with ``header`` on its connection.

        Raises OSError when that cannot be done (no fds, the process gone).
        """
        ends = _run_ends()
        child_ends, ours, report = ends
        try:
            self.start(header, child_ends)
        except BaseException:
            for fd in [*child_ends, *ours, report]:
                os.close(fd)
            raise
        for fd in child_ends:
            os.close(fd)
        self._pipes, self._report_fd = ours, report

    def keep(self) -> bool:
        """After a run it reported over: whether this process waits for
        another (a reused process that said so, and is alive)."""
        channel = self.channel
        if channel is None or self.waiter.done() or channel.fileno() < 0:
            return False
        expected = AGAIN if self.runs == 1 else STARTED + AGAIN
        try:
            # Said before the report, which is read already: it is here.
            said = channel.recv(len(expected) + 1)
        except OSError:
            said = b""
        return said == expected

    def began(self) -> bool:
        """Whether the script of its run began: a first run's always did; a
        reused process's next run did if it said so (``forkserver.STARTED``)
        before it ended. In doubt, it did: a run tried twice could run twice."""
        if self._began is not None:
            return self._began
        return self._said_started()

    def _said_started(self) -> bool:
        channel = self.channel
        if self.runs <= 1 or channel is None:
            return True
        try:
            # Said before the script ran, so before any end of it: it is here.
            said = channel.recv(len(STARTED), socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, ConnectionResetError):
            # Nothing said, or (a reset) it ended with our request unread:
            # it ended before the script.
            return False
        except OSError:
            return True
        return said == STARTED

    def release(self, kept: bool) -> None:
        """A run of this process ended (its fds are closed); ``kept``: see :meth:`keep`."""
        if kept and self.on_free is not None:
            self.on_free(self)

    @property
    def returncode(self) -> int | None:
        """The exit status once known; ``-N`` for death by signal N."""
        waiter = self.waiter
        return waiter.result() if waiter.done() and not waiter.cancelled() else None

    async def wait(self) -> int:
        """The exit status, as the fork server reaped it."""
        return await asyncio.shield(self.waiter)


def _run_ends() -> tuple[list[int], tuple[int, int, int], int]:
    """A run's pipes and report channel: the child's ends (stdin, stdout,
    stderr, report), ours (stdin, stdout, stderr; non-blocking) and our end
    of the report channel (non-blocking). Raises OSError, leaking nothing,
    when out of fds."""
    pipes = open_pipes(3)
    (stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w) = pipes
    try:
        # A socket, not a pipe: another run (same uid) could reopen a pipe
        # through /proc/<pid>/fd and report this run over; a socket cannot
        # be opened that way.
        report_r, report_w = (end.detach() for end in socket.socketpair())
    except OSError:
        for fd in [end for pipe in pipes for end in pipe]:
            os.close(fd)
        raise
    for fd in (stdin_w, stdout_r, stderr_r, report_r):
        os.set_blocking(fd, False)
    return [stdin_r, stdout_w, stderr_w, report_w], (stdin_w, stdout_r, stderr_r), report_r


async def _send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """Send ``data`` on a non-blocking stream socket, ``fds`` with its first byte."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sent = socket.send_fds(sock, [data], fds)
            break
        except BlockingIOError:
            await fd_ready(sock, write=True)
    if sent < len(data):
        await loop.sock_sendall(sock, data[sent:])


class WarmExecutor(SubprocessExecutor):
    """Runs ``scripts/run.py`` (and ``run.sh``, exec'd) in children of the fork
    server; other entry points and opted-out skills cold."""

    def __init__(
        self,
        python: str | None = None,
        preload: Sequence[str] | None = None,
        waiting_children: int = WAITING_CHILDREN,
        waiting_idle: float = WAITING_IDLE,
        max_reused_runs: int = MAX_REUSED_RUNS,
    ) -> None:
        super().__init__(python)
        self.max_reused_runs = max(1, max_reused_runs)
        """Runs a reused process takes before it goes (see :data:`REUSED_PROCESS`)."""
        self._reused: collections.OrderedDict[WarmProcess, float] = collections.OrderedDict()
        """Reused processes waiting for their skill's next run, with the loop
        time each began to wait, oldest first."""
        self.waiting_children = max(0, waiting_children)
        """How many forked children wait for their run while runs come (0: fork on demand)."""
        self.waiting_idle = waiting_idle
        """Seconds without a run before the waiting children go (see :data:`WAITING_IDLE`)."""
        self._waiting: dict[bytes, collections.deque[WarmProcess]] = {
            RUN: collections.deque(),
            EXEC: collections.deque(),
        }
        """Waiting children by kind: Python runs (forked by the fork server) and
        runs that only exec (forked by its exec server, see forkserver.main)."""
        self._recent: dict[bytes, float] = {}
        """When a run of each kind last came (kinds idle longer have no waiting children)."""
        self._refilling: asyncio.Task[None] | None = None
        self._retire: asyncio.TimerHandle | None = None
        self._refills: set[asyncio.TimerHandle] = set()
        """Refills due after finished runs (cancelled by :meth:`close`)."""
        self._closed = False
        self._generation = 0
        self.preload = list(preload) if preload is not None else []
        """What the fork server imports (see :data:`PRELOAD_CANDIDATES`)."""
        self._candidates = preload_candidates() if preload is None else []
        """Modules preloaded once a skill that imports them is seen (see
        :meth:`expect`); none when the preload was given."""
        self._scanned: dict[str, tuple[int, frozenset[str]]] = {}
        self._code: dict[str, tuple[bytes, bytes]] = {}
        """Compiled scripts by path: (source, marshalled code)."""
        self._code_bytes = 0
        """What :attr:`_code` holds, in bytes (bounded by MAX_COMPILED_CACHE)."""
        self._growing: asyncio.Task[None] | None = None
        self._pending: list[str] = []
        """Candidates a skill imports, for the next fork server."""
        self._exec_servers: dict[int, int | None] = {}
        self._retired: list[asyncio.subprocess.Process] = []
        """Fork servers replaced by a larger preload, finishing their runs."""
        self._proc: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._control_lock = asyncio.Lock()
        """One writer at a time: a sender waiting for room owns the socket's writer slot."""
        self._lock = asyncio.Lock()
        self._restarting: asyncio.Task[None] | None = None
        self.stats = {"warm": 0, "cold": 0, "restarts": 0, "reused": 0}
        self._waiters: set[asyncio.Future[int]] = set()

    @property
    def forkserver_pid(self) -> int | None:
        """The fork server's pid while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def exec_server_pid(self) -> int | None:
        """The running fork server's exec server (its child, forking ``run.sh`` runs)."""
        pid = self.forkserver_pid
        return self._exec_servers.get(pid) if pid is not None else None

    @property
    def running(self) -> bool:
        """True while the fork server process is alive."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Start the fork server and wait until its imports are done."""
        async with self._lock:
            await self._start_locked()

    async def _start_locked(self) -> None:
        self._closed = False
        if self.running:
            return
        if self._control is not None:
            self._control.close()
            self._control = None
        self._proc, self._control = await self._launch()
        self._generation += 1
        self.drop_waiting()

    async def _launch(self) -> tuple[asyncio.subprocess.Process, socket.socket]:
        """A new fork server with ``self.preload`` imported, and our end of its socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, FORKSERVER,
                str(theirs.fileno()), *self.preload,
                stdout=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
                env=forkserver_env(self.python),
                pass_fds=(theirs.fileno(),),
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        assert proc.stdout is not None
        try:
            line = await within(proc.stdout.readline(), READY_TIMEOUT)
            ready = json.loads(line)
        except BaseException as exc:
            # Cancelled too (a grow under way when the executor closes): the
            # half-started fork server is killed and reaped, never left to
            # the garbage collector with its transport.
            ours.close()
            proc.kill()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await within(asyncio.shield(proc.wait()), 5)
            if isinstance(exc, (asyncio.TimeoutError, ValueError)):
                raise ForkServerUnavailable("the fork server did not start") from None
            raise
        if ready.get("missing"):
            log.info("fork server could not preload: %s", ", ".join(ready["missing"]))
        log.info("fork server %d up with %d modules preloaded", ready["pid"], len(self.preload))
        self._exec_servers[proc.pid] = ready.get("exec_server")
        return proc, ours

    def expect(self, scripts: Iterable[Path]) -> None:
        """Preload what these Python entry points import (of the candidates,
        :data:`PRELOAD_CANDIDATES`), from now on: the server's skills, at its
        start and after each reload.

        Before :meth:`start` this only sets what the fork server will import.
        Once it runs, a fork server with the larger preload is started beside
        the current one, which finishes its runs before it goes; until it is
        up (about a second) a run imports what it lacks itself, as a cold
        start would. A skill added without a reload is seen at its first
        run (:meth:`_follow_imports`).
        """
        for script in scripts:
            if script.suffix == ".py":
                self._follow_imports(script, grow=False)
        if self.running and self._pending:
            self._grow_soon()

    def _follow_imports(self, script: Path, *, grow: bool = True) -> None:
        """Note what ``script`` imports of the candidates; with ``grow``, start
        a fork server that has them (see :meth:`expect`).

        Found by a look at the source (:func:`imported_names`; up to
        :data:`MAX_COMPILED_SOURCE` bytes of a regular file), cached per file
        version, so a run pays a ``stat`` of its script for it while
        candidates are left.
        """
        key = str(script)
        try:
            version = script.stat().st_mtime_ns
        except OSError:
            return  # the run will report the missing file
        cached = self._scanned.get(key)
        if cached is None or cached[0] != version:
            # (Not a regular file, or past the bound: nothing to preload for it.)
            source = _read_regular(script, MAX_COMPILED_SOURCE) or b""
            found = wanted(imported_names(source.decode(errors="replace")), self._candidates)
            if len(self._scanned) >= 4096:
                self._scanned.clear()  # bounded: skills come and go
            self._scanned[key] = cached = (version, found)
        missing = [m for m in sorted(cached[1]) if m not in self.preload and m not in self._pending]
        self._pending += missing
        if grow and self._pending:
            self._grow_soon()  # (a no-op while one grows: the next run asks again)
        if not self.running:
            self._take_pending()  # a fork server started from now on has them

    def _take_pending(self) -> None:
        self.preload += self._pending
        # What is preloaded is never looked for again: once every candidate
        # is, runs stop reading their scripts for imports.
        self._candidates = [m for m in self._candidates if m not in self._pending]
        self._pending = []

    def _grow_soon(self) -> None:
        if self._growing is None or self._growing.done():
            self._take_pending()
            self._growing = asyncio.ensure_future(self._grow())

    def _compiled(self, script: Path) -> bytes | None:
        """``script`` compiled and marshalled, once per content of the file
        (see ``forkserver._run_main``); None to let the child compile it.

        The file is read on every run and compared with what was compiled
        (a small read, some 15 µs): an edit counts at once, even one within
        the file system's timestamp resolution that keeps the size. Anything
        out of the ordinary (not a regular file, too large, an error or a
        warning from the compiler, code much larger than its source) is left
        to the child, which compiles and reports it as ``python`` would, in
        its own limits.
        """
        if self.python != sys.executable:
            return None  # marshal's format is its interpreter version's
        source = _read_regular(script, MAX_COMPILED_SOURCE)
        if source is None:
            return None  # missing, not a regular file, too large: the child's to run or report
        key = str(script)
        cached = self._code.get(key)
        if cached is not None and cached[0] == source:
            return cached[1]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # optimize=0: the fork server runs without -O, whatever we run with.
                code = compile(source, key, "exec", dont_inherit=True, optimize=0)
            compiled = marshal.dumps(code)
        except Exception:  # SyntaxError, RecursionError, MemoryError...: the child's to report
            return None
        if caught or len(compiled) > MAX_COMPILED_GROWTH * len(source) + 64 * 1024:
            # Its warnings belong on the run's stderr; folded constants
            # ("x" * 10**6) would be ours to hold and send.
            return None
        if self._code_bytes + len(source) + len(compiled) > MAX_COMPILED_CACHE:
            self._code.clear()  # bounded: skills come and go
            self._code_bytes = 0
        if key in self._code:
            old_source, old_compiled = self._code.pop(key)
            self._code_bytes -= len(old_source) + len(old_compiled)
        self._code[key] = (source, compiled)
        self._code_bytes += len(source) + len(compiled)
        return compiled

    async def _grow(self) -> None:
        """Replace the running fork server by one with the larger preload."""
        async with self._lock:
            if not self.running:
                return  # (re)started with self.preload anyway
            try:
                proc, control = await self._launch()
            except ForkServerUnavailable:
                log.exception("could not start a fork server with %s", ", ".join(self.preload))
                return
            old, old_control = self._proc, self._control
            self._proc, self._control = proc, control
            self._generation += 1
            self.drop_waiting()
            if old_control is not None:
                # The old fork server stops taking work and exits once the
                # runs it forked have ended (see forkserver.ForkServer.serve).
                old_control.close()
            if old is not None:
                self._retired.append(old)

    def drop_waiting(self, kinds: tuple[bytes, ...] = (RUN, EXEC, _REUSED)) -> None:
        """Let every waiting child go (they are forked again as runs need them)."""
        for kind in kinds:
            if kind == _REUSED:
                while self._reused:
                    self._reused.popitem(last=False)[0].discard()
                continue
            waiting = self._waiting[kind]
            while waiting:
                waiting.popleft().discard()

    @property
    def waiting(self) -> int:
        """How many forked children wait for a run now."""
        return sum(map(len, self._waiting.values()))

    @property
    def reused_waiting(self) -> int:
        """How many reused processes wait for their skill's next run now."""
        return len(self._reused)

    def reuses(self, skill: Skill) -> bool:
        """Whether ``skill``'s runs may share a process (see :data:`REUSED_PROCESS`):
        a warm Python entry point whose ``metadata.isolation`` asks for it."""
        return (
            skill.entrypoint is not None
            and skill.entrypoint.suffix == ".py"
            and skill.metadata.get("isolation", "").strip().lower() == REUSED_PROCESS
            and self.is_warm(skill)
        )

    def _take_reused(self, key: tuple[str, str, tuple[tuple[int, int], ...]]) -> WarmProcess | None:
        # The most recent first: its pages are the likeliest still cached.
        for child in reversed(list(self._reused)):
            if child.reuse == key:
                del self._reused[child]
                if child.generation == self._generation and not child.waiter.done():
                    return child
                child.discard()  # it ended waiting: look on
        return None

    def forget_reused(self, skill: Skill) -> None:
        """Let go every process that waits for a next run of ``skill``: one
        ended between two runs, and the others may be left the same way."""
        shared = (str(skill.entrypoint), str(skill.path))
        for child in list(self._reused):
            if child.reuse is not None and child.reuse[:2] == shared:
                del self._reused[child]
                child.discard()

    def _free_reused(self, child: WarmProcess) -> None:
        """A reused process's run ended and it waits for the next: keep it, within bounds."""
        if (
            self._closed
            or child.generation != self._generation
            or child.runs >= self.max_reused_runs
            or child.waiter.done()
        ):
            child.discard()
            return
        loop = asyncio.get_running_loop()
        self._reused[child] = loop.time()
        while len(self._reused) > MAX_REUSED_IDLE:
            self._reused.popitem(last=False)[0].discard()
        if self._retire is None:
            self._retire = loop.call_later(self.waiting_idle, self._retire_idle)

    def _retire_idle(self) -> None:
        """Let a kind's waiting children go once no run of it came for
        ``waiting_idle`` s, and each reused process once it waited that long."""
        now = asyncio.get_running_loop().time()
        for kind, last in list(self._recent.items()):
            if now - last >= self.waiting_idle:
                del self._recent[kind]
                self.drop_waiting((kind,))
        while self._reused and now - next(iter(self._reused.values())) >= self.waiting_idle:
            self._reused.popitem(last=False)[0].discard()
        self._retire = None
        due = [*self._recent.values(), *self._reused.values()]
        if due:
            wake = min(due) + self.waiting_idle - now
            self._retire = asyncio.get_running_loop().call_later(wake, self._retire_idle)

    async def close(self) -> None:
        """Stop the fork server (its running children die with it)."""
        # A run that ends from here on (its waiter cancelled below) must not
        # schedule a refill, and a refill due now must not fork or time.
        self._closed = True
        self._recent.clear()
        for handle in self._refills:
            handle.cancel()
        self._refills.clear()
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        for task in (self._restarting, self._refilling, self._growing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.drop_waiting()
        for waiter in list(self._waiters):
            # Resolved, not cancelled: a run still waiting for its reap gets
            # the kill's status (the fork server's end kills its children)
            # rather than a CancelledError it never asked for.
            if not waiter.done():
                waiter.set_result(-9)
        await asyncio.sleep(0)  # one loop step: their callbacks close the connections
        if self._control is not None:
            # The end of its socket stops the fork server, and it kills
            # every process below it first.
            self._control.close()
            self._control = None
        for proc in [*self._retired, self._proc]:
            if proc is not None and proc.returncode is None:
                try:
                    await within(proc.wait(), 5)
                except asyncio.TimeoutError:
                    proc.kill()
                    await proc.wait()
        self._retired.clear()
        sweep_orphans()

    def is_warm(self, skill: Skill) -> bool:
        """Python entry point and not opted out (``metadata.warm: false``)."""
        return (
            skill.entrypoint is not None
            and skill.entrypoint.suffix in (".py", ".sh")
            and skill.metadata.get("warm", "true").lower() not in ("false", "no", "0", "off")
        )

    async def spawn(
        self, skill: Skill, env: dict[str, str], limits: ExecutionLimits
    ) -> ChildProcess:
        """Fork a warm child; fall back to a cold one while the fork server is away."""
        if self.is_warm(skill):
            try:
                child = await self._fork(skill, env, limits)
            except ForkServerUnavailable as exc:
                log.warning("running %s cold: %s", skill.name, exc)
                self._schedule_restart()
            else:
                self.stats["warm"] += 1
                return child
        self.stats["cold"] += 1
        return await super().spawn(skill, env, limits)

    def _schedule_restart(self) -> None:
        if self._restarting is None or self._restarting.done():
            self.stats["restarts"] += 1
            self._restarting = asyncio.ensure_future(self._restart())

    async def _restart(self) -> None:
        # The dead fork server's runs left their descendants to us.
        sweep_orphans()
        try:
            await self.start()
        except ForkServerUnavailable:
            log.exception("could not restart the fork server")

    async def _fork(
        self, skill: Skill, env: dict[str, str], limits: ExecutionLimits
    ) -> WarmProcess:
        assert skill.entrypoint is not None
        if self._candidates and skill.entrypoint.suffix == ".py":
            self._follow_imports(skill.entrypoint)
        rlimits = rlimit_pairs(limits.resources)
        header: dict[str, object] = {
            "script": str(skill.entrypoint),
            "cwd": str(skill.path),
            "env": env,
            "rlimits": rlimits,
        }
        if skill.entrypoint.suffix != ".py":
            # Exec'd by the waiting child once it is set up: one exec, where the
            # cold path pays a Python start-up (its trampoline) and then the exec.
            header["argv"] = self.argv(skill.entrypoint)
        kind = RUN if skill.entrypoint.suffix == ".py" else EXEC
        compiled = self._compiled(skill.entrypoint) if kind == RUN else None
        reuse = None
        if self.reuses(skill):
            reuse = (str(skill.entrypoint), str(skill.path), tuple(rlimits))
            reused = self._take_reused(reuse)
            if reused is not None:
                try:
                    reused.next_run(encode_header(header, compiled))
                except OSError:
                    reused.discard()  # gone meanwhile: a process of its own, below
                else:
                    self.stats["reused"] += 1
                    return reused
            header["reuse"] = True
        else:
            self._recent[kind] = asyncio.get_running_loop().time()
        line = encode_header(header, compiled)
        child = self._take_waiting(kind)
        # A waiting child may have died waiting, and a fresh one with the exec
        # server (see forkserver.main) as it died: one more fresh child then.
        retries = 1
        while True:
            try:
                if child is None:
                    retries -= 1
                    child = await self._new_child(kind)
                # The child reads this line and becomes the run; all it did
                # before (fork, session, death signal, subreaper, stdio,
                # closing fds) it did while waiting, off the request's path.
                try:
                    if reuse is None:
                        child.start(line)
                    else:
                        self._start_reused(child, line)
                except OSError as exc:
                    child.discard()
                    why = f"the fork server did not answer: {exc!r}"
                    raise ForkServerUnavailable(why) from None
                break
            except ForkServerUnavailable:
                if retries < 0:
                    raise
                child = None
        # Forked again once this run is over and its reply out, not now: a
        # fork beside the run would compete with it for the CPU (and the fork
        # server), and one at its end would delay its reply on our loop.
        child.waiter.add_done_callback(self._refill_later)
        if reuse is not None:
            child.reuse = reuse
            child.on_free = self._free_reused
        return child

    @staticmethod
    def _start_reused(child: WarmProcess, line: bytes) -> None:
        """Start a reused process's first run, with its channel (see ``WarmProcess.channel``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            try:
                child.start(line, [theirs.fileno()])
            except BaseException:
                ours.close()
                raise
        ours.setblocking(False)
        child.channel = ours

    def _refill_later(self, _: object) -> None:
        if self._closed:
            return
        handle: asyncio.TimerHandle

        def refill() -> None:
            self._refills.discard(handle)
            self._refill()

        handle = asyncio.get_running_loop().call_later(REFILL_DELAY, refill)
        self._refills.add(handle)

    def _take_waiting(self, kind: bytes) -> WarmProcess | None:
        waiting = self._waiting[kind]
        while waiting:
            child = waiting.popleft()
            if child.generation == self._generation and not child.waiter.done():
                return child
            child.discard()  # its fork server was replaced, or it ended waiting
        return None

    def _refill(self) -> None:
        if not self.waiting_children or self._closed:
            return
        loop = asyncio.get_running_loop()
        if not self._recent:
            return  # a run that outlasted the idle period: nobody is coming
        if self._retire is None:
            self._retire = loop.call_later(self.waiting_idle, self._retire_idle)
        if self._refilling is None or self._refilling.done():
            self._refilling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        for kind in (RUN, EXEC):
            waiting = self._waiting[kind]
            while self.running and kind in self._recent and len(waiting) < self.waiting_children:
                try:
                    child = await self._new_child(kind)
                except ForkServerUnavailable as exc:
                    log.debug("no waiting child: %s", exc)  # the next run forks its own, or cold
                    return
                waiting.append(child)

    async def _new_child(self, kind: bytes = RUN) -> WarmProcess:
        """A child of the fork server, forked and waiting for its run's header."""
        control = self._control
        if not self.running or control is None:
            raise ForkServerUnavailable("the fork server is not running")
        generation = self._generation
        try:
            child_ends, ours, report_r = _run_ends()
        except OSError as exc:
            raise ForkServerUnavailable(f"no fds for a child: {exc!r}") from None
        try:
            # One connection per child: the fork server forks on receiving
            # its far end, and the child alone reads the header from it.
            # Closing ours before the status came tells the fork server
            # to kill the child.
            sock, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            for fd in [*child_ends, *ours, report_r]:
                os.close(fd)
            raise ForkServerUnavailable(f"no fds for a child: {exc!r}") from None
        sock.setblocking(False)
        # From here on the child owns our ends, and discard() closes them.
        child = WarmProcess(sock, ours, report_r)
        try:

            async def connect() -> int | None:
                nonlocal child_ends
                async with self._control_lock:
                    await _send_with_fds(control, kind, [far.fileno(), *child_ends])
                far.close()
                for fd in child_ends:
                    os.close(fd)
                child_ends = []
                return await child.ready

            pid = await within(connect(), SEND_TIMEOUT)
            if pid is None:
                raise ConnectionResetError("the fork server hung up")
        except BaseException as exc:
            far.close()
            for fd in child_ends:
                os.close(fd)
            child.discard()
            if isinstance(exc, (OSError, ValueError, KeyError, asyncio.TimeoutError)):
                raise ForkServerUnavailable(f"the fork server did not answer: {exc!r}") from None
            raise
        child.generation = generation
        self._waiters.add(child.waiter)
        child.waiter.add_done_callback(self._waiters.discard)
        return child
