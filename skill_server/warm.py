"""The warm executor: Python skills forked from a pre-imported fork server.

Each request still gets its own process (fresh fork, own session and process
group, own pipes, working directory, environment, rlimits and timeout), but
not a fresh interpreter: start-up and the imports skills share (the standard
library, ``httpx``, ``openai``, ...) were paid once by the fork server. Skill
files are read on every run, so edits take effect on the next request.

``run.sh`` entry points, skills whose ``metadata.warm`` is ``false``, and any
run while the fork server is (re)starting take the cold path.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence

from skill_server.executor import (
    ChildProcess,
    ExecutionLimits,
    SubprocessExecutor,
    rlimit_pairs,
)
from skillscale.skill_format import Skill

log = logging.getLogger(__name__)

DEFAULT_PRELOAD = (
    "argparse", "ast", "base64", "collections", "csv", "dataclasses", "datetime",
    "decimal", "functools", "hashlib", "io", "itertools", "json", "logging", "math",
    "pathlib", "random", "re", "statistics", "string", "subprocess", "tempfile",
    "textwrap", "time", "typing", "urllib.parse", "uuid",
    "skillscale.skillkit",
)  # fmt: skip
OPTIONAL_PRELOAD = ("httpx", "openai")
"""Preloaded when installed: the expensive imports LLM-calling skills make."""
READY_TIMEOUT = 60.0


def default_preload() -> list[str]:
    """The standard set plus the optional modules that are installed."""
    optional = [m for m in OPTIONAL_PRELOAD if importlib.util.find_spec(m) is not None]
    return [*DEFAULT_PRELOAD, *optional]


class ForkServerUnavailable(Exception):
    """The fork server is not running (starting, or it died)."""


class WarmProcess:
    """A child of the fork server, seen through the :class:`ChildProcess` interface."""

    def __init__(
        self,
        pid: int,
        status: asyncio.StreamReader,
        control: asyncio.StreamWriter,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
    ) -> None:
        self.pid = pid
        self.stdin: asyncio.StreamWriter | None = stdin
        self.stdout: asyncio.StreamReader | None = stdout
        self.stderr: asyncio.StreamReader | None = stderr
        self._status = status
        self._control = control
        self._returncode: int | None = None
        # Started at once so the connection is always read to its end and
        # closed, whatever happens to the run; the executor keeps a reference.
        self.waiter: asyncio.Task[int] = asyncio.ensure_future(self._read_status())

    @property
    def returncode(self) -> int | None:
        """The exit status once known; ``-N`` for death by signal N."""
        return self._returncode

    async def wait(self) -> int:
        """The exit status, as the fork server reaped it."""
        return await asyncio.shield(self.waiter)

    async def _read_status(self) -> int:
        try:
            line = await self._status.readline()
            code = int(json.loads(line)["status"]) if line else -9
        except (ValueError, KeyError):
            code = -9  # the fork server died: its children died with it
        finally:
            self._control.close()
        self._returncode = code
        return code


async def _pipe_reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader


async def _pipe_writer(fd: int) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", buffering=0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


class WarmExecutor(SubprocessExecutor):
    """Runs ``scripts/run.py`` by forking the fork server; everything else cold."""

    def __init__(self, python: str | None = None, preload: Sequence[str] | None = None) -> None:
        super().__init__(python)
        self.preload = list(preload) if preload is not None else default_preload()
        self._dir: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._restarting: asyncio.Task[None] | None = None
        self.stats = {"warm": 0, "cold": 0, "restarts": 0}
        self._waiters: set[asyncio.Task[int]] = set()

    @property
    def socket_path(self) -> str:
        """Where the fork server listens."""
        assert self._dir is not None
        return os.path.join(self._dir, "fork.sock")

    @property
    def running(self) -> bool:
        """True while the fork server process is alive."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Start the fork server and wait until its imports are done."""
        async with self._lock:
            await self._start_locked()

    async def _start_locked(self) -> None:
        if self.running:
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="skillscale-fork-")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "skill_server.forkserver", self.socket_path, *self.preload,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), READY_TIMEOUT)
            ready = json.loads(line)
        except (asyncio.TimeoutError, ValueError):
            self._proc.kill()
            await self._proc.wait()
            raise ForkServerUnavailable("the fork server did not start") from None
        if ready.get("missing"):
            log.info("fork server could not preload: %s", ", ".join(ready["missing"]))
        log.info("fork server %d up with %d modules preloaded", ready["pid"], len(self.preload))

    async def close(self) -> None:
        """Stop the fork server (its running children die with it)."""
        if self._restarting is not None:
            self._restarting.cancel()
            await asyncio.gather(self._restarting, return_exceptions=True)
        for waiter in list(self._waiters):
            waiter.cancel()
        await asyncio.gather(*self._waiters, return_exceptions=True)
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def is_warm(self, skill: Skill) -> bool:
        """Python entry point and not opted out (``metadata.warm: false``)."""
        return (
            skill.entrypoint is not None
            and skill.entrypoint.suffix == ".py"
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
        try:
            await self.start()
        except ForkServerUnavailable:
            log.exception("could not restart the fork server")

    async def _fork(
        self, skill: Skill, env: dict[str, str], limits: ExecutionLimits
    ) -> WarmProcess:
        if not self.running:
            raise ForkServerUnavailable("the fork server is not running")
        assert skill.entrypoint is not None
        header = {
            "script": str(skill.entrypoint),
            "cwd": str(skill.path),
            "env": env,
            "rlimits": rlimit_pairs(limits.resources),
        }
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        child_ends = [stdin_r, stdout_w, stderr_w]
        ours = [stdin_w, stdout_r, stderr_r]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, self.socket_path)
            # The header is small and the socket freshly connected: one send.
            socket.send_fds(sock, [json.dumps(header).encode()], child_ends)
        except OSError as exc:
            sock.close()
            for fd in child_ends + ours:
                os.close(fd)
            raise ForkServerUnavailable(f"cannot reach the fork server: {exc}") from None
        for fd in child_ends:
            os.close(fd)
        status, control = await asyncio.open_unix_connection(sock=sock)
        try:
            line = await asyncio.wait_for(status.readline(), 10)
            pid = int(json.loads(line)["pid"])
        except (asyncio.TimeoutError, ValueError, KeyError):
            control.close()
            for fd in ours:
                os.close(fd)
            raise ForkServerUnavailable("the fork server did not answer") from None
        child = WarmProcess(
            pid,
            status,
            control,
            stdin=await _pipe_writer(stdin_w),
            stdout=await _pipe_reader(stdout_r),
            stderr=await _pipe_reader(stderr_r),
        )
        self._waiters.add(child.waiter)
        child.waiter.add_done_callback(self._waiters.discard)
        return child
