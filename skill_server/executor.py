"""Running a skill's entry point as an isolated child process.

Each run gets an argument vector (never a shell command line), its input on
stdin, the skill folder as its working directory, a scrubbed environment, a
new session (so the timeout can kill the whole process group, grandchildren
included), kernel limits, death with its server, and bounded stdout/stderr.
A skill that writes past the output bound is killed at once rather than
buffered. What it writes to stderr comes back redacted (API keys, tokens,
e-mail addresses...), since it travels to the caller in the reply's trace.

No run leaves a process behind, daemons included. A process that
double-forks and calls ``setsid`` escapes its process group, so the group
kill cannot reach it; what keeps it is the process tree. Every run's first
process (its *root*) is a child subreaper (``PR_SET_CHILD_SUBREAPER``), and
so is the process that starts roots (the skill server on the cold path, the
fork server on the warm one). While a root lives, every descendant it ever
had stays below it, however it forks or re-parents itself; when the root
ends (exit, timeout kill, crash, ``os._exit``, exec), those descendants are
re-parented to the starter, which then kills each of them with its whole
subtree (found by walking ``/proc``; each ``SIGKILL`` goes through a pidfd
after checking the process is still in that subtree, so a recycled pid is
never hit) and reaps them. On the cold path the skill server tells such
adopted orphans from children other code of its own may have started by
their session: a root is a session leader, so no descendant of a run can
ever be in the server's session.

Why not a PID namespace or a cgroup: they contain even better, but need
privileges (root, or unprivileged user namespaces, or a delegated, writable
cgroup v2 tree) that a skill server in an ordinary container does not have;
the subreaper works for any user on Linux >= 3.4 and is the one mechanism
used everywhere. Where it is unavailable (not Linux, or no ``/proc``) only
the process-group kill remains: a setsid'd daemon then outlives its run.
Escapes that leave the process tree altogether (asking systemd, cron or a
container runtime to start something) are out of reach of all of these:
skills are trusted code, not a sandbox.

The cold path starts each child through a small trampoline (``python -c``)
that applies the kernel limits, ``PR_SET_PDEATHSIG`` and the subreaper flag
itself before running the skill, instead of a ``preexec_fn``: the skill
server runs ZeroMQ and executor threads, and running Python code between
``fork`` and ``exec`` in a threaded process can deadlock on a lock another
thread held at fork time. The trampoline runs a Python entry point in its
own interpreter as a fresh ``__main__`` (as the warm path does), so it costs no extra
exec; other entry points are exec'd from it, which costs one more (bare,
``-I -S``) interpreter start-up per cold shell skill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from skillscale.core import stamps
from skillscale.core.redact import redact
from skillscale.core.runtime import within
from skillscale.core.skill_format import Skill

# Re-exported: the process-tree code lives beside the fork server (see there).
from skillscale.skill_server.forkserver import ProcStat as ProcStat
from skillscale.skill_server.forkserver import _await_exit
from skillscale.skill_server.forkserver import kill_adopted as kill_adopted
from skillscale.skill_server.forkserver import prctl as prctl
from skillscale.skill_server.forkserver import proc_stat as proc_stat

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
INTENT_ENV_MAX = 32 * 1024
"""Inputs up to this size are also passed in ``SKILLSCALE_INTENT``.

Linux rejects a single environment string over 128 KiB (``MAX_ARG_STRLEN``)
with E2BIG at exec; the reference crashed there. Larger inputs travel on
stdin only and ``SKILLSCALE_INTENT_ON_STDIN_ONLY=1`` says so.
"""
PASS_THROUGH_ENV = ("LANG", "LC_ALL", "TZ", "TMPDIR", "HOME")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class ResourceLimits:
    """Kernel limits (``setrlimit``) on every skill process; 0 disables one.

    ``nproc`` counts every process of the user the server runs as (the
    kernel's rule), and the kernel does not apply it to root.
    """

    cpu_seconds: int = 60
    memory_bytes: int = 2 * 1024**3
    """Address space (``RLIMIT_AS``)."""
    nproc: int = 1024
    fsize_bytes: int = 256 * 1024**2
    """Largest file a skill may write (``RLIMIT_FSIZE``)."""


@dataclass(frozen=True)
class ExecutionLimits:
    """Bounds applied to one run."""

    timeout: float
    """Seconds before the process group is killed."""
    max_stdout: int = 4 * 1024 * 1024
    max_stderr: int = 64 * 1024
    pipe_grace: float = 0.5
    """Seconds to keep reading pipes after the process exits (for output
    still in flight); descendants that outlive it are killed before that."""
    resources: ResourceLimits = field(default_factory=ResourceLimits)


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def rlimit_pairs(limits: ResourceLimits) -> list[tuple[int, int]]:
    """``(resource, value)`` pairs to set, each capped by the current hard limit."""
    pairs = [
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_NPROC, limits.nproc),
        (resource.RLIMIT_FSIZE, limits.fsize_bytes),
    ]
    out = []
    for kind, value in pairs:
        if value > 0:
            _soft, hard = resource.getrlimit(kind)
            out.append((kind, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return out


TRAMPOLINE = """\
import os, sys
# The working directory is the skill's folder: nothing in it may shadow the
# modules imported here before the limits are on.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]
import ctypes, resource
_, parent, limits, mode, *target = sys.argv
if sys.platform.startswith("linux"):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL when the server dies
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: descendants stay below us
    if os.getppid() != int(parent):
        os._exit(137)  # the server died before the death signal was armed
for pair in filter(None, limits.split(",")):
    kind, value = map(int, pair.split("="))
    resource.setrlimit(kind, (value, value))
if mode == "exec":
    os.execv(target[0], target)
import builtins, types
from importlib.machinery import SourceFileLoader
sys.argv = target
sys.path.insert(0, os.path.dirname(target[0]))
# As the warm path runs it (forkserver._run_main): a fresh __main__, as python gives it.
with open(target[0], "rb") as fh:
    code = compile(fh.read(), target[0], "exec", dont_inherit=True)
main = types.ModuleType("__main__")
main.__dict__.update(__file__=target[0], __cached__=None, __annotations__={},
                     __builtins__=builtins, __loader__=SourceFileLoader("__main__", target[0]))
sys.modules["__main__"] = main
del fh
exec(code, main.__dict__)
"""
"""Run by the cold path's child before the skill: ``python -c TRAMPOLINE PARENT
LIMITS MODE TARGET...``, where LIMITS is ``resource=value,...`` and MODE is
``run`` (a Python script, run in this interpreter) or ``exec`` (an argv)."""


_SUBREAPER = False
_COLD_ROOTS: dict[int, ChildProcess] = {}
"""Cold runs' first processes not yet reaped by asyncio: never the sweep's to reap."""
_SPAWNING = 0
"""Cold spawns under way: their child exists before its pid is in ``_COLD_ROOTS``."""
_SWEEP_PENDING = False


def become_subreaper() -> bool:
    """Make this process the subreaper of every run it starts (once); False where unavailable."""
    global _SUBREAPER
    if not _SUBREAPER:
        _SUBREAPER = prctl(_PR_SET_CHILD_SUBREAPER, 1)
    return _SUBREAPER


def sweep_orphans() -> int:
    """Kill what ended runs left re-parented to this (the skill server) process:
    cold runs' daemons, and warm runs' whose fork server died.

    Only processes outside this process's session qualify: every run's root is
    a session leader, so each of its descendants is outside it too, while a
    child some other part of the server started normally is inside it.
    """
    global _SWEEP_PENDING
    if not _SUBREAPER:
        return 0
    if _SPAWNING:
        # A child being spawned would look adopted: sweep once it is registered.
        _SWEEP_PENDING = True
        return 0
    _SWEEP_PENDING = False
    for pid, proc in list(_COLD_ROOTS.items()):
        if proc.returncode is not None:
            del _COLD_ROOTS[pid]
    session = os.getsid(0)
    # It blocks the event loop, briefly: SIGKILLed processes die at once
    # unless stuck in the kernel (D state), and those are not waited for long.
    killed = kill_adopted(
        lambda pid, st: st.session != session and pid not in _COLD_ROOTS, patience=0.5
    )
    if killed:
        log.info("killed %d processes that ended runs left behind", killed)
    return killed


@dataclass
class ExecutionResult:
    """What happened in one run."""

    exit_code: int | None
    """The exit status, or ``-N`` for death by signal N."""
    stdout: bytes
    stderr: bytes
    elapsed_ms: float
    timed_out: bool = False
    stdout_overflow: bool = False
    stderr_truncated: bool = False
    start_error: str | None = None

    @property
    def ok(self) -> bool:
        """Exit 0 within the limits."""
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.stdout_overflow
            and self.start_error is None
        )


def allowed_env(skill: Skill) -> list[str]:
    """Server environment variables a skill's ``metadata.env`` asks for by name."""
    return [n for n in skill.metadata.get("env", "").replace(",", " ").split() if n]


def scrubbed_env(python: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment a skill sees: a short allow-list plus ``extra``.

    Nothing of the server's own environment (API keys, tokens, cloud
    credentials) reaches a skill unless listed here.
    """
    env = {k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ}
    python_dir = str(Path(python).parent)
    env["PATH"] = f"{python_dir}:{SAFE_PATH}"
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # exec() rejects NUL bytes in the environment; input text may carry them.
    env.update({k: v.replace("\x00", "") for k, v in extra.items()})
    return env


class SubprocessExecutor:
    """Runs ``scripts/run.py`` with ``python`` and ``scripts/run.sh`` with bash."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self.bash = shutil.which("bash") or "/bin/sh"
        become_subreaper()

    def argv(self, entrypoint: Path) -> list[str]:
        """The argument vector for an entry point."""
        if entrypoint.suffix == ".py":
            return [self.python, str(entrypoint)]
        return [self.bash, str(entrypoint)]

    def trampoline_argv(self, entrypoint: Path, limits: ResourceLimits) -> list[str]:
        """The cold path's argument vector: the trampoline, then the entry point."""
        pairs = ",".join(f"{kind}={value}" for kind, value in rlimit_pairs(limits))
        head = [str(os.getpid()), pairs]
        if entrypoint.suffix == ".py":
            return [self.python, "-c", TRAMPOLINE, *head, "run", str(entrypoint)]
        # -I -S: only the standard library is needed before the exec.
        return [self.python, "-I", "-S", "-c", TRAMPOLINE, *head, "exec", *self.argv(entrypoint)]

    async def run(
        self,
        skill: Skill,
        data: bytes,
        limits: ExecutionLimits,
        env: Mapping[str, str] | None = None,
    ) -> ExecutionResult:
        """Run ``skill`` on ``data``; never raises for anything the skill does."""
        assert skill.entrypoint is not None, "instruction-only skills are not executed"
        if stamps.ON:
            stamps.stamp("exec.start")
        started = time.monotonic()
        # A second try only for a run whose script never began (a reused
        # process that ended between two runs): nothing of it ran.
        for again in (False, True):
            try:
                run_env = scrubbed_env(self.python, self.skill_env(skill, data, env))
                proc = await self.spawn(skill, run_env, limits)
                if stamps.ON:
                    stamps.stamp("exec.spawned")
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                return ExecutionResult(None, b"", b"", _ms(started), start_error=str(exc))
            # Warm runs' leftovers are the fork server's to kill, cold ones ours.
            cold = _COLD_ROOTS.get(proc.pid) is proc
            run = _Run(proc, limits, started, sweep=cold)
            result = await run.complete(data)
            if not run.not_begun:
                break
            if again:
                why = f"{result.start_error}, and so did a second try"
                result = replace(result, start_error=why)
                break
            self.forget_reused(skill)  # the second try in a new process
            left = limits.timeout - (time.monotonic() - started)
            if left <= 0:
                break
            limits = replace(limits, timeout=left)
        return result

    @staticmethod
    def skill_env(skill: Skill, data: bytes, env: Mapping[str, str] | None) -> dict[str, str]:
        """The SkillScale variables a run gets, plus those ``metadata.env`` allows."""
        extra = {name: os.environ[name] for name in allowed_env(skill) if name in os.environ}
        extra.update(
            {"SKILLSCALE_SKILL": skill.name, "SKILLSCALE_SKILL_DIR": str(skill.path), **(env or {})}
        )
        if len(data) <= INTENT_ENV_MAX:
            extra["SKILLSCALE_INTENT"] = data.decode("utf-8", errors="replace")
        else:
            extra["SKILLSCALE_INTENT_ON_STDIN_ONLY"] = "1"
        return extra

    def forget_reused(self, skill: Skill) -> None:
        """Let go the processes kept for ``skill``'s next runs (the cold path
        keeps none; see ``WarmExecutor``)."""

    async def spawn(
        self, skill: Skill, env: dict[str, str], limits: ExecutionLimits
    ) -> ChildProcess:
        """Start the entry point as a fresh interpreter (the cold path)."""
        assert skill.entrypoint is not None
        global _SPAWNING, _SWEEP_PENDING
        # Our own pipes, not asyncio's: the run serves raw fds (see _Run).
        # os.pipe's ends are close-on-exec; the child gets its three as 0-2.
        (stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w) = open_pipes(3)
        ours = (stdin_w, stdout_r, stderr_r)
        _SPAWNING += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.trampoline_argv(skill.entrypoint, limits.resources),
                stdin=stdin_r,
                stdout=stdout_w,
                stderr=stderr_w,
                cwd=str(skill.path),
                env=env,
                start_new_session=True,
            )
            child = ColdProcess(proc, ours)
            _COLD_ROOTS[proc.pid] = child
        except BaseException:
            # Cancelled while asyncio set the child up: it killed and reaped
            # the child, whose descendants are now ours to kill.
            _SWEEP_PENDING = True
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
            _SPAWNING -= 1
            if not _SPAWNING and _SWEEP_PENDING:
                sweep_orphans()
        for fd in ours:
            os.set_blocking(fd, False)
        return child

    async def close(self) -> None:
        """Release what the executor holds (nothing, for the cold path)."""


def open_pipes(count: int) -> list[tuple[int, int]]:
    """``count`` pipes (read end, write end), close-on-exec; none if one fails
    (out of fds: the run fails to start, and nothing leaks)."""
    pipes: list[tuple[int, int]] = []
    try:
        for _ in range(count):
            pipes.append(os.pipe())
    except OSError:
        for pipe in pipes:
            for fd in pipe:
                os.close(fd)
        raise
    return pipes


class ChildProcess(Protocol):
    """What a run needs of a child: its pid (= process group), pipe ends and exit."""

    pid: int

    def take_pipes(self) -> tuple[int, int, int]:
        """Our ends of its stdin, stdout and stderr, non-blocking; the caller closes them."""
        ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class ColdProcess:
    """A cold run's interpreter (an asyncio process) and our ends of its pipes."""

    __slots__ = ("_pipes", "_proc", "pid")

    def __init__(self, proc: asyncio.subprocess.Process, pipes: tuple[int, int, int]) -> None:
        self.pid = proc.pid
        self._proc = proc
        self._pipes: tuple[int, int, int] | None = pipes

    def take_pipes(self) -> tuple[int, int, int]:
        """Our pipe ends, once (see :class:`ChildProcess`)."""
        pipes, self._pipes = self._pipes, None
        assert pipes is not None, "the pipes were taken already"
        return pipes

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped; ``-N`` for death by signal N."""
        return self._proc.returncode

    async def wait(self) -> int:
        """The exit status, once asyncio reaped the process."""
        return await self._proc.wait()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _wait_gone(pid: int, timeout: float) -> None:
    """Block until ``pid`` has exited (its children are re-parented by then)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return  # already reaped, or no pidfd: the next sweep catches what is left
    try:
        _await_exit([pidfd], time.monotonic() + timeout)
    finally:
        os.close(pidfd)


def redact_stderr(stderr: bytes, truncated: bool) -> bytes:
    """``stderr`` with credentials and personal data masked, bytes kept as they were.

    A truncated tail starts mid-line, maybe mid-secret, which no pattern would
    recognise: that partial first line is dropped.
    """
    text = stderr.decode("utf-8", errors="surrogateescape")
    if truncated and "\n" in text:
        text = text.split("\n", 1)[1]
    return redact(text).encode("utf-8", errors="surrogateescape")


class _Run:
    """The bookkeeping of one child: its pipes, limits, exit and process group.

    Everything a run waits on (its stdin taking the input, its stdout and
    stderr, its exit through a pidfd, a warm child's report, the timeout) is
    a raw non-blocking fd or a timer served by event-loop callbacks, and the
    run awaits two futures. Why not asyncio's streams: they cost each run
    three pipe transports with their protocols, two readers, a writer and
    three tasks, plus a task per wait; that machinery was a fifth of the
    skill server's CPU per warm run (``docs/speed.md``, eighth pass).
    """

    def __init__(
        self, proc: ChildProcess, limits: ExecutionLimits, started: float, *, sweep: bool
    ) -> None:
        self.proc = proc
        self.limits = limits
        self.started = started
        self.sweep = sweep
        """Kill what the run left re-parented to this process once the child is gone."""
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.overflow = False
        self.stderr_truncated = False
        # A warm child (WarmProcess.take_report_fd) hands over our end of the
        # channel it reports its end on. getattr, not a runtime-checkable
        # Protocol: isinstance against one costs some 30 µs on Python 3.11.
        take: Callable[[], int | None] | None = getattr(proc, "take_report_fd", None)
        self.report_fd = take() if take is not None else None
        self._loop = asyncio.get_running_loop()
        self._over: asyncio.Future[int | None] = self._loop.create_future()
        """The run's end: the code a warm child reported, or None (it exited, or time is up)."""
        self._drained: asyncio.Future[None] = self._loop.create_future()
        """Both output pipes reached their end (or were let go)."""
        self._timed_out = False
        self._pidfd: int | None = None
        self._stdin: int | None = None
        self._stdout: int | None = None
        self._stderr: int | None = None
        self._input = memoryview(b"")
        self._writing = False
        self._reaped: asyncio.Future[int] | None = None
        self.not_begun = False
        """It ended before its script began (see ``WarmProcess.began``)."""

    def kill_group(self) -> None:
        # The child is a session leader, so its pid is the group id; killing
        # the group takes grandchildren with it (the reference killed only
        # the shell and left orphans running).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def kill_leftovers(self) -> None:
        """Kill the daemons the run left (see the module docstring), once."""
        if self.sweep:
            self.sweep = False
            # Its descendants are re-parented to us only once it is gone.
            _wait_gone(self.proc.pid, 0.5)
            sweep_orphans()
            if self.proc.returncode is not None:
                _COLD_ROOTS.pop(self.proc.pid, None)

    async def complete(self, data: bytes) -> ExecutionResult:
        proc = self.proc
        loop = self._loop
        timer = loop.call_later(self.limits.timeout, self._time_up)
        reported: int | None = None
        timed_out = False
        not_begun: str | None = None
        kept = False
        """A reused process (``warm.REUSED_PROCESS``) that waits for its next run: it lives on."""
        try:
            self._stdin, self._stdout, self._stderr = proc.take_pipes()
            loop.add_reader(self._stdout, self._on_stdout)
            loop.add_reader(self._stderr, self._on_stderr)
            self._input = memoryview(data)
            self._on_stdin()
            self._watch_exit()
            reported = await self._over
            timer.cancel()
            if stamps.ON:
                stamps.stamp("exec.exited")
            timed_out = self._timed_out and not self.overflow
            if reported is not None and not self.overflow:
                # Reported over means nothing of the run is left (see
                # forkserver._report_over): a process that waits for its
                # next run has no group to kill.
                keep: Callable[[], bool] | None = getattr(proc, "keep", None)
                kept = keep is not None and keep()
            if not kept:
                # The skill is gone, over or out of time; descendants still holding
                # our pipes would keep them open forever, so the whole group goes,
                # and so does every daemon that left the group.
                self.kill_group()
                self.kill_leftovers()
            if reported is None and not timed_out:
                began: Callable[[], bool] | None = getattr(proc, "began", None)
                if began is not None and not began():
                    self.not_begun = True
                    not_begun = (
                        "its reused process ended before the run began "
                        "(something its last run left ended it)"
                    )
            if reported is None and proc.returncode is None:
                # A reported run left nothing; its reap is not waited for.
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(proc.wait(), timeout=self.limits.pipe_grace)
            if not self._drained.done():
                grace = loop.call_later(self.limits.pipe_grace, self._let_output_go)
                try:
                    await self._drained
                finally:
                    grace.cancel()
        finally:
            # Cancelled (server stopping) or not: no process, fd or watch outlives the run.
            timer.cancel()
            try:
                if not kept:
                    self.kill_group()
                    self.kill_leftovers()
            finally:
                self._release()
                release: Callable[[bool], None] | None = getattr(proc, "release", None)
                if release is not None:
                    release(kept)
        if stamps.ON:
            stamps.stamp("exec.done")
        if not_begun is not None:
            # What came on its pipes is not the run's: its script never ran.
            return ExecutionResult(None, b"", b"", _ms(self.started), start_error=not_begun)
        return ExecutionResult(
            exit_code=proc.returncode if reported is None else reported,
            stdout=bytes(self.stdout),
            stderr=redact_stderr(bytes(self.stderr), self.stderr_truncated),
            elapsed_ms=_ms(self.started),
            timed_out=timed_out,
            stdout_overflow=self.overflow,
            stderr_truncated=self.stderr_truncated,
        )

    def _time_up(self) -> None:
        if self._over.done():
            return
        # A loop stalled past the deadline (uvloop runs timers before I/O)
        # may hold an exit or a report that came in time: they win.
        for fd in (self.report_fd, self._pidfd):
            if fd is not None and select.select([fd], [], [], 0)[0]:
                if fd == self.report_fd:
                    self._on_report()
                else:
                    self._end(None)
                if self._over.done():
                    return
        self._timed_out = True
        self._end(None)

    def _end(self, reported: int | None) -> None:
        # A pidfd stays readable once its process is gone: the watches go at
        # the run's end, not after the pipe grace.
        for fd in (self._pidfd, self.report_fd):
            if fd is not None:
                self._loop.remove_reader(fd)
        if not self._over.done():
            self._over.set_result(reported)

    def _watch_exit(self) -> None:
        """Resolve ``_over`` when the child exits, whoever still holds its
        pipes, or when it reports its run over (see ``forkserver._report_over``):
        then with the exit code it reported.

        On Python < 3.12 ``Process.wait()`` also waits for every pipe to
        close, so a skill that leaves a background grandchild behind would
        look like a hang. A pidfd becomes readable at exit itself.
        """
        try:
            self._pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            # No pidfd (old kernel), or already reaped: the reap decides.
            self._reaped = asyncio.ensure_future(self.proc.wait())
            self._reaped.add_done_callback(lambda _: self._end(None))
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)
        if self.report_fd is not None:
            self._loop.add_reader(self.report_fd, self._on_report)

    def _on_exit(self) -> None:
        # A child reports before it exits, but both fds may turn readable in
        # one turn of the loop, the exit's callback first: the report wins
        # (the exit code may never come, from a fork server that is stuck).
        fd = self.report_fd
        if fd is not None and select.select([fd], [], [], 0)[0]:
            self._on_report()
        self._end(None)

    def _on_report(self) -> None:
        assert self.report_fd is not None
        try:
            said = os.read(self.report_fd, 2)
        except BlockingIOError:
            return
        except OSError:
            said = b""
        if len(said) == 1:
            self._end(said[0])
            return
        # EOF (an exec, or death before the end) or bytes the skill wrote
        # itself: the exit decides. The fd stays open to the end: the run's
        # own report byte, closed, would kill it with SIGPIPE.
        self._loop.remove_reader(self.report_fd)

    def _on_stdin(self) -> None:
        # A skill may never read stdin: the rest of the input then waits for
        # room in the pipe, not the run, and EPIPE at its exit is expected.
        fd = self._stdin
        if fd is None:
            return
        if self._input:
            try:
                sent = os.write(fd, self._input)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._input = memoryview(b"")
            else:
                self._input = self._input[sent:]
        if not self._input:
            self._close_stdin()
        elif not self._writing:
            self._writing = True
            self._loop.add_writer(fd, self._on_stdin)

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            if self._writing:
                self._loop.remove_writer(self._stdin)
                self._writing = False
            os.close(self._stdin)
            self._stdin = None

    def _on_stdout(self) -> None:
        assert self._stdout is not None
        chunk = self._next_chunk(self._stdout)
        if chunk is None:
            return
        room = self.limits.max_stdout - len(self.stdout)
        if len(chunk) > room:
            self.stdout += chunk[:room]
            self.overflow = True
            self.kill_group()
            self._close_output(self._stdout)
            return
        self.stdout += chunk

    def _on_stderr(self) -> None:
        # Keep the *tail* of stderr: the traceback is at the end.
        assert self._stderr is not None
        chunk = self._next_chunk(self._stderr)
        if chunk is None:
            return
        self.stderr += chunk
        limit = self.limits.max_stderr
        if len(self.stderr) > limit:
            del self.stderr[: len(self.stderr) - limit]
            self.stderr_truncated = True

    def _next_chunk(self, fd: int) -> bytes | None:
        """The next chunk from stdout's or stderr's ``fd``; None if nothing is
        there yet, or at its end (or a broken pipe), which closes it."""
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            chunk = b""
        if not chunk:
            self._close_output(fd)
            return None
        return chunk

    def _close_output(self, fd: int) -> None:
        """Stop reading stdout's or stderr's ``fd``, close and forget it;
        resolve ``_drained`` with the last one."""
        self._loop.remove_reader(fd)
        os.close(fd)
        if fd == self._stdout:
            self._stdout = None
        else:
            self._stderr = None
        if self._stdout is None and self._stderr is None and not self._drained.done():
            self._drained.set_result(None)

    def _let_output_go(self) -> None:
        """The pipe grace is over: what descendants still write is not waited for."""
        if not self._drained.done():
            self._drained.set_result(None)

    def _release(self) -> None:
        loop = self._loop
        self._close_stdin()
        for fd in (self._stdout, self._stderr):
            if fd is not None:
                self._close_output(fd)
        for fd in (self._pidfd, self.report_fd):
            if fd is not None:
                loop.remove_reader(fd)
                os.close(fd)
        self._pidfd = self.report_fd = None
        if self._reaped is not None:
            self._reaped.cancel()
