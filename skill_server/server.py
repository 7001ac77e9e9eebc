"""The skill server role: subscribe to topics, queue, execute, reply.

Life of a server, top to bottom:

1. ``start``: load skills, connect SUB (requests) and PUB (replies) to the
   proxy, start the workers, prove the bus round trip, start receiving.
2. Receiving drains the SUB socket in batches; each message is decoded at
   once, so malformed and excess requests are answered even when every
   worker is busy. Valid requests go into a bounded queue; a full queue
   answers ``overloaded``.
3. ``workers`` tasks take requests from the queue and run them through the
   :class:`RequestHandler`; each request gets exactly one reply.
4. ``stop``: stop taking work (unsubscribe, answer what already arrived
   with ``overloaded``), let queued and running work finish within
   ``grace`` seconds, then cancel what is left, answering each request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import zmq
import zmq.asyncio

from skill_server.executor import SubprocessExecutor
from skill_server.handler import HandlerConfig, Rejection, RequestHandler
from skill_server.matcher import DEFAULT_THRESHOLD
from skill_server.registry import SkillRegistry
from skillscale.errors import ErrorCode
from skillscale.protocol import PROBE_TOPIC_PREFIX, Reply, Request
from skillscale.transport import (
    Frames,
    SocketPair,
    await_roundtrip,
    proxy_xpub_endpoint,
    proxy_xsub_endpoint,
)

log = logging.getLogger(__name__)


def default_workers() -> int:
    """One worker per core, at least two."""
    return max(2, os.cpu_count() or 2)


def new_server_id() -> str:
    """``<host>-<pid>-<4 hex>``: unique per process, readable in traces."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass
class ServerConfig:
    """Skill server settings. Durations are in seconds, sizes in bytes."""

    topics: list[str]
    skills_dirs: list[Path]
    proxy_xsub: str = field(default_factory=proxy_xsub_endpoint)
    proxy_xpub: str = field(default_factory=proxy_xpub_endpoint)
    workers: int = field(default_factory=default_workers)
    queue_size: int = 256
    default_timeout: float = 30.0
    max_request_bytes: int = 8 * 1024 * 1024
    max_output_bytes: int = 4 * 1024 * 1024
    grace: float = 10.0
    ready_timeout: float | None = None
    """How long to wait for the proxy at start; None waits forever."""
    python: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    server_id: str = field(default_factory=new_server_id)
    hwm: int = 10_000


class SkillServer:
    """One skill server; use as ``async with SkillServer(cfg) as server``."""

    def __init__(self, config: ServerConfig) -> None:
        if not config.topics:
            raise ValueError("a skill server needs at least one topic")
        if config.workers < 1 or config.queue_size < 1:
            raise ValueError("workers and queue_size must be at least 1")
        self.config = config
        self.registry = SkillRegistry(config.skills_dirs, config.threshold)
        self.handler = RequestHandler(
            self.registry,
            SubprocessExecutor(config.python),
            HandlerConfig(
                server_id=config.server_id,
                topics=frozenset(config.topics),
                default_timeout=config.default_timeout,
                max_request_bytes=config.max_request_bytes,
                max_output_bytes=config.max_output_bytes,
            ),
        )
        self._topics = {t.encode() for t in config.topics}
        self._probe = f"{PROBE_TOPIC_PREFIX}{config.server_id}".encode()
        # Capacity counts running and waiting requests together, so a burst
        # that lands in one receive batch (before any worker has woken) still
        # fills every worker and then the queue.
        self._capacity = config.workers + config.queue_size
        self._in_flight = 0
        self._queue: asyncio.Queue[tuple[Request, float]] = asyncio.Queue(self._capacity)
        self._ctx: zmq.asyncio.Context | None = None
        self._sub: SocketPair | None = None
        self._pub: SocketPair | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._accepting = False
        self.stats = {"received": 0, "replied": 0, "rejected": 0, "ignored": 0, "unanswerable": 0}

    async def __aenter__(self) -> SkillServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load skills, connect, prove the bus path, start serving."""
        cfg = self.config
        self.registry.reload()
        log.info(
            "server %s: topics %s, skills %s",
            cfg.server_id,
            ", ".join(cfg.topics),
            ", ".join(self.registry.names) or "(none)",
        )
        self._ctx = zmq.asyncio.Context()
        self._sub = SocketPair(self._ctx, zmq.SUB)
        self._pub = SocketPair(self._ctx, zmq.PUB, linger_ms=1000)
        self._sub.set(zmq.RCVHWM, cfg.hwm)
        self._pub.set(zmq.SNDHWM, cfg.hwm)
        self._sub.async_sock.connect(cfg.proxy_xpub)
        self._pub.async_sock.connect(cfg.proxy_xsub)
        for topic in sorted(self._topics):
            self._sub.set(zmq.SUBSCRIBE, topic)
        self._sub.set(zmq.SUBSCRIBE, self._probe)
        self._accepting = True
        self._workers = [
            asyncio.create_task(self._work(), name=f"worker-{i}") for i in range(cfg.workers)
        ]
        try:
            # Requests that arrive during the handshake are served, not lost.
            await await_roundtrip(
                self._pub,
                self._sub,
                self._probe,
                timeout=cfg.ready_timeout,
                on_other=self._dispatch,
                what=f"proxy at {cfg.proxy_xpub}",
            )
        except BaseException:
            await self.stop(grace=0)
            raise
        self._sub.set(zmq.UNSUBSCRIBE, self._probe)
        self._receiver = asyncio.create_task(self._receive(), name="receiver")

    async def stop(self, grace: float | None = None) -> None:
        """Two-phase stop: refuse new work, drain for ``grace`` s, cancel the rest."""
        grace = self.config.grace if grace is None else grace
        self._accepting = False
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
            self._receiver = None
        if self._sub is not None and not self._sub.async_sock.closed:
            for topic in self._topics:
                self._sub.set(zmq.UNSUBSCRIBE, topic)
            for frames in self._sub.drain(10_000):
                self._dispatch(frames)  # answered "overloaded": we are stopping
            self._sub.close()
        if self._workers:
            try:
                await asyncio.wait_for(self._queue.join(), timeout=grace)
            except asyncio.TimeoutError:
                log.warning("grace period of %.1f s over; cancelling unfinished work", grace)
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        while not self._queue.empty():
            request, _ = self._queue.get_nowait()
            self._in_flight -= 1
            self._queue.task_done()
            self._reply_error(request, ErrorCode.OVERLOADED, "the server stopped before running it")
        if self._pub is not None:
            self._pub.close()
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            await asyncio.get_running_loop().run_in_executor(None, ctx.term)

    @property
    def in_flight(self) -> int:
        """Requests queued or running."""
        return self._in_flight

    async def _receive(self) -> None:
        assert self._sub is not None
        sub = self._sub
        while True:
            await sub.wait_readable()
            for frames in sub.drain(256):
                self._dispatch(frames)

    def _dispatch(self, frames: Frames) -> None:
        topic = bytes(frames[0])
        if topic not in self._topics:
            # ZeroMQ matches prefixes: TOPIC_ECHO also hears TOPIC_ECHO_V2.
            self.stats["ignored"] += 1
            return
        self.stats["received"] += 1
        received_at = time.monotonic()
        if len(frames) != 2:
            decoded: Request | Rejection = self.handler.reject(
                b"\n".join(bytes(f) for f in frames[1:]),
                ErrorCode.BAD_REQUEST,
                f"a request is 2 frames [topic, json]; got {len(frames)}",
            )
        else:
            decoded = self.handler.decode(bytes(frames[1]))
        if isinstance(decoded, Rejection):
            self.stats["rejected"] += 1
            if decoded.reply_to is None:
                self.stats["unanswerable"] += 1
                log.warning("unanswerable request on %s: %s", topic, decoded.reply.error)
            else:
                self._send(decoded.reply_to, decoded.reply)
            return
        if not self._accepting:
            self._reply_error(decoded, ErrorCode.OVERLOADED, "the server is stopping; retry")
            return
        if self._in_flight >= self._capacity:
            self._reply_error(
                decoded,
                ErrorCode.OVERLOADED,
                f"server {self.config.server_id} is running {self.config.workers} and holding "
                f"{self.config.queue_size} more requests; retry later",
            )
            return
        self._in_flight += 1
        self._queue.put_nowait((decoded, received_at))

    async def _work(self) -> None:
        while True:
            request, received_at = await self._queue.get()
            try:
                reply = await self.handler.process(request, received_at)
            except asyncio.CancelledError:
                self._reply_error(
                    request, ErrorCode.OVERLOADED, "the server stopped while running it"
                )
                raise
            finally:
                self._in_flight -= 1
                self._queue.task_done()
            self._send(request.reply_to, reply)

    def _reply_error(self, request: Request, code: ErrorCode, message: str) -> None:
        self._send(
            request.reply_to,
            Reply.failure(request.request_id, code, message, server_id=self.config.server_id),
        )

    def _send(self, reply_to: str, reply: Reply) -> None:
        if self._pub is None or self._pub.async_sock.closed:
            log.error("cannot send reply %s: socket closed", reply.request_id)
            return
        self._pub.send([reply_to.encode(), reply.to_bytes()])
        self.stats["replied"] += 1


async def run_server(
    config: ServerConfig,
    stop: asyncio.Event,
    on_ready: Callable[[SkillServer], None] | None = None,
) -> None:
    """Run a server until ``stop`` is set, then stop it gracefully."""
    server = SkillServer(config)
    await server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
    finally:
        await server.stop()
