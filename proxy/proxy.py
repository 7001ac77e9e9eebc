"""The bus: an asyncio XSUB/XPUB proxy with replica groups and metrics.

Three sockets:

* XSUB (``:5444``): publishers connect here: clients sending requests,
  plain (reference-style) servers sending replies. The proxy subscribes to
  every topic itself, so each publisher sends everything here as soon as its
  connection is up.
* XPUB (``:5555``): subscribers connect here: clients hear their replies,
  plain servers hear their topics. Subscriptions are forwarded upstream.
* ROUTER (``:5566``): replica-group servers connect a DEALER here, announce
  themselves with heartbeats, and receive requests one at a time according to
  their free slots (see :mod:`proxy.groups`). Their replies come back on the
  same socket and are published on XPUB, first reply per request only.

Every request is also published on XPUB as before, so plain servers and
monitors keep working; a topic is served by a group *or* by plain servers,
and mixing the two on one topic runs requests twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from proxy.groups import GroupsConfig, Job, ReplicaGroups
from proxy.metrics import DOWNSTREAM, UPSTREAM, ProxyMetrics
from skillscale.errors import ErrorCode
from skillscale.protocol import (
    PROBE_TOPIC_PREFIX,
    REPLY_TOPIC_PREFIX,
    Reply,
    Trace,
    salvage_address,
)
from skillscale.replica_protocol import BYE, HB, REPLY, RETURN, VERSION, ServerState
from skillscale.runtime import AsyncRole
from skillscale.security import (
    DOMAIN_PUBLISHERS,
    DOMAIN_SERVERS,
    DOMAIN_SUBSCRIBERS,
    ProxyCurve,
    start_authenticator,
)
from skillscale.transport import SocketPair, bind_endpoint, connectable

log = logging.getLogger(__name__)

_REPLY_PREFIX = REPLY_TOPIC_PREFIX.encode()
_NOT_REQUESTS = (REPLY_TOPIC_PREFIX.encode(), PROBE_TOPIC_PREFIX.encode(), b"_SKILLSCALE_")


@dataclass
class ProxyConfig:
    """Proxy settings; endpoints ending in ``:0`` bind any free port. Seconds."""

    xsub_bind: str = "tcp://*:5444"
    xpub_bind: str = "tcp://*:5555"
    router_bind: str | None = "tcp://*:5566"
    """Replica-group endpoint; None turns groups off (plain pub/sub only)."""
    metrics_host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes from outside the pod
    metrics_port: int | None = 9100
    """None disables the HTTP endpoint."""
    batch: int = 512
    """Messages drained per readable event before yielding to the loop."""
    hwm: int = 100_000
    """Per-peer high-water mark (messages) on every socket."""
    linger_ms: int = 500
    """How long queued messages may take to flush at stop."""
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    tick: float = 0.1
    """Housekeeping period: heartbeats out, dead replicas, no_server, gauges."""
    heartbeat_interval: float = 1.0
    hold_replies: float = 10.0
    """Seconds a group reply waits for its caller to (re)subscribe, e.g. after
    a proxy restart, before it is dropped."""
    max_held_replies: int = 10_000
    curve: ProxyCurve | None = None
    """CURVE encryption and allow-lists; None leaves the bus open (loopback use)."""


class _IO:
    """The proxy's side of :class:`proxy.groups.GroupIO`."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def send_to(self, identity: bytes, frames: list[bytes]) -> bool:
        router = self.proxy._router
        if router is None:
            return False
        try:
            router.send([identity, *frames])
        except zmq.ZMQError as exc:  # EHOSTUNREACH (gone) or EAGAIN (full)
            log.warning("replica %r unreachable: %s", identity, exc)
            return False
        return True

    def publish(self, frames: list[bytes]) -> None:
        self.proxy._publish(frames)

    def reply_error(self, job: Job, code: ErrorCode, message: str) -> None:
        reply_to, request_id = salvage_address(job.payload)
        self.proxy.metrics.error_replies.labels(code.value).inc()
        if reply_to is None:
            log.warning("cannot answer a request on %r (%s): no reply_to", job.topic, code.value)
            return
        trace = Trace(server_id="proxy", attempt=job.attempt or None,
                      redelivered_from=job.history or None)  # fmt: skip
        reply = Reply.failure(request_id, code, message, trace=trace, server_id="proxy")
        self.proxy._publish([reply_to.encode(), reply.to_bytes()])


class Proxy(AsyncRole):
    """The bus role; use as ``async with Proxy(cfg) as p``."""

    def __init__(self, config: ProxyConfig | None = None) -> None:
        self.config = config or ProxyConfig()
        self.metrics = ProxyMetrics()
        self._io = _IO(self)
        self.groups = ReplicaGroups(self._io, self.config.groups)
        self._ctx: zmq.asyncio.Context | None = None
        self._xsub: SocketPair | None = None
        self._xpub: SocketPair | None = None
        self._router: SocketPair | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: set[bytes] = set()
        self._server_subscriptions: set[bytes] = set()
        self._subscriptions_changed = asyncio.Condition()
        self._gauged_topics: set[bytes] = set()
        self._held: dict[bytes, list[tuple[float, list[bytes]]]] = {}
        self._held_count = 0
        self._auth: AsyncioAuthenticator | None = None
        self._server_keys: set[bytes] | None = None
        self._counted = (0, 0)
        self.xsub_endpoint = ""
        self.xpub_endpoint = ""
        self.router_endpoint: str | None = None
        self.metrics_url: str | None = None

    async def start(self) -> None:
        """Bind the sockets, start the metrics endpoint and the forwarding loop."""
        cfg = self.config
        self._ctx = zmq.asyncio.Context()
        self._xsub = SocketPair(self._ctx, zmq.XSUB, linger_ms=cfg.linger_ms)
        self._xpub = SocketPair(self._ctx, zmq.XPUB, linger_ms=cfg.linger_ms)
        self._xsub.set(zmq.RCVHWM, cfg.hwm)
        self._xpub.set(zmq.SNDHWM, cfg.hwm)
        # Without NODROP an XPUB silently discards messages for a subscriber
        # at its HWM; with it the send fails and we count the drop.
        self._xpub.set(zmq.XPUB_NODROP, 1)
        if cfg.router_bind is not None:
            self._router = SocketPair(self._ctx, zmq.ROUTER, linger_ms=cfg.linger_ms)
            self._router.set(zmq.ROUTER_MANDATORY, 1)
            # A restarted server reconnects under the same id: let it take over.
            self._router.set(zmq.ROUTER_HANDOVER, 1)
            self._router.set(zmq.SNDHWM, cfg.hwm)
            self._router.set(zmq.RCVHWM, cfg.hwm)
        if cfg.curve is not None:
            self._auth = start_authenticator(self._ctx, cfg.curve)
            self._server_keys = cfg.curve.server_keys()
            cfg.curve.apply(self._xsub.async_sock, DOMAIN_PUBLISHERS)
            cfg.curve.apply(self._xpub.async_sock, DOMAIN_SUBSCRIBERS)
            if self._router is not None:
                cfg.curve.apply(self._router.async_sock, DOMAIN_SERVERS)
        try:
            self._xsub.async_sock.bind(bind_endpoint(cfg.xsub_bind))
            self._xpub.async_sock.bind(bind_endpoint(cfg.xpub_bind))
            if self._router is not None and cfg.router_bind is not None:
                self._router.async_sock.bind(bind_endpoint(cfg.router_bind))
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self.xsub_endpoint = connectable(self._xsub.last_endpoint())
        self.xpub_endpoint = connectable(self._xpub.last_endpoint())
        if self._router is not None:
            self.router_endpoint = connectable(self._router.last_endpoint())
        self._xsub.send([b"\x01"])  # subscribe to everything (see module doc)
        if cfg.metrics_port is not None:
            port = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
            host = "127.0.0.1" if cfg.metrics_host in ("0.0.0.0", "", "::") else cfg.metrics_host  # noqa: S104
            self.metrics_url = f"http://{host}:{port}/metrics"
        self._tasks = [asyncio.create_task(self._forward(), name="proxy-forward")]
        log.info(
            "proxy up: xsub %s, xpub %s, router %s, metrics %s",
            self.xsub_endpoint,
            self.xpub_endpoint,
            self.router_endpoint,
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
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            # term() blocks until linger expires; run it off the event loop.
            ctx, self._ctx = self._ctx, None
            await asyncio.get_running_loop().run_in_executor(None, ctx.term)

    def _close_sockets(self) -> None:
        for pair in (self._xsub, self._xpub, self._router):
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
        """One loop for every socket and the housekeeping clock.

        ZeroMQ signals readiness through an edge-triggered FD per socket, and
        *any* operation on a socket (a send included) may consume that edge.
        Subscriptions are sent on XSUB, which requests are read from; group
        replies are published on XPUB, which subscriptions are read from.
        With a task per direction, a send could swallow the edge another task
        sleeps on and stall it; a single loop whose every wait starts with a
        level-triggered ``zmq_poll`` cannot miss one.
        """
        assert self._xsub is not None and self._xpub is not None
        xsub, xpub, router = self._xsub, self._xpub, self._router
        poller = zmq.asyncio.Poller()
        poller.register(xsub.async_sock, zmq.POLLIN)
        poller.register(xpub.async_sock, zmq.POLLIN)
        if router is not None:
            poller.register(router.async_sock, zmq.POLLIN)
        tick = self.config.tick
        next_tick = time.monotonic() + tick
        next_heartbeat = time.monotonic()
        while True:
            timeout_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            ready = dict(await poller.poll(timeout_ms))
            if xsub.async_sock in ready:
                self._forward_messages()
            if router is not None and router.async_sock in ready:
                self._on_router()
            if xpub.async_sock in ready:
                self._forward_subscriptions()
                async with self._subscriptions_changed:
                    self._subscriptions_changed.notify_all()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + tick
                self.groups.tick(now)
                self._expire_held(now)
                if now >= next_heartbeat:
                    next_heartbeat = now + self.config.heartbeat_interval
                    self._heartbeat_all()
                self._update_gauges()

    @staticmethod
    def _forged(topic: bytes, frame: zmq.Frame, server_keys: set[bytes]) -> bool:
        """A reply-topic message whose sender is not an allowed server."""
        if not topic.startswith(_REPLY_PREFIX) or topic.endswith(b".probe"):
            return False  # (a client's own path probe travels on its reply topic)
        sender = frame.get("User-Id")
        return not isinstance(sender, str) or sender.encode() not in server_keys

    def _is_request(self, topic: bytes) -> bool:
        return bool(topic) and not topic.startswith(_NOT_REQUESTS)

    def _release_held(self, prefix: bytes) -> None:
        if not self._held:
            return
        for topic in [t for t in self._held if t.startswith(prefix)]:
            held = self._held.pop(topic)
            self._held_count -= len(held)
            for _, frames in held:
                self._publish(frames)

    def _expire_held(self, now: float) -> None:
        for topic in list(self._held):
            held = self._held[topic]
            keep = [(expires, frames) for expires, frames in held if expires > now]
            for _ in range(len(held) - len(keep)):
                self.metrics.drop(topic, "no_subscriber")
            self._held_count -= len(held) - len(keep)
            if keep:
                self._held[topic] = keep
            else:
                del self._held[topic]

    def _has_plain_subscriber(self, topic: bytes) -> bool:
        return any(topic.startswith(prefix) for prefix in self._server_subscriptions)

    def _forward_messages(self) -> None:
        assert self._xsub is not None and self._xpub is not None
        xpub, metrics, groups = self._xpub, self.metrics, self.groups
        grouped = self._router is not None
        counts: Counter[bytes] = Counter()
        sizes: Counter[bytes] = Counter()
        now = time.monotonic()
        server_keys = self._server_keys
        for frames in self._xsub.drain(self.config.batch, copy=False):
            topic = frames[0].bytes
            if server_keys is not None and self._forged(topic, frames[0], server_keys):
                metrics.drop(topic, "forged_reply")
                continue
            counts[topic] += 1
            sizes[topic] += sum(len(f) for f in frames)
            routed = False
            if grouped and self._is_request(topic):
                plain = self._has_plain_subscriber(topic)
                if len(frames) == 2:
                    routed = groups.on_request(topic, frames[1].bytes, now, plain_subscriber=plain)
                elif not plain:
                    routed = True
                    self._reject_malformed(topic, frames)
            try:
                xpub.send(frames, copy=False)
            except zmq.Again:
                if not routed:
                    metrics.drop(topic, "subscriber_hwm")
        if counts:
            metrics.flush(DOWNSTREAM, counts, sizes)

    def _reject_malformed(self, topic: bytes, frames: list[zmq.Frame]) -> None:
        job = Job(b"", topic, b"\n".join(f.bytes for f in frames[1:]), time.monotonic())
        self._io.reply_error(
            job,
            ErrorCode.BAD_REQUEST,
            f"a request is 2 frames [topic, json]; got {len(frames)}",
        )

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
                if topic and not topic.startswith(_NOT_REQUESTS):
                    self._server_subscriptions.add(topic)
                self._release_held(topic)
            else:
                self._subscriptions.discard(topic)
                self._server_subscriptions.discard(topic)
            xsub.send([event])
            counts[topic] += 1
            sizes[topic] += len(event)
        metrics.subscriptions.set(len(self._subscriptions))
        if counts:
            metrics.flush(UPSTREAM, counts, sizes)

    def _on_router(self) -> None:
        assert self._router is not None
        groups = self.groups
        now = time.monotonic()
        for frames in self._router.drain(self.config.batch):
            if len(frames) < 3 or frames[1] != VERSION:
                self.metrics.drop(b"_SKILLSCALE_GROUP", "malformed")
                continue
            identity, command, args = frames[0], frames[2], frames[3:]
            try:
                if command == HB and len(args) == 1:
                    groups.on_heartbeat(identity, ServerState.from_bytes(args[0]), now)
                    self._io_send(identity, [VERSION, HB])
                elif command == REPLY and len(args) == 3:
                    groups.on_reply(identity, args[0], args[1], args[2], now)
                elif command == RETURN and len(args) == 1:
                    groups.on_return(identity, args[0], now)
                elif command == BYE:
                    groups.on_bye(identity, now)
                else:
                    raise ValueError(f"unknown command {command!r} with {len(args)} frames")
            except ValueError as exc:
                log.warning("bad message from replica %r: %s", identity, exc)
                self.metrics.drop(b"_SKILLSCALE_GROUP", "malformed")

    def _io_send(self, identity: bytes, frames: list[bytes]) -> None:
        assert self._router is not None
        # A replica that is gone stops heartbeating and is removed then.
        with contextlib.suppress(zmq.ZMQError):
            self._router.send([identity, *frames])

    def _heartbeat_all(self) -> None:
        for identity in list(self.groups.members):
            self._io_send(identity, [VERSION, HB])

    def _subscribed(self, topic: bytes) -> bool:
        return topic in self._subscriptions or any(
            topic.startswith(prefix) for prefix in self._subscriptions
        )

    def _publish(self, frames: list[bytes]) -> None:
        """Publish a reply; hold it a while if its caller is not subscribed (yet)."""
        assert self._xpub is not None
        topic = frames[0]
        if not self._subscribed(topic):
            if self._held_count >= self.config.max_held_replies:
                self.metrics.drop(topic, "no_subscriber")
                return
            expires = time.monotonic() + self.config.hold_replies
            self._held.setdefault(topic, []).append((expires, frames))
            self._held_count += 1
            return
        try:
            self._xpub.send(frames)
        except zmq.Again:
            self.metrics.drop(frames[0], "subscriber_hwm")
            return
        self.metrics.flush(
            DOWNSTREAM, Counter({frames[0]: 1}), Counter({frames[0]: sum(map(len, frames))})
        )

    def _update_gauges(self) -> None:
        groups, metrics = self.groups, self.metrics
        topics = groups.topics()
        for topic in topics | self._gauged_topics:
            label = metrics.topic_label(topic)
            metrics.queue_depth.labels(label).set(groups.queue_depth(topic))
            metrics.inflight.labels(label).set(groups.inflight_count(topic))
            metrics.replicas.labels(label).set(groups.replica_count(topic))
        self._gauged_topics = topics
        # The state machine keeps plain totals; counters move by the difference.
        metrics.redelivered.inc(groups.redelivered - self._counted[0])
        metrics.duplicates.inc(groups.duplicates_dropped - self._counted[1])
        self._counted = (groups.redelivered, groups.duplicates_dropped)


async def run_proxy(config: ProxyConfig, stop: asyncio.Event, on_ready: object = None) -> None:
    """Run a proxy until ``stop`` is set; ``on_ready(proxy)`` is called once bound."""
    async with Proxy(config) as proxy:
        if callable(on_ready):
            on_ready(proxy)
        await stop.wait()
