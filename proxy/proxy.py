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
  their free slots (see :mod:`skillscale.proxy.groups`). Their replies come back on the
  same socket and are published on XPUB, first reply per request only.

Every request is also published on XPUB as before, so plain servers and
monitors keep working; a topic is served by a group *or* by plain servers,
and mixing the two on one topic runs requests twice.

Hostile or careless peers (see the README's trust model):

* every message is handled in its own ``try``: no input ends the loop; a
  failure is counted (``dropped{reason="internal_error"}``) and logged,
  rate-limited;
* sizes: ``MAXMSGSIZE`` on every socket disconnects a peer sending a frame
  past the hard cap; requests past ``max_message_bytes`` are answered
  ``payload_too_large``; waiting requests and held replies are capped in
  count *and* bytes;
* a subscriber that stops reading costs only itself: its messages are
  dropped (counted as ``slow_subscriber``) while the others still get them,
  and ZMTP heartbeats disconnect it once it has been stuck for
  ``stuck_timeout`` seconds;
* subscriptions are bounded in all and per peer, and matched in bounded
  time (:mod:`skillscale.proxy.subscriptions`);
* under CURVE, a replica's routing id is bound to the key that first
  announced it, replies and hand-backs are accepted only from the replica
  owning the job, an optional allow-list says which server keys may serve
  which topics, and client keys can publish neither replies nor trace
  events.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import gc
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from skillscale.core import stamps
from skillscale.core.errors import ConfigError, ErrorCode
from skillscale.core.events import TRACE_TOPIC
from skillscale.core.health import RoleHealth, url_for
from skillscale.core.memory_bus import MemoryBus
from skillscale.core.protocol import (
    MAX_REPLY_BYTES,
    MAX_REQUEST_BYTES,
    MAX_TOPIC_BYTES,
    PROBE_TOPIC_PREFIX,
    REPLY_TOPIC_PREFIX,
    Reply,
    Trace,
    is_reply_topic,
    salvage_address,
)
from skillscale.core.replica_protocol import (
    BUSY,
    BYE,
    HB,
    HEARTBEAT_INTERVAL,
    INLINE,
    MAX_BATCH,
    REPLY,
    REPLY_GROUP,
    REQ,
    REQ_GROUP,
    RETURN,
    ROLE_ACTIVE,
    ROLE_PASSIVE,
    TRACES_UNWANTED,
    TRACES_WANTED,
    VERSION,
    ServerState,
    join_batch,
)
from skillscale.core.runtime import AsyncRole, safe, within
from skillscale.core.security import (
    DOMAIN_PUBLISHERS,
    DOMAIN_SERVERS,
    DOMAIN_SUBSCRIBERS,
    CurveKeys,
    HandshakeLog,
    ProxyCurve,
    start_authenticator,
)
from skillscale.core.transport import (
    ProxySocket,
    ProxySockets,
    SocketPair,
    ZmqProxySockets,
    bind_endpoint,
)
from skillscale.proxy.failover import STATE_VERSION, BinaryStar, FailoverConfig, Recovery
from skillscale.proxy.groups import GroupsConfig, Job, ReplicaGroups
from skillscale.proxy.metrics import DOWNSTREAM, UPSTREAM, ProxyMetrics
from skillscale.proxy.subscriptions import Subscriptions

log = logging.getLogger(__name__)

_REPLY_PREFIX = REPLY_TOPIC_PREFIX.encode()
_BATCHES = str(MAX_BATCH).encode()
"""``HB``'s ``batches`` frame: the ``REPLY`` groups this proxy takes in one message."""
_MAX_REPLICA_FRAMES = 3 + REPLY_GROUP * MAX_BATCH
"""Identity, version, command and the longest batched ``REPLY``."""
_TRACE_TOPIC = TRACE_TOPIC.encode()
_NOT_REQUESTS = (REPLY_TOPIC_PREFIX.encode(), PROBE_TOPIC_PREFIX.encode(), b"_SKILLSCALE_")
_GROUP = b"_SKILLSCALE_GROUP"

_PROBE_PREFIX = PROBE_TOPIC_PREFIX.encode()
MiB = 1024 * 1024
DEFAULT_HOST = "127.0.0.1"


@dataclass
class ProxyConfig:
    """Proxy settings; endpoints ending in ``:0`` bind any free port. Seconds."""

    xsub_bind: str = f"tcp://{DEFAULT_HOST}:5444"
    xpub_bind: str = f"tcp://{DEFAULT_HOST}:5555"
    router_bind: str | None = f"tcp://{DEFAULT_HOST}:5566"
    """Replica-group endpoint; None turns groups off (plain pub/sub only)."""
    metrics_host: str = DEFAULT_HOST
    """Loopback by default; a pod binds ``0.0.0.0`` so Prometheus can scrape it."""
    metrics_port: int | None = 9100
    """None disables the HTTP endpoint."""
    batch: int = 512
    """Messages drained per readable event before yielding to the loop."""
    hwm: int = 100_000
    """Per-peer high-water mark (messages) on XSUB and the ROUTER."""
    subscriber_hwm: int = 1_000
    """Per-subscriber high-water mark (messages) on XPUB: past it that
    subscriber's messages are dropped, the others' are not."""
    stuck_timeout: float = 10.0
    """Seconds a peer may leave our ZMTP heartbeats unanswered (a subscriber
    that stopped reading, a dead connection) before it is disconnected."""
    max_message_bytes: int = MAX_REQUEST_BYTES
    """Largest request the proxy forwards; larger ones get ``payload_too_large``."""
    hard_message_bytes: int = MAX_REPLY_BYTES
    """``MAXMSGSIZE``: a peer sending a frame past this is disconnected at once
    (it cannot be answered: the frame is never read)."""
    max_subscriptions: int = 100_000
    max_subscriptions_per_peer: int = 10_000
    """Per CURVE key, or per address on an open bus."""
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
    max_held_bytes: int = 64 * MiB
    gauge_interval: float = 0.5
    """Seconds between refreshes of the per-topic gauges."""
    curve: ProxyCurve | None = None
    """CURVE encryption and allow-lists; None leaves the bus open (loopback use)."""
    failover: FailoverConfig | None = None
    """One half of a Binary Star pair (``proxy/failover.py``); None: a lone proxy."""
    recovery_window: float = 30.0
    """Seconds after a start or take-over during which a caller is sent at most
    one reply per request id (retransmissions meet replies to the old dispatch)."""


def _raw(frame: Any) -> bytes:
    """A received frame's bytes: copied (bytes), a zmq.Frame, or an in-memory frame."""
    return frame if isinstance(frame, bytes) else frame.bytes


@contextlib.contextmanager
def _collector_tuned(enabled: bool) -> Iterator[None]:
    """Python's cyclic collector tuned for the stream, while the loop runs.

    The stream allocates a few short-lived objects per message (frames,
    lists), all freed by reference counting, yet each counts towards the
    collector's next run: at the default threshold (700) it ran every ~200
    messages and took 11 % of the proxy (``py-spy --native``), older passes
    rescanning every start-up object. Those are frozen out of it, and young
    objects collected per 20,000. Restored when the loop ends (a proxy run
    in a test's process leaves it as it was).
    """
    global _gc_users, _gc_saved
    if not enabled:
        yield
        return
    # The settings are the process's, not this proxy's: counted, so that of
    # two proxies in one process the first to stop does not undo the other's.
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_saved)
                gc.unfreeze()


_gc_lock = threading.Lock()  # proxies may run on loops in several threads
_gc_users = 0
_gc_saved: tuple[int, int, int] = gc.get_threshold()


_REQUEST = "request"
"""A request topic published as is (see Proxy._plain_topic)."""
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.NOBLOCK) | int(zmq.SNDMORE)


class _Stream:
    """The XSUB -> XPUB stream's send, by frames (received by ``SocketPair.drain``
    with ``copy=False``).

    A received ``zmq.Frame`` carries its "more" flag, where a copied receive
    needs ``getsockopt(RCVMORE)`` per frame, and pyzmq turns every option
    number into an enum member first: 1.2-1.8 µs each, two per message, more
    than the receive itself. A frame is sent on by reference, without a copy
    of its bytes. Sends go to the backend's ``send`` (the class below pyzmq's
    ``zmq.Socket``, whatever the backend), skipping the wrapper that only
    handles DRAFT ``routing_id``/``group`` arguments. Measured per 2-frame
    message (CPU time, inproc, ``bench/stream_io.py``): bytes + getsockopt +
    wrapper 3.8 µs, frames + backend send 2.75 µs.
    """

    def __init__(self, xpub: SocketPair) -> None:
        self.send = super(zmq.Socket, xpub.sync).send

    def publish(self, frames: list[zmq.Frame]) -> None:
        """Send on XPUB; only the first part can raise ``zmq.Again`` (see SocketPair.send)."""
        send = self.send
        for frame in frames[:-1]:
            send(frame, _SNDMORE_NOBLOCK, False)
        send(frames[-1], _NOBLOCK, False)


@dataclass
class _Outgoing:
    """What one batch of replica messages publishes (sent after the batch)."""

    replies: list[list[bytes]] = field(default_factory=list)


class _IO:
    """The proxy's side of :class:`skillscale.proxy.groups.GroupIO`.

    While the proxy handles one batch of its sockets' messages,
    :attr:`gathering` collects the dispatches to each replica that takes
    batches; :meth:`flush` sends them after the batch as few batched ``REQ``
    as it allows (see ``skillscale.core.replica_protocol``).
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.gathering: dict[bytes, list[list[bytes]]] | None = None
        self.batched = [0, 0]
        """Dispatches sent in batched ``REQ``, and replies received in batched ``REPLY``."""

    def send_to(self, identity: bytes, frames: list[bytes]) -> bool:
        gathering = self.gathering
        if gathering is not None and frames[1] == REQ and len(frames) == 2 + REQ_GROUP:
            member = self.proxy.groups.members.get(identity)
            if member is not None and member.state.batches > 1:
                gathering.setdefault(identity, []).append(frames)
                return True  # sent by flush, which reports a failure to the groups
        return self._send(identity, frames)

    def flush(self, now: float) -> None:
        """Send what :attr:`gathering` holds and stop gathering."""
        gathering, self.gathering = self.gathering, None
        if not gathering:
            return
        groups = self.proxy.groups
        for identity, messages in gathering.items():
            member = groups.members.get(identity)
            if member is None or member.unreachable:
                continue  # removed meanwhile: its jobs were requeued already
            # Only what is still this member's to run, as this attempt (a BYE
            # in the same batch requeued the rest; a replica back under the
            # same id may have been given some again, as a later attempt).
            inflight = member.inflight
            messages = [
                m for m in messages if m[2] in inflight and m[5] == b"%d" % inflight[m[2]].attempt
            ]
            if len(messages) > 1:
                joined = join_batch(messages, REQ_GROUP, member.state.batches)
                self.batched[0] += sum(
                    (len(m) - 2) // REQ_GROUP for m in joined if len(m) > 2 + REQ_GROUP
                )
                messages = joined
            for frames in messages:
                if not self._send(identity, frames):
                    groups.lost(identity, now)
                    break

    def _send(self, identity: bytes, frames: list[bytes]) -> bool:
        router = self.proxy._router
        if router is None:
            return False
        try:
            router.send([identity, *frames])
        except zmq.ZMQError as exc:  # EHOSTUNREACH (gone) or EAGAIN (full)
            log.warning("replica %s unreachable: %s", safe(identity), exc)
            return False
        return True

    def publish(self, frames: list[bytes]) -> None:
        if not self.proxy.recovery.first_reply(frames[0], frames[1], time.monotonic()):
            self.proxy.metrics.drop(frames[0], "duplicate_reply")
            return
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
    """The bus role; use as ``async with Proxy(cfg) as p``.

    ``transport``: None binds ZeroMQ sockets (the product); a
    :class:`~skillscale.core.memory_bus.MemoryBus` runs the same routing in
    memory, in one process with its servers and clients.
    """

    def __init__(self, config: ProxyConfig | None = None, *,
                 transport: MemoryBus | None = None) -> None:  # fmt: skip
        self.config = config or ProxyConfig()
        self._transport = transport
        self.metrics = ProxyMetrics()
        self._bound = False
        self.health = RoleHealth(self._readiness)
        """Liveness and readiness, served on the metrics port."""
        self._io = _IO(self)
        self.groups = ReplicaGroups(self._io, self.config.groups)
        self._ctx: zmq.asyncio.Context | None = None
        self._sockets: ProxySockets | None = None
        self._xsub: ProxySocket | None = None
        self._xpub: ProxySocket | None = None
        self._stream: _Stream | None = None
        """The XSUB -> XPUB stream's I/O on ZeroMQ sockets (None in memory)."""
        self._router: ProxySocket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subs = Subscriptions(
            max_total=self.config.max_subscriptions,
            max_per_peer=self.config.max_subscriptions_per_peer,
            server_filter=_NOT_REQUESTS,
        )
        self._subscriptions_changed = asyncio.Condition()
        self._gauged_topics: set[bytes] = set()
        self._held: dict[bytes, list[tuple[float, list[bytes]]]] = {}
        self._held_count = 0
        self._held_bytes = 0
        self._auth: AsyncioAuthenticator | None = None
        self._server_keys: set[bytes] | None = None
        self._topic_rules: dict[bytes, list[str]] | None = None
        self._replica_keys: dict[bytes, bytes] = {}
        """Under CURVE: the key each replica routing id is bound to."""
        self._counted = (0, 0, 0, 0)
        self._batched_counted = [0, 0]
        self._traces_wanted = False
        """Whether any subscriber takes trace events (servers hear it in every ``HB``)."""
        self._published: _Outgoing | None = None
        """Replies to publish once the current batch of replica messages is read."""
        self.xsub_endpoint = ""
        self.xpub_endpoint = ""
        self.router_endpoint: str | None = None
        self.metrics_url: str | None = None
        self.health_url: str | None = None
        """The readiness URL (on the metrics port)."""
        failover = self.config.failover
        self.bstar = BinaryStar(failover.primary, failover.heartbeat) if failover else None
        """The failover state machine; None for a lone proxy (always active)."""
        self.recovery = Recovery(self.config.recovery_window)
        self._unsettled: set[bytes] = set()
        """After a take-over: replicas that have not said what they hold yet."""
        self._settle_by = 0.0
        self._defer_until = 0.0
        self._peer_pub: SocketPair | None = None
        self._peer_sub: SocketPair | None = None
        self.peer_endpoint: str | None = None
        self._epoch = secrets.token_hex(4).encode()
        self.failover_changed = asyncio.Event()
        """Set whenever this proxy's failover state changes (clear it to wait again)."""

    async def start(self) -> None:
        """Bind the sockets, start the metrics endpoint and the forwarding loop."""
        try:
            await self._start()
        except BaseException:
            # Nothing may outlive a failed start: sockets, ZAP thread, context.
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        if self._transport is not None:
            if cfg.curve is not None:
                raise ConfigError("the in-memory bus has no CURVE")
            sockets: ProxySockets = self._transport.bind_proxy(
                with_router=cfg.router_bind is not None, hwm=cfg.hwm
            )
        else:
            sockets = self._bind_zmq()
        self._sockets = sockets
        self._xsub, self._xpub, self._router = sockets.xsub, sockets.xpub, sockets.router
        if isinstance(self._xsub, SocketPair) and isinstance(self._xpub, SocketPair):
            self._stream = _Stream(self._xpub)
        self.xsub_endpoint, self.xpub_endpoint, self.router_endpoint = sockets.endpoints
        self._xsub.send([b"\x01"])  # subscribe to everything (see module doc)
        if cfg.metrics_port is not None:
            port = self.metrics.serve(cfg.metrics_host, cfg.metrics_port, self.health)
            host = "127.0.0.1" if cfg.metrics_host in ("0.0.0.0", "", "::") else cfg.metrics_host  # noqa: S104
            self.metrics_url = f"http://{host}:{port}/metrics"
            self.health_url = url_for(cfg.metrics_host, port)
        self._tasks = [
            self.supervise(asyncio.create_task(self._forward(sockets), name="proxy-forward"))
        ]
        self._bound = True
        # A restart is a take-over from oneself: old dispatches' replies and
        # retransmissions meet here.
        self.recovery.begin(time.monotonic())
        self.groups.prefer = self.recovery.holder  # until the window ends (see HB handling)
        # A restart lost the replica table: a retransmission nobody holds yet
        # waits up to two heartbeats for its replica to rejoin and say so.
        self.groups.defer = self.recovery.waits
        self._defer_until = time.monotonic() + 2 * HEARTBEAT_INTERVAL
        if cfg.failover is not None:
            self.metrics.serving.set(0)  # until the pair settles or a client votes
            self._start_peer(cfg.failover)
        if cfg.curve is not None and isinstance(sockets, ZmqProxySockets):
            # Refused handshakes (no CURVE, a wrong proxy key) are logged.
            watched = {"publisher": sockets.xsub, "subscriber": sockets.xpub}
            if sockets.router is not None:
                watched["replica-group"] = sockets.router
            handshakes = HandshakeLog({n: pair.async_sock for n, pair in watched.items()})
            self._tasks.append(self.supervise(asyncio.create_task(handshakes.run())))
        log.info(
            "proxy up: xsub %s, xpub %s, router %s, metrics %s",
            self.xsub_endpoint,
            self.xpub_endpoint,
            self.router_endpoint,
            self.metrics_url,
        )

    def _bind_zmq(self) -> ZmqProxySockets:
        """The three ZeroMQ sockets, with their options, CURVE and binds."""
        cfg = self.config
        self._ctx = zmq.asyncio.Context()
        xsub = SocketPair(self._ctx, zmq.XSUB, linger_ms=cfg.linger_ms)
        xpub = SocketPair(self._ctx, zmq.XPUB, linger_ms=cfg.linger_ms)
        router: SocketPair | None = None
        xsub.set(zmq.RCVHWM, cfg.hwm)
        xpub.set(zmq.SNDHWM, cfg.subscriber_hwm)
        # With NODROP a send that some subscriber's full pipe refuses fails
        # as a whole, so we notice it (and then send lossy, see _send_xpub).
        xpub.set(zmq.XPUB_NODROP, 1)
        pairs = [xsub, xpub]
        if cfg.router_bind is not None:
            router = SocketPair(self._ctx, zmq.ROUTER, linger_ms=cfg.linger_ms)
            router.set(zmq.ROUTER_MANDATORY, 1)
            # A server reconnecting under its id may take its old connection
            # over, except under CURVE, where that would let one server key
            # steal another server's connection (ids are bound to keys there).
            router.set(zmq.ROUTER_HANDOVER, 0 if cfg.curve else 1)
            router.set(zmq.SNDHWM, cfg.hwm)
            router.set(zmq.RCVHWM, cfg.hwm)
            pairs.append(router)
        for pair in pairs:
            pair.set(zmq.MAXMSGSIZE, cfg.hard_message_bytes)
            pair.set(zmq.HEARTBEAT_IVL, max(1, int(cfg.stuck_timeout * 1000 / 4)))
            pair.set(zmq.HEARTBEAT_TIMEOUT, max(1, int(cfg.stuck_timeout * 1000)))
        if cfg.curve is not None:
            self._auth = start_authenticator(self._ctx, cfg.curve)
            self._server_keys = cfg.curve.server_keys()
            self._topic_rules = cfg.curve.server_topic_rules()
            cfg.curve.apply(xsub.async_sock, DOMAIN_PUBLISHERS)
            cfg.curve.apply(xpub.async_sock, DOMAIN_SUBSCRIBERS)
            if router is not None:
                cfg.curve.apply(router.async_sock, DOMAIN_SERVERS)
        try:
            xsub.async_sock.bind(bind_endpoint(cfg.xsub_bind))
            xpub.async_sock.bind(bind_endpoint(cfg.xpub_bind))
            if router is not None and cfg.router_bind is not None:
                router.async_sock.bind(bind_endpoint(cfg.router_bind))
        except zmq.ZMQError:
            for pair in pairs:
                pair.close()
            raise
        return ZmqProxySockets(xsub, xpub, router)

    async def stop(self) -> None:
        """Stop forwarding, let queued messages flush for ``linger``, close."""
        self._role_stopping = True
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

    def _readiness(self) -> str | None:
        """Ready once every socket is bound and the forwarding loop runs."""
        if self._role_stopping:
            return "stopping"
        return None if self._bound else "sockets not bound yet"

    def on_crash(self) -> None:
        """A dead forwarding loop fails liveness, so the orchestrator restarts us."""
        self.health.set_crashed(self.crash_reason or "a task died")

    def _close_sockets(self) -> None:
        if self._sockets is not None:
            self._sockets.close()
        for pair in (self._peer_pub, self._peer_sub):
            if pair is not None:
                pair.close()

    # -- failover pair (proxy/failover.py) ---------------------------------------

    def _start_peer(self, failover: FailoverConfig) -> None:
        """The state PUB/SUB pair with the peer proxy, and its task."""
        if self._ctx is None:
            raise ConfigError("a failover pair needs ZeroMQ (the in-memory bus has one proxy)")
        self._peer_pub = SocketPair(self._ctx, zmq.PUB)
        self._peer_sub = SocketPair(self._ctx, zmq.SUB)
        self._peer_sub.subscribe(STATE_VERSION)
        if self.config.curve is not None:
            # The pair shares one certificate (clients know one proxy key), so
            # each dials the other with its own; that key must be in the
            # servers' allow-list for the peer endpoint to admit it.
            curve = self.config.curve
            curve.apply(self._peer_pub.async_sock, DOMAIN_SERVERS)
            CurveKeys(curve.secret_file, curve.secret_file).apply(self._peer_sub.async_sock)
        self._peer_pub.async_sock.bind(bind_endpoint(failover.peer_bind))
        self._peer_sub.async_sock.connect(failover.peer_connect)
        self.peer_endpoint = self._peer_pub.last_endpoint()
        self._tasks.append(
            self.supervise(asyncio.create_task(self._peer_loop(failover), name="proxy-peer"))
        )

    async def _peer_loop(self, failover: FailoverConfig) -> None:
        """Tell the peer our state every heartbeat; follow its state.

        Its own sockets, its own task: it shares no socket with the
        forwarding loop, so it cannot swallow that loop's edges.
        """
        assert self._peer_pub is not None and self._peer_sub is not None and self.bstar
        bstar, sub = self.bstar, self._peer_sub
        while True:
            self._peer_pub.send([STATE_VERSION, bstar.wire_state()])
            deadline = time.monotonic() + failover.heartbeat
            while (left := deadline - time.monotonic()) > 0:
                if not await sub.wait_readable(left):
                    break
                for frames in sub.drain(64):
                    was_active = bstar.active
                    if len(frames) == 2 and bstar.on_peer(bytes(frames[1]), time.monotonic()):
                        self._role_changed(was_active)
            now = time.monotonic()
            if self.groups.settling and now >= self._settle_by:
                self._settle(now)
            if not self.recovery.open(now):
                self.groups.prefer = None

    def _role_changed(self, was_active: bool) -> None:
        assert self.bstar is not None
        log.warning("failover: this proxy is now %s", self.bstar.state.value)
        self.metrics.serving.set(1 if self.bstar.active else 0)
        self.failover_changed.set()
        if self.bstar.active and not was_active:
            # A new epoch for the take-over: a server's heartbeat that echoes
            # it was sent after the server heard of it, so its holding list
            # covers everything the dead proxy gave it (see _unsettled).
            self._epoch = secrets.token_hex(4).encode()
            now = time.monotonic()
            self.recovery.begin(now)
            self.groups.prefer = self.recovery.holder
            # Requests wait until every replica said what it holds (it answers
            # this heartbeat at once), so none runs twice on another replica.
            self._unsettled = set(self.groups.members)
            self._settle_by = now + 2 * HEARTBEAT_INTERVAL
            self.groups.settling = bool(self._unsettled)
        # Servers learn at once where replies go now.
        self._heartbeat_all()

    def _settle(self, now: float) -> None:
        self._unsettled.clear()
        self.groups.settle(now)

    def _role_frames(self) -> list[bytes]:
        """``HB``'s extra frames: active or passive (a lone proxy is active), and
        this start's or take-over's epoch (a server seeing a new one tells us
        what it holds, echoing it)."""
        active = self.bstar is None or self.bstar.active
        traces = TRACES_WANTED if self._traces_wanted else TRACES_UNWANTED
        return [ROLE_ACTIVE if active else ROLE_PASSIVE, self._epoch, _BATCHES, traces]

    def _trace_subscribers_changed(self) -> bool:
        """Recompute whether anyone subscribes to trace events; True if it changed.

        A table that refused a subscription is incomplete: then they count as wanted.
        """
        wanted = self._subs.saturated or self._subs.all.matches(_TRACE_TOPIC)
        changed = wanted != self._traces_wanted
        self._traces_wanted = wanted
        return changed

    def _drain_passive(self) -> None:
        """Passive: forward nothing; a client request or probe is a vote to take over."""
        assert self._xsub is not None and self.bstar is not None
        batch = self._xsub.drain(self.config.batch, copy=False)
        for index, frames in enumerate(batch):
            topic = frames[0].bytes
            voter = self._is_request(topic) or topic.startswith(_PROBE_PREFIX)
            if voter and self.bstar.on_vote(time.monotonic()):
                self._role_changed(False)
                self._forward_rest(batch[index:])
                return
            self.metrics.drop(topic[:MAX_TOPIC_BYTES], "passive")

    def _forward_rest(self, batch: list[list[zmq.Frame]]) -> None:
        """The rest of a batch, once a vote made us active."""
        now = time.monotonic()
        for frames in batch:
            topic = frames[0].bytes
            try:
                self._forward_one(topic, frames, now)
            except Exception:
                self._failed(topic, "a published message")

    @property
    def subscriptions(self) -> frozenset[bytes]:
        """Topic prefixes currently subscribed by at least one subscriber."""
        return frozenset(self._subs.all)

    async def wait_subscriptions(
        self, predicate: Callable[[frozenset[bytes]], bool], timeout: float
    ) -> None:
        """Wait until ``predicate(subscriptions)`` holds; ``TimeoutError`` after ``timeout`` s."""
        async with self._subscriptions_changed:
            await within(
                self._subscriptions_changed.wait_for(lambda: predicate(self.subscriptions)),
                timeout,
            )

    async def _forward(self, sockets: ProxySockets) -> None:
        """One loop for every socket and the housekeeping clock.

        ZeroMQ signals readiness through an edge-triggered FD per socket, and
        *any* operation on a socket (a send included) may consume that edge.
        Subscriptions are sent on XSUB, which requests are read from; group
        replies are published on XPUB, which subscriptions are read from.
        With a task per direction, a send could swallow the edge another task
        sleeps on and stall it; a single loop whose every wait starts with a
        level-triggered ``zmq_poll`` cannot miss one.

        Each message is handled in its own ``try`` (the handlers below), so
        no message can end this loop; an exception that still escapes here
        is a bug in the loop itself, and crashes the role (supervision).
        """
        with _collector_tuned(self._stream is not None):
            await self._forward_loop(sockets)

    async def _forward_loop(self, sockets: ProxySockets) -> None:
        tick = self.config.tick
        next_tick = time.monotonic() + tick
        next_heartbeat = time.monotonic()
        next_gauges = time.monotonic()
        io = self._io
        while True:
            xsub_ready, xpub_ready, router_ready = await sockets.wait(next_tick - time.monotonic())
            if xsub_ready or router_ready:
                # Dispatches made while handling these go out together after them.
                io.gathering = {}
                try:
                    if xsub_ready:
                        self._forward_messages()
                    if router_ready:
                        self._on_router()
                finally:
                    io.flush(time.monotonic())
            if xpub_ready:
                self._forward_subscriptions()
                async with self._subscriptions_changed:
                    self._subscriptions_changed.notify_all()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + tick
                try:
                    # Answers built here come from peers' payloads too: a
                    # failure is counted and the next tick tries again.
                    self.groups.tick(now)
                    self._expire_held(now)
                    self.health.tick()
                    if now >= next_heartbeat:
                        next_heartbeat = now + self.config.heartbeat_interval
                        self._heartbeat_all()
                    if now >= next_gauges:
                        next_gauges = now + self.config.gauge_interval
                        self._update_gauges()
                except Exception:
                    self._failed(_GROUP, "housekeeping")

    def _failed(self, topic: bytes, what: str) -> None:
        """A handler raised on one message: count it, log it (rate-limited), go on."""
        self.metrics.drop(topic, "internal_error")
        log.exception("failed to handle %s on %s; message dropped", what, safe(topic))

    def _forged(self, topic: bytes, frame: zmq.Frame) -> bool:
        """Under CURVE: a reply or trace event whose sender is not an allowed server."""
        server_keys = self._server_keys
        if server_keys is None:
            return False
        if not (topic.startswith(_REPLY_PREFIX) or topic.startswith(_TRACE_TOPIC)):
            return False
        return self._sender_key(frame) not in server_keys

    def _is_request(self, topic: bytes) -> bool:
        return bool(topic) and not topic.startswith(_NOT_REQUESTS)

    def _release_held(self, topic: bytes) -> None:
        # Exact topic only: a subscriber to the prefix "AGENT_REPLY_" must not
        # collect every reply waiting for its caller.
        held = self._held.pop(topic, None)
        if not held:
            return
        self._held_count -= len(held)
        for _, frames in held:
            self._held_bytes -= sum(map(len, frames))
            self._publish(frames)

    def _expire_held(self, now: float) -> None:
        for topic in list(self._held):
            held = self._held[topic]
            keep = [(expires, frames) for expires, frames in held if expires > now]
            if len(keep) == len(held):
                continue
            for expires, frames in held:
                if expires <= now:
                    self.metrics.drop(topic, "no_subscriber")
                    self._held_bytes -= sum(map(len, frames))
            self._held_count -= len(held) - len(keep)
            if keep:
                self._held[topic] = keep
            else:
                del self._held[topic]

    def _forward_messages(self) -> None:
        assert self._xsub is not None
        if self.bstar is not None and not self.bstar.active:
            self._drain_passive()
            return
        now = time.monotonic()
        # Frames, not copies: see _Stream. Under CURVE they also carry the
        # sender's key (User-Id).
        stream = self._stream
        batch = self._xsub.drain(self.config.batch, copy=False)
        # Per topic and batch: [plain, messages, bytes]. "Plain" topics need
        # no routing decision per message (see _plain_topic); their counts
        # go to the metrics once per batch.
        topics: dict[bytes, list[Any]] = {}
        max_request = self.config.max_message_bytes
        publish = stream.publish if stream is not None else None
        send = stream.send if stream is not None else None
        for frames in batch:
            topic = frames[0].bytes  # a zmq.Frame, or an in-memory frame
            entry = topics.get(topic)
            if entry is None:
                entry = topics[topic] = [self._plain_topic(topic), 0, 0]
            try:
                if entry[0] and send is not None and publish is not None:
                    size = sum(map(len, frames))
                    if size > max_request and entry[0] is _REQUEST:
                        size = self._forward_one(topic, frames, now)  # rejected there
                    else:
                        try:
                            if len(frames) == 2:  # _Stream.publish, inlined for the usual shape
                                send(frames[0], _SNDMORE_NOBLOCK, False)
                                send(frames[1], _NOBLOCK, False)
                            else:
                                publish(frames)
                        except zmq.Again:  # a full subscriber: the lossy retry
                            if not self._send_xpub(frames, copy=False):
                                self.metrics.drop(topic, "subscriber_hwm")
                else:
                    size = self._forward_one(topic, frames, now)
            except Exception:
                self._failed(topic, "a published message")
                continue
            if size:
                entry[1] += 1
                entry[2] += size
        counts = Counter({t: e[1] for t, e in topics.items() if e[1]})
        if counts:
            self.metrics.flush(DOWNSTREAM, counts, Counter({t: e[2] for t, e in topics.items()}))

    def _plain_topic(self, topic: bytes) -> object:
        """Whether messages on ``topic`` are only published, until this batch ends.

        False: each goes through :meth:`_forward_one` (CURVE checks, an
        over-long topic, a request that replica groups may route). Else
        ``_REQUEST`` (a request no group serves while a plain subscriber
        listens: still checked against the request size limit) or True.
        What decides it changes only between batches: subscriptions arrive
        on XPUB and replicas on the ROUTER, both read outside this loop.
        """
        if self._server_keys is not None or len(topic) > MAX_TOPIC_BYTES:
            return False
        if not self._is_request(topic):
            return True
        if self._router is None:
            return _REQUEST
        if self.groups.serves(topic) or not self._subs.servers.matches(topic):
            return False
        return _REQUEST

    def _forward_one(self, topic: bytes, frames: list[Any], now: float) -> int:
        """Route and publish one message from XSUB; its size if forwarded, else 0."""
        metrics = self.metrics
        if self._server_keys is not None and self._forged(topic, frames[0]):
            metrics.drop(topic, "forged_reply")
            return 0
        size = sum(len(f) for f in frames)
        if len(topic) > MAX_TOPIC_BYTES:
            metrics.drop(topic, "malformed")
            return 0
        request = self._is_request(topic)
        if request and size > self.config.max_message_bytes:
            metrics.drop(topic, "too_large")
            self._reject(topic, frames, ErrorCode.PAYLOAD_TOO_LARGE,
                             f"a request of {size} bytes is over the bus limit of "
                             f"{self.config.max_message_bytes} bytes")  # fmt: skip
            return 0
        routed = False
        if request and self._router is not None:
            plain = self._subs.servers.matches(topic)
            if len(frames) == 2:
                if stamps.ON:
                    stamps.stamp("proxy.in")
                routed = self.groups.on_request(topic, _raw(frames[1]), now, plain_subscriber=plain)
                if stamps.ON:
                    stamps.stamp("proxy.dispatched")
            elif not plain:
                routed = True
                self._reject(topic, frames, ErrorCode.BAD_REQUEST,
                             f"a request is 2 frames [topic, json]; got {len(frames)}")  # fmt: skip
        if not self._send_xpub(frames, copy=False) and not routed:
            metrics.drop(topic, "subscriber_hwm")
        return size

    def _send_xpub(self, frames: list[Any], *, copy: bool = True) -> bool:
        """Publish on XPUB; a subscriber whose pipe is full misses it, no one else.

        With ``XPUB_NODROP`` a send fails as a whole when *any* matching
        subscriber is full, so one subscriber to ``""`` that never reads
        would block every reply. On that failure the message is sent again
        lossy: libzmq then drops it for the full pipes only. The drop is
        counted, and ZMTP heartbeats disconnect a subscriber stuck for good.
        Returns False only if nobody could take it.
        """
        assert self._xpub is not None
        xpub = self._xpub
        try:
            if not copy and self._stream is not None:
                self._stream.publish(frames)
            else:
                xpub.send(frames, copy=copy)
            return True
        except zmq.Again:
            pass
        self.metrics.drop(frames[0] if isinstance(frames[0], bytes) else frames[0].bytes,
                          "slow_subscriber")  # fmt: skip
        xpub.set(zmq.XPUB_NODROP, 0)
        try:
            xpub.send(frames, copy=copy)
        except zmq.Again:
            return False
        finally:
            xpub.set(zmq.XPUB_NODROP, 1)
        return True

    def _reject(self, topic: bytes, frames: list[Any], code: ErrorCode, why: str) -> None:
        # Only the first KiB is searched for the address: a huge payload costs nothing.
        head = b"\n".join(_raw(f)[:1024] for f in frames[1:3])
        self._io.reply_error(Job(b"", topic, head, time.monotonic()), code, why)

    def _forward_subscriptions(self) -> None:
        """Track (un)subscriptions; they are *not* sent on to publishers.

        The proxy's XSUB subscribes to everything once, so publishers send
        everything anyway. Forwarding every client's reply-topic subscription
        as well (what ``zmq_proxy`` does) would copy the whole table into
        every publisher; and a publisher socket reads those only when its
        owner next uses it, so an idle client's inbound pipe would fill, its
        connection stop answering heartbeats, and be dropped.
        """
        assert self._xpub is not None
        metrics, subs = self.metrics, self._subs
        counts: Counter[bytes] = Counter()
        sizes: Counter[bytes] = Counter()
        for frames in self._xpub.drain(self.config.batch, copy=False):
            event = frames[0]
            raw = event.bytes
            if not raw or raw[0] not in (0, 1):
                continue  # only (un)subscribe commands travel upstream
            topic = raw[1:]
            try:
                if raw[0] == 1:
                    if not subs.subscribe(topic, self._key_of(event)):
                        metrics.drop(topic[:MAX_TOPIC_BYTES], "subscription_refused")
                        continue
                    self._release_held(topic)
                elif not subs.unsubscribe(topic):
                    continue
            except Exception:
                self._failed(topic[:MAX_TOPIC_BYTES], "a subscription")
                continue
            counts[topic] += 1
            sizes[topic] += len(raw)
        metrics.subscriptions.set(len(subs))
        if counts:
            metrics.flush(UPSTREAM, counts, sizes)
        # After every batch, counted or not: a refused subscription (maybe to
        # traces) leaves the table incomplete, and that alone makes them wanted.
        if self._trace_subscribers_changed() and self._router is not None:
            # At once: requests dispatched after this go behind it on
            # each replica's pipe, so their traces reach the new subscriber.
            self._heartbeat_all()

    @staticmethod
    def _key_of(frame: zmq.Frame) -> str | None:
        """The sender's CURVE key, None on an open bus."""
        with contextlib.suppress(zmq.ZMQError):
            value = frame.get("User-Id")
            if isinstance(value, str) and value:
                return value
        return None

    def _sender_key(self, frame: zmq.Frame) -> bytes:
        """The sender's CURVE key as allow-lists hold it (empty on an open bus)."""
        return (self._key_of(frame) or "").encode()

    def _on_router(self) -> None:
        assert self._router is not None
        now = time.monotonic()
        # The replies of one batch are published together after it (back to
        # back, one wake-up of ZeroMQ's I/O thread for the lot) and counted
        # once (not one labels().inc() per reply): the counters are exact
        # between batches.
        self._published = published = _Outgoing()

        try:
            for frames in self._router.drain(self.config.batch, copy=False):
                try:
                    self._on_replica_message(frames, now)
                except Exception:
                    self._failed(_GROUP, "a replica message")
        finally:
            self._published = None
            self._publish_batch(published)

    def _publish_batch(self, batch: _Outgoing) -> None:
        counts: Counter[bytes] = Counter()
        sizes: Counter[bytes] = Counter()
        for frames in batch.replies:
            topic = frames[0]
            try:
                sent = self._send_xpub(frames)
            except Exception:
                self._failed(topic, "a reply")
                continue
            if not sent:
                self.metrics.drop(topic, "subscriber_hwm")
                continue
            counts[topic] += 1
            sizes[topic] += sum(map(len, frames))
        if counts:
            self.metrics.flush(DOWNSTREAM, counts, sizes)

    def _on_replica_message(self, frames: list[Any], now: float) -> None:
        groups = self.groups
        if len(frames) < 3 or len(frames) > _MAX_REPLICA_FRAMES or _raw(frames[1]) != VERSION:
            self.metrics.drop(_GROUP, "malformed")
            return
        identity, command = _raw(frames[0]), _raw(frames[2])
        args = [_raw(f) for f in frames[3:]]
        if self._server_keys is not None and not self._key_matches(identity, frames[1], command):
            self.metrics.drop(_GROUP, "impersonation")
            return
        passive = self.bstar is not None and not self.bstar.active
        if passive and command not in (HB, BYE):
            # Replies and hand-backs belong to the active proxy (servers send
            # them there); one queued for us before a restart is not ours.
            self.metrics.drop(_GROUP, "passive")
            return
        try:
            if command == HB and len(args) == 1:
                state = self._allowed_state(frames[1], ServerState.from_bytes(args[0]))
                if groups.defer is not None and now >= self._defer_until:
                    groups.defer = None
                    groups.settle(now)  # what waited goes anywhere now
                recovering = self.recovery.open(now)
                groups.admit_unsettled = recovering and not passive
                if not recovering and groups.prefer is not None:
                    groups.prefer = None  # the window is over: dispatch pays nothing
                groups.on_heartbeat(identity, state, now)
                if self._server_keys is not None and identity in groups.members:
                    self._replica_keys.setdefault(identity, self._sender_key(frames[1]))
                if passive or recovering:
                    self.recovery.note_holding(identity, state.holding, serving=not passive)
                    if groups.defer is not None and state.holding and not passive:
                        groups.pump_all(now)  # retransmissions waiting for this holder
                if self.groups.settling and state.epoch.encode() == self._epoch:
                    self._unsettled.discard(identity)
                    if not self._unsettled:
                        self._settle(now)
                self._io_send(identity, [VERSION, HB, *self._role_frames()])
            elif command == REPLY and len(args) == 3:
                self._on_reply(identity, args[0], args[1], args[2], b"", now)
            elif command == REPLY and args and len(args) % REPLY_GROUP == 0:
                if len(args) > REPLY_GROUP:
                    self._io.batched[1] += len(args) // REPLY_GROUP
                for i in range(0, len(args), REPLY_GROUP):
                    self._on_reply(identity, args[i], args[i + 1], args[i + 2], args[i + 3], now)
            elif command == RETURN and (len(args) == 1 or (len(args) == 2 and args[1] == BUSY)):
                groups.on_return(identity, args[0], now, busy=len(args) == 2)
            elif command == BYE:
                groups.on_bye(identity, now)
            else:
                raise ValueError(f"unknown command {safe(command)} with {len(args)} frames")
        except ValueError as exc:
            log.warning("bad message from replica %s: %s", safe(identity), exc)
            self.metrics.drop(_GROUP, "malformed")

    def _on_reply(self, identity: bytes, dispatch_id: bytes, reply_to: bytes, payload: bytes,
                  flag: bytes, now: float) -> None:  # fmt: skip
        """One reply (of a batch, perhaps): a malformed one costs only itself."""
        if flag not in (b"", INLINE):
            log.warning("bad reply from replica %s: flag %s", safe(identity), safe(flag))
            self.metrics.drop(_GROUP, "malformed")
            return
        if reply_to and not is_reply_topic(reply_to):
            # Answered, but published nowhere: a reply may only go to a
            # reply topic, never into a request or an internal topic.
            self.metrics.drop(_GROUP, "bad_reply_to")
            reply_to = b""
        if stamps.ON:
            stamps.stamp("proxy.reply")
        try:
            self.groups.on_reply(identity, dispatch_id, reply_to, payload, now, inline=bool(flag))
        except Exception:
            self._failed(_GROUP, "a reply")
        if stamps.ON:
            stamps.stamp("proxy.published")

    def _key_matches(self, identity: bytes, frame: zmq.Frame, command: bytes) -> bool:
        """Under CURVE: is this message's key the one its routing id is bound to?

        An id is bound when its first heartbeat is admitted and forgotten when
        the replica leaves or dies (see :meth:`_update_gauges`).
        """
        bound = self._replica_keys.get(identity)
        if bound is None or bound == self._sender_key(frame):
            return True
        log.warning("replica id %s used by a second key; message dropped", safe(identity))
        return False

    def _allowed_state(self, frame: zmq.Frame, state: ServerState) -> ServerState:
        """Keep only the topics this server's key may serve (CURVE topic allow-list)."""
        rules = self._topic_rules
        if rules is None:
            return state
        patterns = rules.get(self._sender_key(frame), [])
        allowed = [t for t in state.topics if any(fnmatch.fnmatchcase(t, p) for p in patterns)]
        if len(allowed) != len(state.topics):
            refused = sorted(set(state.topics) - set(allowed))
            self.metrics.drop(_GROUP, "topic_not_allowed")
            log.warning("server %s may not serve %s", safe(state.server_id), ", ".join(refused))
            return state.model_copy(update={"topics": allowed})
        return state

    def _io_send(self, identity: bytes, frames: list[bytes]) -> None:
        assert self._router is not None
        # A replica that is gone stops heartbeating and is removed then.
        with contextlib.suppress(zmq.ZMQError):
            self._router.send([identity, *frames])

    def _heartbeat_all(self) -> None:
        frames = [VERSION, HB, *self._role_frames()]
        for identity in list(self.groups.members):
            self._io_send(identity, frames)

    def _publish(self, frames: list[bytes]) -> None:
        """Publish a reply; hold it a while if its caller is not subscribed (yet)."""
        topic = frames[0]
        if not self._subs.all.matches(topic) and not self._subs.saturated:
            size = sum(map(len, frames))
            cfg = self.config
            if (
                self._held_count >= cfg.max_held_replies
                or self._held_bytes + size > cfg.max_held_bytes
            ):
                self.metrics.drop(topic, "no_subscriber")
                return
            expires = time.monotonic() + cfg.hold_replies
            self._held.setdefault(topic, []).append((expires, frames))
            self._held_count += 1
            self._held_bytes += size
            return
        published = self._published
        if published is not None:  # within a batch of replica messages: sent after it
            published.replies.append(frames)
            return
        if not self._send_xpub(frames):
            self.metrics.drop(frames[0], "subscriber_hwm")
            return
        self.metrics.flush(
            DOWNSTREAM, Counter({frames[0]: 1}), Counter({frames[0]: sum(map(len, frames))})
        )

    def _update_gauges(self) -> None:
        groups, metrics = self.groups, self.metrics
        topics = groups.topics()
        # A passive half serves nothing, so its load reads 0 (even work it kept
        # after yielding): KEDA sums both halves and must see the active one's.
        serving = 1 if self.bstar is None or self.bstar.active else 0
        metrics.set_topics(
            {
                metrics.topic_label(topic): (
                    groups.queue_depth(topic) * serving,
                    groups.inflight_count(topic) * serving,
                    groups.replica_count(topic),
                )
                for topic in topics | self._gauged_topics
            }
        )
        self._gauged_topics = topics
        metrics.set_replicas(groups.members.values())
        if len(self._replica_keys) > len(groups.members):
            self._replica_keys = {
                i: k for i, k in self._replica_keys.items() if i in groups.members
            }
        # The state machine keeps plain totals; counters move by the difference.
        counted = (groups.redelivered, groups.duplicates_dropped, groups.foreign_dropped,
                   groups.bounced)  # fmt: skip
        metrics.redelivered.inc(counted[0] - self._counted[0])
        metrics.duplicates.inc(counted[1] - self._counted[1])
        metrics.lane_bounced.inc(counted[3] - self._counted[3])
        for i, kind in enumerate(("dispatch", "reply")):
            metrics.batched.labels(kind).inc(self._io.batched[i] - self._batched_counted[i])
        self._batched_counted = list(self._io.batched)
        if counted[2] > self._counted[2]:
            metrics.dropped.labels("_SKILLSCALE_GROUP", "foreign_reply").inc(
                counted[2] - self._counted[2]
            )
        self._counted = counted


async def run_proxy(config: ProxyConfig, stop: asyncio.Event, on_ready: object = None) -> None:
    """Run a proxy until ``stop`` is set; ``on_ready(proxy)`` is called once bound."""
    async with Proxy(config) as proxy:
        if callable(on_ready):
            on_ready(proxy)
        await stop.wait()
