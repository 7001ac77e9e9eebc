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
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Readiness:
    """Waits for a ZeroMQ socket's events on its FD, without pyzmq's asyncio layer.

    pyzmq's ``zmq.asyncio`` builds futures, timers and reader registrations
    per receive or poll, which cost more than the message itself on the
    bus's hot paths. Here the socket's FD is registered with the event loop
    once, and a wait is one future.

    The FD is edge-triggered in spirit: it signals that the socket's state
    *may* have changed, and any operation on the socket (a send included)
    may consume that signal. So every wait first reads ``ZMQ_EVENTS`` (the
    level), and :meth:`kick` re-checks the level for the waiters after an
    operation done while they wait (a worker's send on the DEALER the
    receiver sleeps on). The loop's callback reads ``ZMQ_EVENTS`` too, which
    clears the FD, so a registered FD never spins the loop.
    """

    __slots__ = ("_fd", "_loop", "_sync", "_waiters")

    def __init__(self, sync: zmq.Socket[Any]) -> None:
        self._sync = sync
        self._fd = cast(int, sync.getsockopt(zmq.FD))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[tuple[asyncio.Future[None], int]] = []

    def events(self) -> int:
        """The socket's ``ZMQ_EVENTS`` now (``POLLIN`` / ``POLLOUT`` bits)."""
        return cast(int, self._sync.getsockopt(_EVENTS))

    def add(self, waiter: asyncio.Future[None], mask: int) -> tuple[asyncio.Future[None], int]:
        """Resolve ``waiter`` once any of ``mask`` is set; returns the entry for :meth:`remove`."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.detach()
            # A signal that came after the caller's level check keeps the FD
            # readable, and the loop's level-triggered watch reports it.
            loop.add_reader(self._fd, self.kick)
            self._loop = loop
        entry = (waiter, mask)
        self._waiters.append(entry)
        return entry

    def remove(self, entry: tuple[asyncio.Future[None], int]) -> None:
        """Forget a waiter added by :meth:`add` (done or not)."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)

    async def wait(self, mask: int, timeout: float | None = None) -> bool:
        """Until any of ``mask`` is set; False after ``timeout`` seconds (None: no limit)."""
        if self.events() & mask:
            return True
        if timeout is not None and timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = self.add(waiter, mask)
        timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            self.remove(entry)
            if timer is not None:
                timer.cancel()
        return bool(self.events() & mask)

    def kick(self) -> None:
        """Wake the waiters whose events are set (the FD fired, or we used the socket)."""
        if not self._waiters:
            if self._loop is not None:
                self.events()  # clears the FD's signal, so the loop does not call again
            return
        try:
            events = self.events()
        except zmq.ZMQError:  # closed under a waiter: wake it, its next call says so
            events = -1
        for waiter, mask in self._waiters:
            if events & mask and not waiter.done():
                waiter.set_result(None)

    def touched(self) -> None:
        """After a send or receive: wake a waiter that this may have left asleep."""
        if self._waiters:
            self.kick()

    def detach(self) -> None:
        """Stop watching the FD (before the socket closes: its number may be reused)."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)
        for waiter, _ in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


async def wait_any(sockets: Iterable[Readiness], mask: int, timeout: float) -> None:
    """Until any of ``sockets`` has any of ``mask`` set, at most ``timeout`` seconds.

    The caller checks the levels first (and again after)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    entries = [(each, each.add(waiter, mask)) for each in sockets]
    timer = loop.call_later(max(timeout, 0.0), _resolve, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
        for each, entry in entries:
            each.remove(entry)


class SocketPair:
    """An asyncio socket for readiness plus its synchronous shadow for I/O."""

    def __init__(self, ctx: zmq.asyncio.Context, kind: int, *, linger_ms: int = 0) -> None:
        self.async_sock: zmq.asyncio.Socket = ctx.socket(kind)
        self.async_sock.setsockopt(zmq.LINGER, linger_ms)
        self.sync: zmq.Socket[Any] = zmq.Socket.shadow(self.async_sock.underlying)
        self.ready = Readiness(self.sync)
        # The backend's send, without the Python wrapper's routing_id/group
        # checks (we use neither): a 2-frame send took ~1.0 µs against ~2.7-3.3.
        self._send = super(zmq.Socket, self.sync).send

    def set(self, option: int, value: int | bytes) -> None:
        """Set a socket option (before bind/connect for most options)."""
        self.async_sock.setsockopt(option, value)

    async def wait_readable(self, timeout: float | None = None) -> bool:
        """Wait until a message can be received (or ``timeout`` seconds pass)."""
        return await self.ready.wait(_POLLIN, timeout)

    # The proxy's per-message loop, by hand rather than recv_/send_multipart:
    # those combine enum flags per frame (``SNDMORE | flags`` builds a new
    # Flag through the enum machinery) and type-check each part, which cost
    # about a fifth of the forwarding time. The frame loop is the same.
    def drain(self, max_batch: int, *, copy: bool = True) -> list[Frames]:
        """Receive up to ``max_batch`` waiting messages without blocking."""
        batch: list[Frames] = []
        recv, more = self.sync.recv, self.sync.getsockopt
        try:
            if copy:
                for _ in range(max_batch):
                    parts: Frames = [recv(_NOBLOCK)]
                    while more(_RCVMORE):  # the rest of a message is there once its first part is
                        parts.append(recv(_NOBLOCK))
                    batch.append(parts)
            else:
                # A frame knows whether more follow: no getsockopt per frame
                # (about 1 µs each, a third of a 7-frame message's receive).
                for _ in range(max_batch):
                    frame = recv(_NOBLOCK, copy=False)
                    frames: Frames = [frame]
                    while frame.more:
                        frame = recv(_NOBLOCK, copy=False)
                        frames.append(frame)
                    batch.append(frames)
        except zmq.Again:
            pass
        self.ready.touched()
        return batch

    def send(self, frames: Frames, *, copy: bool = True) -> None:
        """Send without blocking; raises ``zmq.Again`` only where HWM can push back."""
        # A multipart message is queued whole once its first part is: only
        # that one can raise zmq.Again.
        send = self._send
        for frame in frames[:-1]:
            send(frame, _SNDMORE_NOBLOCK, copy)
        send(frames[-1], _NOBLOCK, copy)
        self.ready.touched()

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
            self.ready.detach()
            self.async_sock.close(linger=linger_ms)


class PublisherPair(SocketPair):
    """A PUB socket whose sends of one event-loop turn leave together, in order.

    A PUB send never blocks and never fails (a full pipe drops), so nothing
    is lost by sending at the end of the turn instead of at once: the
    requests that a batch of replies lets a client's callers send, or the
    trace events of a server's burst, then go back to back, waking ZeroMQ's
    I/O thread once instead of once each.
    """

    def __init__(self, ctx: zmq.asyncio.Context, *, linger_ms: int = 0) -> None:
        super().__init__(ctx, zmq.PUB, linger_ms=linger_ms)
        self._outbox: list[tuple[Frames, bool]] = []

    def send(self, frames: Frames, *, copy: bool = True) -> None:
        if not self._outbox:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a plain script): at once
                super().send(frames, copy=copy)
                return
            loop.call_soon(self.flush)
        self._outbox.append((frames, copy))

    def flush(self) -> None:
        """Send what waits (the loop calls this at the end of the turn)."""
        outbox, self._outbox = self._outbox, []
        if self.closed:
            return  # as a PUB: nothing leaves a closed socket
        for frames, copy in outbox:
            with contextlib.suppress(zmq.Again):  # a full pipe drops, as PUB does
                SocketPair.send(self, frames, copy=copy)

    def close(self, linger_ms: int | None = None) -> None:
        if self._outbox:
            self.flush()
        super().close(linger_ms)


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
    """:class:`DealerSocket` over a ZeroMQ DEALER, sent and read without blocking.

    A receive that can go at once goes at once (no future, no event-loop
    hop), so a burst of requests is read in one run of the receiving task.
    What that task sends during its burst (the replies it answers inline)
    waits in a small outbox and leaves together when the burst ends, before
    the task sleeps: one wake-up of ZeroMQ's I/O thread and one TCP write
    for the lot, instead of one each. Sends from other tasks (workers, the
    heartbeat) go at once, after anything still in the outbox. Only a wait
    (no message yet, a full pipe) goes through :class:`Readiness`, and every
    send re-checks the events for the receiver sleeping on the same socket.
    """

    BURST = 64
    """Messages received back to back before the receiver lets other tasks run."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock
        self._sync: zmq.Socket[Any] = zmq.Socket.shadow(sock.underlying)
        self.ready = Readiness(self._sync)
        self._send_frame = super(zmq.Socket, self._sync).send  # see SocketPair
        self._burst = 0
        self._receiver: asyncio.Task[Any] | None = None
        self._outbox: list[tuple[list[bytes], float | None]] = []

    @property
    def closed(self) -> bool:
        return bool(self.sock.closed)

    async def recv_multipart(self) -> list[bytes]:
        self._receiver = asyncio.current_task()
        recv = self._sync.recv
        while True:
            if self._burst >= self.BURST:
                self._burst = 0
                await self._flush()
                await asyncio.sleep(0)  # fairness between bursts, not a poll: work waits
            try:
                # Frames (not bytes) for their ``more``: cheaper than a getsockopt per frame.
                frame = recv(_NOBLOCK, copy=False)
                parts: list[bytes] = [frame.bytes]
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    parts.append(frame.bytes)
            except zmq.Again:
                self._burst = 0
                if self._outbox:
                    await self._flush()
                    continue  # more may have come meanwhile
                await self.ready.wait(_POLLIN)
                continue
            self._burst += 1
            return parts

    def _send_now(self, frames: list[bytes]) -> None:
        # Queued whole once the first part is: only that one can raise zmq.Again.
        send = self._send_frame
        for frame in frames[:-1]:
            send(frame, _SNDMORE_NOBLOCK)
        send(frames[-1], _NOBLOCK)
        self.ready.touched()

    async def _flush(self) -> None:
        """Send the outbox, in order; a message that cannot go within its timeout is dropped."""
        outbox, self._outbox = self._outbox, []
        for frames, timeout in outbox:
            if not await self._send(frames, timeout):
                log.error("could not send a %s message to the proxy within %s s; dropped",
                          frames[1] if len(frames) > 1 else b"?", timeout)  # fmt: skip

    async def send(self, frames: list[bytes], *, timeout: float | None) -> bool:
        if self._burst and self._receiver is asyncio.current_task() and len(self._outbox) < 256:
            self._outbox.append((frames, timeout))
            return True  # queued, as ZeroMQ's own send: it leaves when the burst ends
        if self._outbox:
            await self._flush()  # keep the order of what the receiver queued
        return await self._send(frames, timeout)

    async def _send(self, frames: list[bytes], timeout: float | None) -> bool:
        try:
            self._send_now(frames)
            return True
        except zmq.Again:
            if timeout is None:
                return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            await self.ready.wait(_POLLOUT, left)
            try:
                self._send_now(frames)
                return True
            except zmq.Again:
                continue
        return False

    def close(self) -> None:
        if not self.sock.closed:
            for frames, _ in self._outbox:  # what the last burst answered still leaves
                with contextlib.suppress(zmq.ZMQError):
                    self._send_now(frames)
            self._outbox = []
            self.ready.detach()
            self.sock.close()


def set_heartbeat(pair: SocketPair, timeout: float) -> None:
    """ZMTP heartbeats on ``pair``'s connections: a peer silent for ``timeout`` s is dropped.

    Without them a connection to a peer that vanished without a TCP reset (its
    node lost power, its process stopped, a partition) stays "connected" until
    TCP gives up, minutes later. With them we ping every ``timeout / 3`` s and
    disconnect (the socket's monitor says ``DISCONNECTED``, then ZeroMQ
    reconnects) when nothing at all came back for ``timeout`` s; the TTL asks
    the peer to drop us likewise. Any traffic counts as an answer, so a busy
    connection pays nothing. Set before ``connect``: a connection takes the
    options the socket had when it was made.
    """
    ms = max(1, int(timeout * 1000))
    pair.set(zmq.HEARTBEAT_IVL, max(1, ms // 3))
    pair.set(zmq.HEARTBEAT_TIMEOUT, ms)
    # The TTL travels in the PING in tenths of seconds (at most 6553.5 s).
    pair.set(zmq.HEARTBEAT_TTL, min(max(ms, 100), 6_553_500))


class ZmqTransport:
    """The product's transport: one ``zmq.asyncio`` context, sockets as before.

    ``heartbeat``: seconds after which a silent peer's connection is dropped
    (:func:`set_heartbeat`), on the publishers and subscribers it connects;
    None sets no heartbeat (libzmq's default: only TCP notices a dead peer).
    """

    def __init__(self, *, heartbeat: float | None = None) -> None:
        if heartbeat is not None and not 0.001 <= heartbeat <= 6553:
            raise ValueError(f"heartbeat must be 0.001-6553 s, got {heartbeat}")
        self.ctx = zmq.asyncio.Context()
        self.heartbeat = heartbeat

    def publisher(self, endpoint: str, *, hwm: int, linger_ms: int = 0,
                  curve: CurveKeys | None = None) -> SocketPair:  # fmt: skip
        pair = PublisherPair(self.ctx, linger_ms=linger_ms)
        pair.set(zmq.SNDHWM, hwm)
        if self.heartbeat is not None:
            set_heartbeat(pair, self.heartbeat)
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
        if self.heartbeat is not None:
            set_heartbeat(pair, self.heartbeat)
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
        self._watched = [pair.ready for pair in (xsub, xpub, router) if pair is not None]

    def _levels(self) -> tuple[bool, bool, bool]:
        router = self.router
        return (
            bool(self.xsub.ready.events() & _POLLIN),
            bool(self.xpub.ready.events() & _POLLIN),
            router is not None and bool(router.ready.events() & _POLLIN),
        )

    async def wait(self, timeout: float) -> tuple[bool, bool, bool]:
        """The three sockets' levels (``ZMQ_EVENTS``), waiting first if none is readable.

        Levels, not edges: a send during the last batch may have consumed a
        socket's FD signal, and its level still says what waits (see the
        proxy's loop).
        """
        ready = self._levels()
        if any(ready) or timeout <= 0:
            return ready
        await wait_any(self._watched, _POLLIN, timeout)
        return self._levels()

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
