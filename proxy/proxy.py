"""The bus: an asyncio XSUB/XPUB proxy with per-topic metrics.

Publishers (clients sending requests, servers sending replies) connect to the
XSUB side; subscribers connect to the XPUB side. Messages flow XSUB -> XPUB,
subscriptions flow XPUB -> XSUB. The proxy also subscribes its XSUB to every
topic itself, so every publisher sends every message here as soon as its
connection is up: the only subscription a publisher must learn is ours, and
clients prove that with a round trip before their first request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import zmq
import zmq.asyncio

from proxy.metrics import DOWNSTREAM, UPSTREAM, ProxyMetrics
from skillscale.transport import SocketPair, bind_endpoint, connectable

log = logging.getLogger(__name__)


@dataclass
class ProxyConfig:
    """Proxy settings; endpoints ending in ``:0`` bind any free port."""

    xsub_bind: str = "tcp://*:5444"
    xpub_bind: str = "tcp://*:5555"
    metrics_host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes from outside the pod
    metrics_port: int | None = 9100
    """None disables the HTTP endpoint."""
    batch: int = 512
    """Messages drained per readable event before yielding to the loop."""
    hwm: int = 100_000
    """Per-peer high-water mark (messages) on both sides."""
    linger_ms: int = 500
    """How long queued messages may take to flush at stop."""


class Proxy:
    """The XSUB/XPUB forwarding role; use as ``async with Proxy(cfg) as p``."""

    def __init__(self, config: ProxyConfig | None = None) -> None:
        self.config = config or ProxyConfig()
        self.metrics = ProxyMetrics()
        self._ctx: zmq.asyncio.Context | None = None
        self._xsub: SocketPair | None = None
        self._xpub: SocketPair | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: set[bytes] = set()
        self._subscriptions_changed = asyncio.Condition()
        self.xsub_endpoint = ""
        self.xpub_endpoint = ""
        self.metrics_url: str | None = None

    async def __aenter__(self) -> Proxy:
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
        """Bind both sides, start the metrics endpoint and the forwarders."""
        cfg = self.config
        self._ctx = zmq.asyncio.Context()
        self._xsub = SocketPair(self._ctx, zmq.XSUB, linger_ms=cfg.linger_ms)
        self._xpub = SocketPair(self._ctx, zmq.XPUB, linger_ms=cfg.linger_ms)
        self._xsub.set(zmq.RCVHWM, cfg.hwm)
        self._xpub.set(zmq.SNDHWM, cfg.hwm)
        # Without NODROP an XPUB silently discards messages for a subscriber
        # at its HWM; with it the send fails and we count the drop.
        self._xpub.set(zmq.XPUB_NODROP, 1)
        try:
            self._xsub.async_sock.bind(bind_endpoint(cfg.xsub_bind))
            self._xpub.async_sock.bind(bind_endpoint(cfg.xpub_bind))
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self.xsub_endpoint = connectable(self._xsub.last_endpoint())
        self.xpub_endpoint = connectable(self._xpub.last_endpoint())
        self._xsub.send([b"\x01"])  # subscribe to everything (see module doc)
        if cfg.metrics_port is not None:
            port = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
            host = "127.0.0.1" if cfg.metrics_host in ("0.0.0.0", "", "::") else cfg.metrics_host  # noqa: S104
            self.metrics_url = f"http://{host}:{port}/metrics"
        self._tasks = [asyncio.create_task(self._forward(), name="proxy-forward")]
        log.info(
            "proxy up: xsub %s, xpub %s, metrics %s",
            self.xsub_endpoint,
            self.xpub_endpoint,
            self.metrics_url,
        )

    async def stop(self) -> None:
        """Stop forwarding, let queued messages flush for ``linger``, close."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("proxy forwarder failed")
        self.metrics.close()
        self._close_sockets()
        if self._ctx is not None:
            # term() blocks until linger expires; run it off the event loop.
            ctx, self._ctx = self._ctx, None
            await asyncio.get_running_loop().run_in_executor(None, ctx.term)

    def _close_sockets(self) -> None:
        for pair in (self._xsub, self._xpub):
            if pair is not None:
                pair.close()

    @property
    def subscriptions(self) -> frozenset[bytes]:
        """Topic prefixes currently subscribed by at least one subscriber."""
        return frozenset(self._subscriptions)

    async def wait_subscriptions(
        self, predicate: Callable[[frozenset[bytes]], bool], timeout: float
    ) -> None:
        """Wait until ``predicate(subscriptions)`` holds; ``TimeoutError`` after ``timeout`` s."""
        async with self._subscriptions_changed:
            await asyncio.wait_for(
                self._subscriptions_changed.wait_for(lambda: predicate(self.subscriptions)),
                timeout,
            )

    async def _forward(self) -> None:
        """One loop for both directions.

        ZeroMQ signals readiness through an edge-triggered FD per socket, and
        *any* operation on a socket (a send included) may consume that edge.
        The upstream direction sends on XSUB, which the downstream direction
        reads; with a task per direction, a send could swallow the edge the
        other task sleeps on and stall it. A single loop whose every wait
        starts with a level-triggered ``zmq_poll`` cannot miss an edge.
        """
        assert self._xsub is not None and self._xpub is not None
        xsub, xpub = self._xsub, self._xpub
        poller = zmq.asyncio.Poller()
        poller.register(xsub.async_sock, zmq.POLLIN)
        poller.register(xpub.async_sock, zmq.POLLIN)
        while True:
            ready = dict(await poller.poll())
            if xsub.async_sock in ready:
                self._forward_messages()
            if xpub.async_sock in ready:
                self._forward_subscriptions()
                async with self._subscriptions_changed:
                    self._subscriptions_changed.notify_all()

    def _forward_messages(self) -> None:
        assert self._xsub is not None and self._xpub is not None
        xpub, metrics = self._xpub, self.metrics
        counts: Counter[bytes] = Counter()
        sizes: Counter[bytes] = Counter()
        for frames in self._xsub.drain(self.config.batch, copy=False):
            topic = frames[0].bytes
            try:
                xpub.send(frames, copy=False)
            except zmq.Again:
                metrics.drop(topic, "subscriber_hwm")
                continue
            counts[topic] += 1
            sizes[topic] += sum(len(f) for f in frames)
        if counts:
            metrics.flush(DOWNSTREAM, counts, sizes)

    def _forward_subscriptions(self) -> None:
        assert self._xsub is not None and self._xpub is not None
        xsub, metrics = self._xsub, self.metrics
        counts: Counter[bytes] = Counter()
        sizes: Counter[bytes] = Counter()
        for frames in self._xpub.drain(self.config.batch):
            event = frames[0]
            if not event or event[0] not in (0, 1):
                continue  # only (un)subscribe commands travel upstream
            topic = bytes(event[1:])
            if event[0] == 1:
                self._subscriptions.add(topic)
            else:
                self._subscriptions.discard(topic)
            xsub.send([event])
            counts[topic] += 1
            sizes[topic] += len(event)
        metrics.subscriptions.set(len(self._subscriptions))
        if counts:
            metrics.flush(UPSTREAM, counts, sizes)


async def run_proxy(config: ProxyConfig, stop: asyncio.Event, on_ready: object = None) -> None:
    """Run a proxy until ``stop`` is set; ``on_ready(proxy)`` is called once bound."""
    async with Proxy(config) as proxy:
        if callable(on_ready):
            on_ready(proxy)
        await stop.wait()
