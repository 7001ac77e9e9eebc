"""Process plumbing for the command-line roles: loop, signals, logging."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from typing_extensions import Self

T = TypeVar("T")


class RepeatLimiter(logging.Filter):
    """Let through at most ``burst`` records per message per ``window`` seconds.

    Warnings and tracebacks caused by peers' input repeat once per bad
    message; without a limit one hostile peer floods the log (and the disk).
    Records below WARNING pass untouched. The first record let through after
    a quiet spell says how many were suppressed.
    """

    def __init__(self, burst: int = 5, window: float = 60.0, max_keys: int = 1024) -> None:
        super().__init__()
        self.burst, self.window, self.max_keys = burst, window, max_keys
        self._seen: dict[tuple[str, str], list[float]] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self.max_keys:
                self._seen.clear()  # bounded: forget old keys rather than grow
            seen = self._seen[key] = []
        seen[:] = [t for t in seen if now - t < self.window]
        if len(seen) >= self.burst:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        seen.append(now)
        dropped = self._suppressed.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar messages suppressed]"
        return True


def setup_logging(default: str = "INFO") -> None:
    """Log to stderr at ``SKILLSCALE_LOG_LEVEL`` (default ``default``), rate-limited."""
    level = os.environ.get("SKILLSCALE_LOG_LEVEL", default).upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatLimiter) for f in handler.filters):
            handler.addFilter(RepeatLimiter())


def safe(value: object, limit: int = 200) -> str:
    """An untrusted value for a log line: escaped (no newline can forge a line), cut."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    escaped = text[:limit].encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(text) > limit else "")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw`` for at most ``timeout`` s (``None``: no limit), else ``TimeoutError``.

    Use this, not ``asyncio.wait_for``: on 3.11 ``wait_for`` swallows a
    cancellation that lands in the same loop step as its inner awaitable
    completes, returning the result instead. A loop task cancelled that way
    goes on to its next wait and never ends, so its owner's shutdown hangs
    (the distiller's judge did, about one stop in twenty under load).
    ``asyncio.timeout`` counts cancellations and keeps ours.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await aw
    return await asyncio.wait_for(aw, timeout)  # pragma: no cover - 3.10 has no asyncio.timeout


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on uvloop when installed (``SKILLSCALE_NO_UVLOOP=1`` opts out).

    ``kill -USR1 <pid>`` prints every thread's Python stack to stderr: how to
    see where a role that is alive but not answering is stuck.
    """
    with contextlib.suppress(AttributeError, ValueError, RuntimeError):
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    if not os.environ.get("SKILLSCALE_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            result: T = uvloop.run(main())
            return result
    return asyncio.run(main())


def install_stop_signals(stop: asyncio.Event, on_force: Callable[[], None] | None = None) -> None:
    """SIGINT/SIGTERM set ``stop`` (a graceful stop); a second one stops *now*.

    On the second signal ``on_force`` runs (to kill what the process started
    in sessions of its own) and the process exits at once with 128 + the
    signal number, as a shell reports a death by that signal.
    """
    loop = asyncio.get_running_loop()
    log = logging.getLogger("skillscale")

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: stopping now, without the grace period", name)
            try:
                if on_force is not None:
                    on_force()
            finally:
                logging.shutdown()
                os._exit(128 + signum)
        stop.set()
        log.info("received %s; stopping (send it again to stop at once)", name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


class AsyncRole:
    """A role object that owns its sockets and tasks: ``async with`` starts and stops it.

    Supervision: every long-running task a role starts goes through
    :meth:`supervise`. A supervised task that ends with an exception, or
    ends at all while the role is not stopping, marks the role *crashed*:
    the role must then stop advertising capacity, and its runner exits
    non-zero so that its own supervisor (``skillscale up``, Kubernetes)
    restarts it. Nothing keeps running around a dead component.
    """

    _crash_reason: str | None = None
    _crash_event: asyncio.Event | None = None
    _role_stopping = False

    @property
    def crashed(self) -> asyncio.Event:
        """Set once a supervised task died."""
        if self._crash_event is None:
            self._crash_event = asyncio.Event()
        return self._crash_event

    @property
    def crash_reason(self) -> str | None:
        """Why the role crashed, if it did."""
        return self._crash_reason

    def supervise(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """Watch ``task``: its unexpected end crashes the role. Returns it."""
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None and self._role_stopping:
            return
        reason = f"task {task.get_name()} " + (
            f"died: {type(exc).__name__}: {exc}" if exc else "ended unexpectedly"
        )
        log = logging.getLogger("skillscale")
        log.critical("%s; the role stops and must be restarted", reason, exc_info=exc)
        if self._crash_reason is None:
            self._crash_reason = reason
        self.crashed.set()
        self.on_crash()

    def on_crash(self) -> None:
        """Hook: stop advertising capacity at once (called in the loop)."""

    async def start(self) -> None:
        """Acquire sockets, start tasks; ready to serve on return."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop taking work, drain within a grace period, release everything."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._role_stopping = False
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._role_stopping = True
        await self.stop()


async def serve_until(stop: asyncio.Event, *roles: AsyncRole) -> int:
    """Wait for ``stop`` or for any role to crash; the process exit status to use."""
    waits = [asyncio.ensure_future(stop.wait())]
    waits += [asyncio.ensure_future(role.crashed.wait()) for role in roles]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return 1 if any(role.crashed.is_set() for role in roles) else 0


async def fd_ready(fd: Any, *, write: bool = False) -> None:
    """Wait, without polling, until ``fd`` (a file descriptor or socket) is
    readable (or writable); one event, then the watch is removed."""
    await first_ready(fd, write=write)


async def first_ready(*fds: Any, write: bool = False) -> Any:
    """Wait, without polling, until one of ``fds`` is readable (or writable);
    returns that one. One event, then every watch is removed."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Any] = loop.create_future()

    def on_event(fd: Any) -> None:
        if not ready.done():
            ready.set_result(fd)

    add, remove = (loop.add_writer, loop.remove_writer) if write else (
        loop.add_reader, loop.remove_reader,
    )  # fmt: skip
    for fd in fds:
        add(fd, on_event, fd)
    try:
        return await ready
    finally:
        for fd in fds:
            remove(fd)
