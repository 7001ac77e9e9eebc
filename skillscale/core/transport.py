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
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, cast

import zmq
import zmq.asyncio

from skillscale.core.security import CurveKeys

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


def fabric_endpoint(variable: str, port_variable: str, default: str) -> str:
    """Where to connect: ``variable`` if set, else the port ``skillscale up``
    was given (``port_variable``, on ``SKILLSCALE_HOST``), else ``default``.

    One ``SKILLSCALE_XSUB_PORT`` then moves the fabric and its clients
    together; a wildcard host or port 0 (any free port) cannot name a peer,
    so those fall back to loopback and the default.
    """
    explicit = os.environ.get(variable)
    if explicit:
        return explicit
    port = os.environ.get(port_variable, "").strip()
    if not port.isdigit() or int(port) == 0:
        return default
    host = os.environ.get("SKILLSCALE_HOST", "").strip()
    if host in ("", "*", "0.0.0.0", "::"):  # noqa: S104 (a wildcard is not a peer address)
        host = "127.0.0.1"
    return f"tcp://{host}:{int(port)}"


def proxy_xsub_endpoint() -> str:
    """``SKILLSCALE_PROXY_XSUB``, else ``SKILLSCALE_XSUB_PORT``, else the default."""
    return fabric_endpoint("SKILLSCALE_PROXY_XSUB", "SKILLSCALE_XSUB_PORT", DEFAULT_PROXY_XSUB)


def proxy_xpub_endpoint() -> str:
    """``SKILLSCALE_PROXY_XPUB``, else ``SKILLSCALE_XPUB_PORT``, else the default."""
    return fabric_endpoint("SKILLSCALE_PROXY_XPUB", "SKILLSCALE_XPUB_PORT", DEFAULT_PROXY_XPUB)


def split_endpoints(value: str | Iterable[str]) -> list[str]:
    """``"tcp://a:5444,tcp://b:5444"`` (or a list) -> the endpoints, in order.

    Every endpoint setting accepts a comma-separated list: the proxies of a
    failover pair (``docs/failover.md``). One endpoint is a list of one.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    endpoints = [item.strip() for item in items if item.strip()]
    if not endpoints:
        raise ValueError(f"no endpoint in {value!r}")
    return endpoints


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


_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


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

    # The proxy's per-message loop, by hand rather than recv_/send_multipart:
    # those combine enum flags per frame (``SNDMORE | flags`` builds a new
    # Flag through the enum machinery) and type-check each part, which cost
    # about a fifth of the forwarding time. The frame loop is the same.
    def drain(self, max_batch: int, *, copy: bool = True) -> list[Frames]:
        """Receive up to ``max_batch`` waiting messages without blocking."""
        batch: list[Frames] = []
        recv, more = self.sync.recv, self.sync.getsockopt
        try:
            for _ in range(max_batch):
                parts = [recv(_NOBLOCK, copy=copy)]
                while more(_RCVMORE):  # the rest of a message is there once its first part is
                    parts.append(recv(_NOBLOCK, copy=copy))
                batch.append(parts)
        except zmq.Again:
            pass
        return batch

    def send(self, frames: Frames, *, copy: bool = True) -> None:
        """Send without blocking; raises ``zmq.Again`` only where HWM can push back."""
        # A multipart message is queued whole once its first part is: only
        # that one can raise zmq.Again.
        send = self.sync.send
        for frame in frames[:-1]:
            send(frame, _SNDMORE_NOBLOCK, copy=copy)
        send(frames[-1], _NOBLOCK, copy=copy)

    def subscribe(self, topic: bytes) -> None:
        """Add a topic prefix (SUB sockets)."""
        self.async_sock.setsockopt(zmq.SUBSCRIBE, topic)

    def unsubscribe(self, topic: bytes) -> None:
        """Drop a topic prefix (SUB sockets)."""
        self.async_sock.setsockopt(zmq.UNSUBSCRIBE, topic)

    @property
    def closed(self) -> bool:
        """True once closed."""
        return bool(self.async_sock.closed)

    def move(self, old: str, new: str) -> None:
        """Connect to ``new`` instead of ``old`` (a client failing over).

        Subscriptions stay with the socket and are sent on the new connection.
        """
        if old == new:
            return
        with contextlib.suppress(zmq.ZMQError):  # never connected, or already gone
            self.async_sock.disconnect(old)
        self.async_sock.connect(new)

    def last_endpoint(self) -> str:
        """The endpoint of the last bind or connect, with a real port for ``*``."""
        raw = self.async_sock.getsockopt(zmq.LAST_ENDPOINT)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket (idempotent)."""
        if not self.async_sock.closed:
            self.async_sock.close(linger=linger_ms)


async def await_roundtrip(
    pub: BusSocket,
    sub: BusSocket,
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


# -- the transport seam --------------------------------------------------------
#
# The roles reach the bus through these few methods only, so the same client,
# proxy and server run over ZeroMQ (:class:`ZmqTransport`, the product) or
# in one process over bounded in-memory queues
# (:class:`skillscale.core.memory_bus.MemoryBus`, for tests and embedding).


class BusSocket(Protocol):
    """A publisher or subscriber endpoint of a client or server.

    :class:`SocketPair` is the ZeroMQ one. Sends never block; a subscriber's
    messages are awaited with :meth:`wait_readable` and taken in batches.
    """

    @property
    def closed(self) -> bool:
        """True once closed."""

    async def wait_readable(self, timeout: float | None = None) -> bool:
        """Wait until a message can be received (False after ``timeout`` s)."""

    def drain(self, max_batch: int, *, copy: bool = True) -> list[Frames]:
        """Up to ``max_batch`` waiting messages, without blocking."""

    def send(self, frames: Frames, *, copy: bool = True) -> None:
        """Publish without blocking (a full pipe drops, as PUB does)."""

    def subscribe(self, topic: bytes) -> None:
        """Add a topic prefix."""

    def unsubscribe(self, topic: bytes) -> None:
        """Drop a topic prefix."""

    def close(self, linger_ms: int | None = None) -> None:
        """Close (idempotent)."""


class DealerSocket(Protocol):
    """A replica-group server's line to the proxy's ROUTER."""

    @property
    def closed(self) -> bool:
        """True once closed."""

    async def recv_multipart(self) -> list[bytes]:
        """The next message from the proxy (waits until one comes)."""

    async def send(self, frames: list[bytes], *, timeout: float | None) -> bool:
        """Send; wait up to ``timeout`` s for room (None: not at all). False if it could not go."""

    def close(self) -> None:
        """Close (idempotent)."""


class ProxySocket(Protocol):
    """One of the proxy's three bound endpoints (XSUB, XPUB or ROUTER).

    ``drain`` yields frames with a ``.bytes`` attribute (``zmq.Frame`` with
    ``copy=False``); ``send`` raises ``zmq.Again`` when the peer's pipe is
    full and ``zmq.ZMQError`` when a ROUTER peer is gone.
    """

    def drain(self, max_batch: int, *, copy: bool = True) -> list[Frames]:
        """Up to ``max_batch`` waiting messages, without blocking."""

    def send(self, frames: Frames, *, copy: bool = True) -> None:
        """Send without blocking."""

    def set(self, option: int, value: int | bytes) -> None:
        """A socket option (ignored where it has no meaning)."""


class ProxySockets(Protocol):
    """The proxy's side of the bus: three endpoints and one wait for all of them."""

    @property
    def xsub(self) -> ProxySocket:
        """Where publishers' messages arrive."""

    @property
    def xpub(self) -> ProxySocket:
        """Where subscribers are served and their subscriptions arrive."""

    @property
    def router(self) -> ProxySocket | None:
        """The replica groups' endpoint, if on."""

    @property
    def endpoints(self) -> tuple[str, str, str | None]:
        """Where peers connect: XSUB, XPUB, ROUTER."""

    async def wait(self, timeout: float) -> tuple[bool, bool, bool]:
        """Wait up to ``timeout`` s; which of XSUB, XPUB, ROUTER are readable."""

    def close(self) -> None:
        """Close the endpoints (idempotent)."""


class Transport(Protocol):
    """Makes the endpoints the roles use; see :class:`ZmqTransport`."""

    def publisher(self, endpoint: str, *, hwm: int, linger_ms: int = 0,
                  curve: CurveKeys | None = None) -> BusSocket:  # fmt: skip
        """A publisher connected to the proxy's XSUB side."""

    def subscriber(self, endpoint: str, topics: Iterable[bytes], *, hwm: int,
                   max_message_bytes: int | None = None,
                   curve: CurveKeys | None = None) -> BusSocket:  # fmt: skip
        """A subscriber to ``topics`` connected to the proxy's XPUB side."""

    def dealer(self, endpoint: str, identity: bytes, *, hwm: int, linger_ms: int = 0,
               curve: CurveKeys | None = None) -> DealerSocket:  # fmt: skip
        """A replica-group server's DEALER connected to the proxy's ROUTER."""

    def close(self) -> None:
        """Release the transport (may block up to the sockets' linger)."""


class ZmqDealer:
    """:class:`DealerSocket` over a ``zmq.asyncio`` DEALER.

    All its I/O goes through pyzmq's asyncio API, which re-checks the
    socket's edge-triggered events after every send: workers and the
    heartbeat task send while the receiver awaits.
    """

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock

    @property
    def closed(self) -> bool:
        return bool(self.sock.closed)

    async def recv_multipart(self) -> list[bytes]:
        frames: list[bytes] = await self.sock.recv_multipart()
        return frames

    async def send(self, frames: list[bytes], *, timeout: float | None) -> bool:
        try:
            if timeout is None:
                await self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
            else:
                await asyncio.wait_for(self.sock.send_multipart(frames), timeout)
        except (zmq.Again, asyncio.TimeoutError):
            return False
        return True

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.close()


class ZmqTransport:
    """The product's transport: one ``zmq.asyncio`` context, sockets as before."""

    def __init__(self) -> None:
        self.ctx = zmq.asyncio.Context()

    def publisher(self, endpoint: str, *, hwm: int, linger_ms: int = 0,
                  curve: CurveKeys | None = None) -> SocketPair:  # fmt: skip
        pair = SocketPair(self.ctx, zmq.PUB, linger_ms=linger_ms)
        pair.set(zmq.SNDHWM, hwm)
        if curve is not None:
            curve.apply(pair.async_sock)
        for each in split_endpoints(endpoint):  # a failover pair: both (the passive drops)
            pair.async_sock.connect(each)
        return pair

    def subscriber(self, endpoint: str, topics: Iterable[bytes], *, hwm: int,
                   max_message_bytes: int | None = None,
                   curve: CurveKeys | None = None) -> SocketPair:  # fmt: skip
        pair = SocketPair(self.ctx, zmq.SUB)
        pair.set(zmq.RCVHWM, hwm)
        if max_message_bytes is not None:
            # A message larger than this disconnects us rather than filling memory.
            pair.set(zmq.MAXMSGSIZE, max_message_bytes)
        for topic in topics:
            pair.subscribe(topic)
        if curve is not None:
            curve.apply(pair.async_sock)
        for each in split_endpoints(endpoint):
            pair.async_sock.connect(each)
        return pair

    def dealer(self, endpoint: str, identity: bytes, *, hwm: int, linger_ms: int = 0,
               curve: CurveKeys | None = None) -> ZmqDealer:  # fmt: skip
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, linger_ms)
        sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        if curve is not None:
            curve.apply(sock)
        sock.connect(endpoint)
        return ZmqDealer(sock)

    def close(self) -> None:
        """Terminate the context: blocks until the sockets' linger expires."""
        self.ctx.term()


class ZmqProxySockets:
    """:class:`ProxySockets` over three bound :class:`SocketPair` (the proxy builds them)."""

    def __init__(self, xsub: SocketPair, xpub: SocketPair, router: SocketPair | None) -> None:
        self.xsub: SocketPair = xsub
        self.xpub: SocketPair = xpub
        self.router: SocketPair | None = router
        self.endpoints = (
            connectable(xsub.last_endpoint()),
            connectable(xpub.last_endpoint()),
            connectable(router.last_endpoint()) if router is not None else None,
        )
        self._poller = zmq.asyncio.Poller()
        self._poller.register(xsub.async_sock, zmq.POLLIN)
        self._poller.register(xpub.async_sock, zmq.POLLIN)
        if router is not None:
            self._poller.register(router.async_sock, zmq.POLLIN)

    async def wait(self, timeout: float) -> tuple[bool, bool, bool]:
        """One level-triggered ``zmq_poll`` over all three (see the proxy's loop)."""
        ready = dict(await self._poller.poll(max(0, int(timeout * 1000))))
        router = self.router
        return (
            self.xsub.async_sock in ready,
            self.xpub.async_sock in ready,
            router is not None and router.async_sock in ready,
        )

    def close(self) -> None:
        for pair in (self.xsub, self.xpub, self.router):
            if pair is not None:
                pair.close()


async def pump(sock: BusSocket, handle: Callable[[Frames], None], batch: int = 256) -> None:
    """Hand every message arriving on ``sock`` to ``handle``, in readable batches, forever.

    The one receive loop of a subscriber (a client's replies, a pubsub
    server's requests): sleep until readable, drain without blocking.
    """
    while True:
        await sock.wait_readable()
        for frames in sock.drain(batch):
            handle(frames)
