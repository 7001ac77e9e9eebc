"""ZeroMQ plumbing shared by the proxy, the servers and the client.

Readiness is awaited through ``zmq.asyncio`` (so the event loop sleeps until
the socket's FD fires), but messages are then drained through a *synchronous
shadow* of the same socket with ``NOBLOCK``. pyzmq's asyncio ``recv`` builds
a future per message, which caps an asyncio proxy near ~36 k msg/s on our
machines; draining a readable socket in one synchronous batch is ~3x faster
and keeps the event loop responsive by bounding the batch size.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

DEFAULT_PROXY_XSUB = "tcp://127.0.0.1:5444"
"""Where publishers (clients, servers) connect to reach the proxy."""
DEFAULT_PROXY_XPUB = "tcp://127.0.0.1:5555"
"""Where subscribers (clients, servers) connect to hear from the proxy."""

Frames = list[Any]


def env_str(name: str, default: str) -> str:
    """An environment override for a string setting."""
    value = os.environ.get(name)
    return value if value else default


def proxy_xsub_endpoint() -> str:
    """``SKILLSCALE_PROXY_XSUB`` or the default."""
    return env_str("SKILLSCALE_PROXY_XSUB", DEFAULT_PROXY_XSUB)


def proxy_xpub_endpoint() -> str:
    """``SKILLSCALE_PROXY_XPUB`` or the default."""
    return env_str("SKILLSCALE_PROXY_XPUB", DEFAULT_PROXY_XPUB)


def bind_endpoint(endpoint: str) -> str:
    """Accept ``tcp://host:0`` as "any free port" (ZeroMQ spells it ``*``)."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        return endpoint[:-1] + "*"
    return endpoint


def connectable(endpoint: str) -> str:
    """Turn a bound ``tcp://0.0.0.0:N`` / ``tcp://*:N`` into one a peer can dial."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard) :]
    return endpoint


class SocketPair:
    """An asyncio socket for readiness plus its synchronous shadow for I/O."""

    def __init__(self, ctx: zmq.asyncio.Context, kind: int, *, linger_ms: int = 0) -> None:
        self.async_sock: zmq.asyncio.Socket = ctx.socket(kind)
        self.async_sock.setsockopt(zmq.LINGER, linger_ms)
        self.sync: zmq.Socket[Any] = zmq.Socket.shadow(self.async_sock.underlying)

    def set(self, option: int, value: int | bytes) -> None:
        """Set a socket option (before bind/connect for most options)."""
        self.async_sock.setsockopt(option, value)

    async def wait_readable(self, timeout: float | None = None) -> bool:
        """Wait until a message can be received (or ``timeout`` seconds pass)."""
        timeout_ms = None if timeout is None else max(0, int(timeout * 1000))
        # pyzmq's annotations give Socket.poll the Poller's signature.
        events: int = await cast(Any, self.async_sock).poll(timeout_ms, zmq.POLLIN)
        return bool(events & zmq.POLLIN)

    def drain(self, max_batch: int, *, copy: bool = True) -> list[Frames]:
        """Receive up to ``max_batch`` waiting messages without blocking."""
        batch: list[Frames] = []
        recv = self.sync.recv_multipart
        try:
            for _ in range(max_batch):
                batch.append(recv(zmq.NOBLOCK, copy=copy))
        except zmq.Again:
            pass
        return batch

    def send(self, frames: Frames, *, copy: bool = True) -> None:
        """Send without blocking; raises ``zmq.Again`` only where HWM can push back."""
        self.sync.send_multipart(frames, zmq.NOBLOCK, copy=copy)

    def last_endpoint(self) -> str:
        """The endpoint of the last bind or connect, with a real port for ``*``."""
        raw = self.async_sock.getsockopt(zmq.LAST_ENDPOINT)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket (idempotent)."""
        if not self.async_sock.closed:
            self.async_sock.close(linger=linger_ms)


async def await_roundtrip(
    pub: SocketPair,
    sub: SocketPair,
    probe_topic: bytes,
    *,
    timeout: float | None,
    on_other: Callable[[Frames], Awaitable[None] | None] | None = None,
    what: str = "proxy",
) -> float:
    """Prove the bus path is live by publishing probes until one comes back.

    The caller must already be subscribed (on ``sub``) to a prefix of
    ``probe_topic``. A probe that returns shows that our subscription reached
    the proxy *and* that the proxy's subscription reached our publisher: the
    two halves of ZeroMQ's "slow joiner" window. Returns the seconds it took;
    raises ``TimeoutError`` after ``timeout`` seconds (None waits forever,
    logging every few seconds).
    """
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    interval = 0.005
    next_log = start + 5.0
    while True:
        pub.send([probe_topic, b"probe"])
        remaining = interval if deadline is None else min(interval, deadline - time.monotonic())
        if remaining <= 0:
            raise TimeoutError(f"no round trip through the {what} within {timeout} s")
        wait_until = time.monotonic() + remaining
        while (left := wait_until - time.monotonic()) > 0:
            if not await sub.wait_readable(left):
                break
            for frames in sub.drain(256):
                if bytes(frames[0]) == probe_topic:
                    return time.monotonic() - start
                if on_other is not None:
                    result = on_other(frames)
                    if asyncio.iscoroutine(result):
                        await result
        interval = min(interval * 2, 0.25)
        now = time.monotonic()
        if now >= next_log:
            log.warning("still waiting for the %s (%.0f s)", what, now - start)
            next_log = now + 5.0
