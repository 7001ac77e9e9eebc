"""Running a skill's entry point as an isolated child process.

Each run gets an argument vector (never a shell command line), its input on
stdin, the skill folder as its working directory, a scrubbed environment, a
new session (so the timeout can kill the whole process group, grandchildren
included), and bounded stdout/stderr. A skill that writes past the output
bound is killed at once rather than buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from skillscale.skill_format import Skill

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
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _LIBC = None


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


def _child_setup(limits: ResourceLimits) -> Callable[[], None]:
    """Runs in the child between fork and exec: limits, and death with the server."""
    chosen = rlimit_pairs(limits)

    def setup() -> None:
        if _LIBC is not None and sys.platform.startswith("linux"):
            # A SIGKILLed server cannot kill its skills: let the kernel do it.
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        for kind, value in chosen:
            resource.setrlimit(kind, (value, value))

    return setup


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

    def argv(self, entrypoint: Path) -> list[str]:
        """The argument vector for an entry point."""
        if entrypoint.suffix == ".py":
            return [self.python, str(entrypoint)]
        return [self.bash, str(entrypoint)]

    async def run(
        self,
        skill: Skill,
        data: bytes,
        limits: ExecutionLimits,
        env: Mapping[str, str] | None = None,
    ) -> ExecutionResult:
        """Run ``skill`` on ``data``; never raises for anything the skill does."""
        assert skill.entrypoint is not None, "instruction-only skills are not executed"
        started = time.monotonic()
        try:
            run_env = scrubbed_env(self.python, self.skill_env(skill, data, env))
            proc = await self.spawn(skill, run_env, limits)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return ExecutionResult(None, b"", b"", _ms(started), start_error=str(exc))
        return await _Run(proc, limits, started).complete(data)

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

    async def spawn(
        self, skill: Skill, env: dict[str, str], limits: ExecutionLimits
    ) -> ChildProcess:
        """Start the entry point as a fresh interpreter (the cold path)."""
        assert skill.entrypoint is not None
        return await asyncio.create_subprocess_exec(
            *self.argv(skill.entrypoint),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(skill.path),
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup(limits.resources),
        )

    async def close(self) -> None:
        """Release what the executor holds (nothing, for the cold path)."""


class ChildProcess(Protocol):
    """What a run needs of a child: its pid (= process group), pipes and exit."""

    pid: int
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


class _Run:
    """The bookkeeping of one child: its pipes, limits and process group."""

    def __init__(self, proc: ChildProcess, limits: ExecutionLimits, started: float):
        self.proc = proc
        self.limits = limits
        self.started = started
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.overflow = False
        self.stderr_truncated = False

    def kill_group(self) -> None:
        # The child is a session leader, so its pid is the group id; killing
        # the group takes grandchildren with it (the reference killed only
        # the shell and left orphans running).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def complete(self, data: bytes) -> ExecutionResult:
        proc = self.proc
        assert proc.stdin and proc.stdout and proc.stderr
        tasks = [
            asyncio.create_task(self._feed(proc.stdin, data)),
            asyncio.create_task(self._read_stdout(proc.stdout)),
            asyncio.create_task(self._read_stderr(proc.stderr)),
        ]
        timed_out = False
        try:
            try:
                await asyncio.wait_for(self._exited(), timeout=self.limits.timeout)
            except asyncio.TimeoutError:
                timed_out = not self.overflow
            # The skill is gone or out of time; descendants still holding our
            # pipes would keep them open forever, so the whole group goes.
            self.kill_group()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=self.limits.pipe_grace)
            _done, pending = await asyncio.wait(tasks, timeout=self.limits.pipe_grace)
            for task in pending:
                task.cancel()
        finally:
            # Cancelled (server stopping) or not: no process and no task outlives the run.
            self.kill_group()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ExecutionResult(
            exit_code=proc.returncode,
            stdout=bytes(self.stdout),
            stderr=bytes(self.stderr),
            elapsed_ms=_ms(self.started),
            timed_out=timed_out,
            stdout_overflow=self.overflow,
            stderr_truncated=self.stderr_truncated,
        )

    async def _exited(self) -> None:
        """Return when the child exits, whoever still holds its pipes.

        On Python < 3.12 ``Process.wait()`` also waits for every pipe to
        close, so a skill that leaves a background grandchild behind would
        look like a hang. A pidfd becomes readable at exit itself.
        """
        try:
            pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            await self.proc.wait()  # no pidfd (old kernel) or already reaped
            return
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    @staticmethod
    async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
        # A skill may never read stdin; a full pipe then blocks this writer,
        # not the run, and the error when the child exits is expected.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if data:
                stdin.write(data)
                await stdin.drain()
            stdin.close()
            await stdin.wait_closed()

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        limit = self.limits.max_stdout
        while chunk := await stream.read(READ_CHUNK):
            room = limit - len(self.stdout)
            if len(chunk) > room:
                self.stdout += chunk[:room]
                self.overflow = True
                self.kill_group()
                return
            self.stdout += chunk

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        # Keep the *tail* of stderr: the traceback is at the end.
        limit = self.limits.max_stderr
        while chunk := await stream.read(READ_CHUNK):
            self.stderr += chunk
            if len(self.stderr) > limit:
                del self.stderr[: len(self.stderr) - limit]
                self.stderr_truncated = True
