"""An in-memory bus: the whole fabric in one process, no sockets.

:class:`MemoryBus` implements :class:`skillscale.core.transport.Transport`
(publishers, subscribers and DEALERs for clients and servers) and the
proxy's side of it (:meth:`MemoryBus.bind_proxy`). Pass one bus to
``Proxy(config, transport=bus)``, ``SkillServer(config, transport=bus)`` and
``SkillScaleClient(transport=bus)`` and the real roles run the real path,
client → proxy with replica groups → server → matcher → executor → reply,
on one event loop, as FastStream's ``TestBroker`` runs a real app in memory.

It keeps the ZeroMQ semantics the roles rely on:

* a publisher sends to the proxy's XSUB (which takes everything); with no
  proxy bound, or its inbox full, the message is dropped, as PUB does;
* a subscriber gets what the proxy publishes on XPUB whose topic starts with
  one of its prefixes; a full subscriber misses it, nobody else does; the
  proxy hears the first subscription to a prefix and the last unsubscription
  (``\\x01``/``\\x00`` + prefix), and all of them again when it binds;
* the ROUTER routes by identity (``EHOSTUNREACH`` for an unknown one,
  ``zmq.Again`` when that DEALER's inbox is full); a DEALER that connects
  under a known identity takes it over.

Every queue is bounded (``hwm`` messages); every wait has a timeout or is
cancelled with its task. There is no CURVE: the bus never leaves the process.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import zmq

from skillscale.core.errors import ConfigError
from skillscale.core.security import CurveKeys
from skillscale.core.transport import Frames

DEFAULT_HWM = 10_000
ENDPOINTS = ("memory://xsub", "memory://xpub", "memory://router")


class MemoryFrame:
    """A received frame, shaped like ``zmq.Frame`` (``copy=False``) for the proxy."""

    __slots__ = ("bytes",)

    def __init__(self, data: bytes) -> None:
        self.bytes = data

    def __len__(self) -> int:
        return len(self.bytes)

    def __bytes__(self) -> bytes:
        return self.bytes

    def get(self, prop: str) -> None:
        """No peer properties (``User-Id``, ``Peer-Address``) in memory."""
        return None


def _raw(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else bytes(frame)


def _no_curve(curve: CurveKeys | None) -> None:
    if curve is not None:
        raise ConfigError("the in-memory bus has no CURVE (it never leaves the process)")


class _Signal:
    """A flag with timed waits: like ``asyncio.Event``, without a task per timed wait."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: set[asyncio.Future[None]] = set()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float | None) -> None:
        """Until set, at most ``timeout`` seconds (None: until set or cancelled)."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Inbox:
    """A bounded FIFO of messages with a wake-up event."""

    def __init__(self, bound: int, wake: _Signal | None = None) -> None:
        self.items: deque[Frames] = deque()
        self.bound = bound
        self.wake = wake or _Signal()
        self.room = _Signal()
        self.room.set()

    def put(self, frames: Frames) -> bool:
        if len(self.items) >= self.bound:
            self.room.clear()
            return False
        self.items.append(frames)
        self.wake.set()
        return True

    def take(self, max_batch: int) -> list[Frames]:
        items = self.items
        batch = [items.popleft() for _ in range(min(max_batch, len(items)))]
        if len(items) < self.bound:
            self.room.set()
        return batch

    async def wait(self, timeout: float | None) -> bool:
        if self.items:
            return True
        self.wake.clear()
        await self.wake.wait(timeout)
        return bool(self.items)


class MemoryPublisher:
    """A client's or server's publisher: sends into the proxy's XSUB inbox."""

    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus
        self.closed = False

    async def wait_readable(self, timeout: float | None = None) -> bool:
        return False  # a publisher receives nothing

    def drain(self, max_batch: int, *, copy: bool = True) -> list[Frames]:
        return []

    def send(self, frames: Frames, *, copy: bool = True) -> None:
        proxy = self._bus._proxy
        if self.closed or proxy is None:
            return  # no connection: PUB drops
        proxy.xsub_in.put([MemoryFrame(_raw(f)) for f in frames])

    def subscribe(self, topic: bytes) -> None:
        raise ValueError("a publisher does not subscribe")

    def unsubscribe(self, topic: bytes) -> None:
        raise ValueError("a publisher does not subscribe")

    def close(self, linger_ms: int | None = None) -> None:
        self.closed = True


class MemorySubscriber:
    """A client's or server's subscriber: hears the proxy's XPUB by prefix."""

    def __init__(self, bus: MemoryBus, hwm: int) -> None:
        self._bus = bus
        self.inbox = _Inbox(hwm)
        self.prefixes: Counter[bytes] = Counter()
        self.closed = False

    async def wait_readable(self, timeout: float | None = None) -> bool:
        return await self.inbox.wait(timeout)

    def drain(self, max_batch: int, *, copy: bool = True) -> list[Frames]:
        return self.inbox.take(max_batch)

    def send(self, frames: Frames, *, copy: bool = True) -> None:
        raise ValueError("a subscriber does not send")

    def subscribe(self, topic: bytes) -> None:
        self.prefixes[topic] += 1
        if self.prefixes[topic] == 1:
            self._bus._subscribe(topic)

    def unsubscribe(self, topic: bytes) -> None:
        if self.prefixes[topic] <= 0:
            return
        self.prefixes[topic] -= 1
        if self.prefixes[topic] == 0:
            del self.prefixes[topic]
            self._bus._unsubscribe(topic)

    def close(self, linger_ms: int | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        for topic in list(self.prefixes):
            self._bus._unsubscribe(topic)
        self.prefixes.clear()
        self._bus._subscribers.discard(self)


class MemoryDealer:
    """A replica-group server's line to the proxy's ROUTER."""

    def __init__(self, bus: MemoryBus, identity: bytes, hwm: int) -> None:
        self._bus = bus
        self.identity = identity
        self.inbox = _Inbox(hwm)
        self.closed = False

    async def recv_multipart(self) -> list[bytes]:
        while not self.inbox.items:
            await self.inbox.wait(None)  # ends when the receiving task is cancelled
        return [_raw(f) for f in self.inbox.take(1)[0]]

    async def send(self, frames: list[bytes], *, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self.closed:
                return False
            proxy = self._bus._proxy
            if proxy is not None and proxy.router_in is not None:
                if proxy.router_in.put([MemoryFrame(self.identity), *map(MemoryFrame, frames)]):
                    return True
                room = proxy.router_in.room
            else:
                room = self._bus._proxy_bound
            if deadline is None or (left := deadline - loop.time()) <= 0:
                return False
            await room.wait(left)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._bus._dealers.get(self.identity) is self:
            del self._bus._dealers[self.identity]


class _ProxySide:
    """One of the proxy's three sockets: what arrives waits in ``inbox``."""

    def __init__(self, bus: MemoryBus, inbox: _Inbox) -> None:
        self._bus = bus
        self.inbox = inbox

    def drain(self, max_batch: int, *, copy: bool = True) -> list[Frames]:
        return self.inbox.take(max_batch)

    def set(self, option: int, value: int | bytes) -> None:
        pass  # socket options mean nothing in memory


class _XSub(_ProxySide):
    def send(self, frames: Frames, *, copy: bool = True) -> None:
        pass  # the proxy's "subscribe to everything": a memory XSUB takes everything


class _XPub(_ProxySide):
    def send(self, frames: Frames, *, copy: bool = True) -> None:
        message = [_raw(f) for f in frames]
        topic = message[0]
        for sub in self._bus._subscribers:
            if any(topic.startswith(p) for p in sub.prefixes):
                sub.inbox.put(message)  # a full subscriber misses it, no one else


class _Router(_ProxySide):
    def send(self, frames: Frames, *, copy: bool = True) -> None:
        identity = _raw(frames[0])
        dealer = self._bus._dealers.get(identity)
        if dealer is None:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        if not dealer.inbox.put([_raw(f) for f in frames[1:]]):
            raise zmq.Again()


class MemoryProxySockets:
    """The proxy's side of a :class:`MemoryBus` (:class:`ProxySockets`)."""

    def __init__(self, bus: MemoryBus, hwm: int, with_router: bool) -> None:
        self._bus = bus
        self._wake = _Signal()
        self.xsub_in = _Inbox(hwm, self._wake)
        self.xpub_in = _Inbox(hwm, self._wake)
        self.router_in = _Inbox(hwm, self._wake) if with_router else None
        self.xsub = _XSub(bus, self.xsub_in)
        self.xpub = _XPub(bus, self.xpub_in)
        self.router = _Router(bus, self.router_in) if self.router_in is not None else None
        self.endpoints = (ENDPOINTS[0], ENDPOINTS[1], ENDPOINTS[2] if with_router else None)

    def _ready(self) -> tuple[bool, bool, bool]:
        router = self.router_in
        return bool(self.xsub_in.items), bool(self.xpub_in.items), bool(router and router.items)

    async def wait(self, timeout: float) -> tuple[bool, bool, bool]:
        if any(self._ready()) or timeout <= 0:
            await asyncio.sleep(0)  # a busy bus still lets the other tasks run
        else:
            self._wake.clear()
            await self._wake.wait(timeout)
        return self._ready()

    def close(self) -> None:
        self._bus._unbind(self)


class MemoryBus:
    """One in-process fabric (a :class:`skillscale.core.transport.Transport`).

    Create it inside the event loop that runs the roles. Endpoint arguments
    are accepted and ignored: there is one proxy per bus.
    """

    def __init__(self, hwm: int = DEFAULT_HWM) -> None:
        self.hwm = hwm
        self._proxy: MemoryProxySockets | None = None
        self._proxy_bound = _Signal()
        self._subscribers: set[MemorySubscriber] = set()
        self._dealers: dict[bytes, MemoryDealer] = {}
        self._topics: Counter[bytes] = Counter()

    # -- Transport -----------------------------------------------------------------

    def publisher(self, endpoint: str, *, hwm: int, linger_ms: int = 0,
                  curve: CurveKeys | None = None) -> MemoryPublisher:  # fmt: skip
        _no_curve(curve)
        return MemoryPublisher(self)

    def subscriber(self, endpoint: str, topics: Iterable[bytes], *, hwm: int,
                   max_message_bytes: int | None = None,
                   curve: CurveKeys | None = None) -> MemorySubscriber:  # fmt: skip
        _no_curve(curve)
        sub = MemorySubscriber(self, min(hwm, self.hwm))
        self._subscribers.add(sub)
        for topic in topics:
            sub.subscribe(topic)
        return sub

    def dealer(self, endpoint: str, identity: bytes, *, hwm: int, linger_ms: int = 0,
               curve: CurveKeys | None = None) -> MemoryDealer:  # fmt: skip
        _no_curve(curve)
        dealer = MemoryDealer(self, identity, min(hwm, self.hwm))
        old = self._dealers.get(identity)
        if old is not None:
            old.closed = True  # handover: the new connection takes the id
        self._dealers[identity] = dealer
        return dealer

    def close(self) -> None:
        """Nothing to release: the endpoints close with their owners."""

    # -- the proxy's side ----------------------------------------------------------

    def bind_proxy(self, *, with_router: bool = True, hwm: int | None = None) -> MemoryProxySockets:
        """Bind the proxy's three endpoints; subscriptions are replayed to it."""
        if self._proxy is not None:
            raise ConfigError("a proxy is already bound to this memory bus")
        proxy = MemoryProxySockets(self, hwm or self.hwm, with_router)
        self._proxy = proxy
        for topic in self._topics:
            proxy.xpub_in.put([MemoryFrame(b"\x01" + topic)])
        self._proxy_bound.set()
        return proxy

    def _unbind(self, proxy: MemoryProxySockets) -> None:
        if self._proxy is proxy:
            self._proxy = None
            self._proxy_bound.clear()

    def _subscribe(self, topic: bytes) -> None:
        self._topics[topic] += 1
        if self._topics[topic] == 1 and self._proxy is not None:
            self._proxy.xpub_in.put([MemoryFrame(b"\x01" + topic)])

    # (Reference counting as in a subscriber's unsubscribe, one level up: per bus.)
    def _unsubscribe(self, topic: bytes) -> None:
        if self._topics[topic] <= 0:
            return
        self._topics[topic] -= 1
        if self._topics[topic] == 0:
            del self._topics[topic]
            if self._proxy is not None:
                self._proxy.xpub_in.put([MemoryFrame(b"\x00" + topic)])
