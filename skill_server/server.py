"""The skill server role: take requests, queue, execute, reply.

Two intakes, one pipeline:

* ``group`` (default): a DEALER connected to the proxy's ROUTER. The server
  announces its topics and free slots in a heartbeat every second; the proxy
  sends it requests one by one within those slots, so replicas of a topic
  share the work instead of each running all of it. Replies return on the
  same socket and the proxy publishes the first one per request.
* ``pubsub``: the reference's model: SUB on the proxy's XPUB for its topics,
  PUB on the proxy's XSUB for replies. Every server of a topic runs every
  request; kept for compatibility and for topics served by reference servers.

Life of a server, top to bottom:

1. ``start``: load skills, start the workers, connect, prove the path to the
   proxy (a heartbeat answered, or a probe round trip), start receiving.
2. Each request is decoded at once, so malformed or excess requests are
   answered even when every worker is busy; valid ones go into a bounded
   queue (capacity = workers + queue size; beyond it: ``overloaded`` in
   pubsub mode, a hand-back to the proxy in group mode).
3. ``workers`` tasks run requests through the :class:`RequestHandler`; each
   request gets exactly one reply.
4. ``stop``: stop taking work (group: announce draining and hand queued work
   back for another replica; pubsub: unsubscribe and answer what arrived),
   let running work finish within ``grace`` seconds, then cancel the rest
   (group: handed back; pubsub: answered ``overloaded``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from skillscale.core import stamps
from skillscale.core.errors import ConfigError, ErrorCode
from skillscale.core.events import (
    SKILLS_CHANGED_TOPIC,
    TRACE_TOPIC,
    caller_id,
    execution_trace_json,
    payload_fields,
)
from skillscale.core.health import HealthServer, RoleHealth, url_for
from skillscale.core.llm import LLMClient, LLMSettings
from skillscale.core.matchers import resolve_matcher, wants_llm
from skillscale.core.matching import DEFAULT_THRESHOLD
from skillscale.core.protocol import (
    MAX_REPLY_BYTES,
    PROBE_TOPIC_PREFIX,
    TOPIC_PATTERN,
    Reply,
    Request,
    is_valid_id,
)
from skillscale.core.replica_protocol import (
    BUSY,
    BYE,
    DEFAULT_PROXY_ROUTER,
    HB,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    INLINE,
    LANE,
    MAX_BATCH,
    MAX_SKILLS_PER_SERVER,
    MAX_SLOTS,
    REPLY,
    REPLY_GROUP,
    REQ,
    REQ_GROUP,
    RETURN,
    VERSION,
    ServerState,
    join_batch,
    skills_digest,
)
from skillscale.core.runtime import AsyncRole, safe, within
from skillscale.core.security import CurveKeys, ProbeSocket, diagnosed
from skillscale.core.transport import (
    BusSocket,
    DealerSocket,
    Frames,
    Transport,
    ZmqTransport,
    await_roundtrip,
    env_str,
    proxy_xpub_endpoint,
    proxy_xsub_endpoint,
    pump,
    split_endpoints,
)
from skillscale.skill_server.dedupe import DedupeConfig, DedupeWindow, mark_deduplicated
from skillscale.skill_server.executor import ResourceLimits, SubprocessExecutor
from skillscale.skill_server.handler import HandlerConfig, Rejection, RequestHandler
from skillscale.skill_server.proxies import ProxyLinks
from skillscale.skill_server.registry import SkillRegistry
from skillscale.skill_server.warm import WAITING_CHILDREN, ForkServerUnavailable, WarmExecutor

log = logging.getLogger(__name__)
_EPOCH = re.compile(rb"[0-9a-f]{1,32}")

MAX_REQ_FRAMES = REQ_GROUP * MAX_BATCH
"""The most frames after ``REQ`` a batched dispatch may have."""
REPLY_SEND_TIMEOUT = 60.0
"""Seconds a group reply may wait for the proxy (e.g. across a restart)."""

TRACE_BATCH = 64
"""Trace events held at most before they are sent together."""
TRACE_DELAY = 0.02
"""Seconds a trace event waits at most for others to go with it.

A lone PUB send wakes ZeroMQ's I/O thread (and then the proxy's) once per
event, ~40 µs of CPU each on a small VM; events are best-effort and nobody
waits for them, so they leave in bursts instead (issue 14)."""


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
    mode: Literal["group", "pubsub"] = "group"
    proxy_router: str = field(
        default_factory=lambda: env_str("SKILLSCALE_PROXY_ROUTER", DEFAULT_PROXY_ROUTER)
    )
    proxy_xsub: str = field(default_factory=proxy_xsub_endpoint)
    proxy_xpub: str = field(default_factory=proxy_xpub_endpoint)
    workers: int = field(default_factory=default_workers)
    queue_size: int = 256
    inline_slots: int = 32
    """Group mode: dispatches the proxy may send beyond the worker slots for
    requests answered without a worker (instruction-only skills, answers that
    need no skill), so a burst of them travels in batches instead of two at a
    time. The proxy opens this lane one reply marked ``inline`` at a time; a
    lane dispatch that needs a worker while all are taken goes straight back
    (``busy``), so nothing waits here that another replica could run, and the
    proxy's queue stays the autoscaling signal. 0 closes the lane."""
    prefetch: int = 0
    """Group mode: requests the proxy may dispatch beyond the free workers (announced
    as slots), so the next ones are already here when a worker frees up and a
    burst travels in batches. Instruction-only skills, answered without a worker,
    then take many at once. The cost: what waits here cannot go to another
    replica that frees up first, and the proxy's queue depth (the autoscaling
    signal) leaves it out."""
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
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    trace_events: bool = True
    """Publish an execution trace per request on ``_SKILLSCALE_TRACE``."""
    trace_payloads: bool = False
    """Put every request's task and reply (redacted, 4 KiB each) in its trace event;
    requests to a skill in canary carry them regardless, for the distiller's judge."""
    reload_interval: float = 2.0
    """Seconds between checks for added, removed or edited skills; 0 disables."""
    resources: ResourceLimits = field(default_factory=ResourceLimits)
    curve: CurveKeys | None = None
    executor: Literal["warm", "cold"] = "warm"
    """warm: Python skills fork from a pre-imported fork server; cold: a new
    interpreter per run."""
    preload: list[str] | None = None
    """Modules the fork server imports (None: the default set)."""
    waiting_children: int = WAITING_CHILDREN
    """Warm children forked ahead, each waiting for one run (0: fork on demand)."""
    matcher: str = "auto"
    """A name from :func:`skillscale.core.matchers.matcher_names` (checked when the
    server is built); auto: the LLM when one is configured, else keywords."""
    llm: LLMSettings | None = None
    """None: read the configuration (file and environment)."""
    health_port: int | None = None
    """HTTP port for ``/healthz`` and ``/readyz`` (0 = any free); None: no endpoint."""
    health_host: str = "127.0.0.1"
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    """The window of recent requests that makes a retransmission run once."""


@dataclass
class Job:
    """A decoded request and where its reply goes."""

    request: Request
    received_at: float
    dispatch_id: bytes | None = None
    """Set for requests that came through the replica group."""
    attempt: int = 1
    history: list[str] = field(default_factory=list)
    topic: str = ""
    origin: int = 0
    """Which proxy link (of a failover pair) dispatched it."""
    mode: bytes | None = None
    """The dispatch's ``mode`` frame (None from a proxy that sends none)."""
    inline: bool = False
    """Answered without a worker."""

    @property
    def key(self) -> tuple[str, str]:
        """The dedupe key: the caller and its id."""
        return (self.request.reply_to, self.request.request_id)


class SkillServer(AsyncRole):
    """One skill server; use as ``async with SkillServer(cfg) as server``.

    ``transport``: None connects over ZeroMQ (a context of its own); any
    :class:`~skillscale.core.transport.Transport` (e.g. an in-memory
    :class:`~skillscale.core.memory_bus.MemoryBus`) is used as given and
    left open at stop.
    """

    def __init__(self, config: ServerConfig, *, transport: Transport | None = None) -> None:
        if not config.topics:
            raise ValueError("a skill server needs at least one topic")
        if config.workers < 1 or config.queue_size < 1:
            raise ValueError("workers and queue_size must be at least 1")
        if not 0 <= config.prefetch <= config.queue_size:
            raise ConfigError(
                f"prefetch {config.prefetch} must be between 0 and the queue size "
                f"({config.queue_size})"
            )
        if not 0 <= config.inline_slots <= MAX_SLOTS:
            raise ConfigError(
                f"inline slots {config.inline_slots} must be between 0 and {MAX_SLOTS}"
            )
        bad = [t for t in config.topics if not re.match(TOPIC_PATTERN, t)]
        if bad:
            raise ConfigError(f"invalid topic {safe(bad[0])}: use letters, digits and _.:/-")
        if not is_valid_id(config.server_id):
            raise ConfigError(
                f"server id {safe(config.server_id)} must be 1-128 characters of "
                "letters, digits and _.:@-"
            )
        self.config = config
        settings = None
        if wants_llm(config.matcher):  # ConfigError for a name nobody registered
            settings = config.llm or LLMSettings.load()
        # The matcher registry resolves "auto" and refuses a matcher that needs
        # an LLM before one is built (LLMClient imports openai).
        matcher = resolve_matcher(config.matcher, llm_configured=settings is not None)
        self.llm = LLMClient(settings) if settings is not None else None
        if settings is not None and not settings.api_key and not _loopback(settings.base_url):
            # Once, at start: a hosted API refuses every key-less call, and each
            # request then pays the retries before it falls back to keywords.
            log.warning(
                "an LLM (%s at %s) is configured without an API key: a hosted endpoint "
                "refuses every call and each request falls back to keyword matching after "
                "retries; set SKILLSCALE_LLM_API_KEY, or unset the LLM settings",
                settings.model,
                settings.base_url or "the OpenAI API",
            )
        self.registry = SkillRegistry(config.skills_dirs, config.threshold, self.llm, matcher)
        self.executor: SubprocessExecutor = (
            WarmExecutor(config.python, config.preload, config.waiting_children)
            if config.executor == "warm"
            else SubprocessExecutor(config.python)
        )
        self.handler = RequestHandler(
            self.registry,
            self.executor,
            HandlerConfig(
                server_id=config.server_id,
                topics=frozenset(config.topics),
                default_timeout=config.default_timeout,
                max_request_bytes=config.max_request_bytes,
                max_output_bytes=config.max_output_bytes,
                resources=config.resources,
            ),
            llm_env=settings.skill_env() if settings is not None else None,
        )
        self._topics = {t.encode() for t in config.topics}
        # Capacity counts running and waiting requests together, so a burst
        # that lands in one receive batch (before any worker has woken) still
        # fills every worker and then the queue.
        self._capacity = config.workers + config.queue_size
        self._in_flight = 0
        self._workers: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[Job] = asyncio.Queue(self._capacity)
        self._given_transport = transport
        self._bus: Transport | None = None
        self._sub: BusSocket | None = None
        self._pub: BusSocket | None = None
        self._traces: list[bytes] = []
        self.traces_unwanted = 0
        """Trace events not built because no proxy had a subscriber for them."""
        self._traces_timer: asyncio.TimerHandle | None = None
        self._changes: BusSocket | None = None
        self._dealers: list[DealerSocket] = []
        self._links = ProxyLinks(1)
        self._collecting: dict[asyncio.Task[Any] | None, tuple[int, list[list[bytes]]]] = {}
        """While a receiver answers a batched ``REQ``, by its task: its link and
        the replies it made (sent as batched ``REPLY`` after the batch)."""
        self._window: DedupeWindow[Job] = DedupeWindow(config.dedupe)
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self._proxy_seen = 0.0
        self._proxy_ready: asyncio.Event = asyncio.Event()
        self._serving = False
        self.health = RoleHealth(self._readiness)
        self._health_http: HealthServer | None = None
        self.health_url: str | None = None
        """The readiness URL once the health endpoint listens."""

    @property
    def _dealer(self) -> DealerSocket | None:
        """The first proxy link (the only one without a failover pair)."""
        return self._dealers[0] if self._dealers else None

    @property
    def in_flight(self) -> int:
        """Requests queued or running."""
        return self._in_flight

    # -- start -----------------------------------------------------------------

    async def start(self) -> None:
        """Load skills, connect, prove the path to the proxy, start serving."""
        cfg = self.config
        if cfg.health_port is not None:
            # Before anything slow: liveness answers while we wait for the proxy.
            self._health_http = HealthServer(self.health)
            port = self._health_http.serve(cfg.health_host, cfg.health_port)
            self.health_url = url_for(cfg.health_host, port)
        self.registry.reload()
        log.info(
            "server %s (%s, %s matching): topics %s, skills %s",
            cfg.server_id,
            cfg.mode,
            self.registry.matcher_name,
            ", ".join(cfg.topics),
            ", ".join(self.registry.names) or "(none)",
        )
        self._expect_imports()
        if isinstance(self.executor, WarmExecutor):
            try:
                await self.executor.start()
            except ForkServerUnavailable as exc:
                log.error("%s; Python skills run cold until it is back", exc)
        self._bus = self._given_transport or ZmqTransport()
        self._accepting = True
        if self._health_http is not None:
            self._tasks.append(
                self.supervise(asyncio.create_task(self._loop_ticks(), name="health-ticks"))
            )
        if cfg.reload_interval > 0:
            self._tasks.append(
                self.supervise(asyncio.create_task(self._watch_skills(), name="skill-watch"))
            )
        # Skills-changed events (rollout promotions...) reload at once, between requests.
        self._changes = self._bus.subscriber(cfg.proxy_xpub, [SKILLS_CHANGED_TOPIC.encode()],
                                             hwm=1000, max_message_bytes=1 << 20,
                                             curve=cfg.curve)  # fmt: skip
        self._tasks.append(self.supervise(asyncio.create_task(
            self.registry.follow_changes(self._changes, self._expect_imports),
            name="skills-changed")))  # fmt: skip
        self._workers = [
            self.supervise(asyncio.create_task(self._work(), name=f"worker-{i}"))
            for i in range(cfg.workers)
        ]
        try:
            if cfg.mode == "group":
                await self._start_group()
            else:
                await self._start_pubsub()
        except BaseException:
            await self.stop(grace=0)
            raise
        self._serving = True

    async def _loop_ticks(self) -> None:
        """Liveness: the event loop still runs (a wedged loop stops these ticks)."""
        while True:
            self.health.tick()
            await asyncio.sleep(1.0)  # the liveness clock itself, not a wait for work

    def _readiness(self) -> str | None:
        """Serving: the proxy accepted our heartbeat lately, and the fork server is up."""
        if self._role_stopping:
            return "stopping"
        if not self._serving:
            return f"starting: no answer from the proxy at {self.config.proxy_router} yet"
        if not self._accepting:
            return "not taking work (a task died)"
        if self.config.mode == "group":
            silent = time.monotonic() - self._proxy_seen
            if silent > HEARTBEAT_TIMEOUT:
                return f"the proxy has not answered our heartbeats for {silent:.0f} s"
        if isinstance(self.executor, WarmExecutor) and not self.executor.running:
            return "the fork server is not running (Python skills would run cold)"
        return None

    async def _start_group(self) -> None:
        cfg = self.config
        assert self._bus is not None
        # One DEALER per proxy (a failover pair gives two): heartbeats go to
        # every one, replies to the active one (see skill_server/proxies.py).
        routers = split_endpoints(cfg.proxy_router)
        self._links = ProxyLinks(len(routers))
        for endpoint in routers:
            self._dealers.append(self._bus.dealer(endpoint, cfg.server_id.encode(), hwm=cfg.hwm,
                                                  linger_ms=1000, curve=cfg.curve))  # fmt: skip
        if cfg.trace_events:
            self._pub = self._bus.publisher(cfg.proxy_xsub, hwm=cfg.hwm, linger_ms=1000,
                                            curve=cfg.curve)  # fmt: skip
        # Workers and the heartbeat task send on the DEALER while the receiver
        # awaits it (see ZmqDealer for why that is safe with ZeroMQ).
        for link in range(len(self._dealers)):
            self._tasks.append(
                self.supervise(
                    asyncio.create_task(self._receive_group(link), name=f"receiver-{link}")
                )
            )
        self._tasks.append(
            self.supervise(asyncio.create_task(self._heartbeats(), name="heartbeats"))
        )
        ready = within(self._proxy_ready.wait(), timeout=cfg.ready_timeout)
        try:
            await self._diagnosed(ready, routers[0], socket_type="dealer")
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"no answer from the proxy's group endpoint {cfg.proxy_router} "
                f"within {cfg.ready_timeout} s"
            ) from None

    async def _diagnosed(
        self, attempt: Awaitable[Any], endpoint: str, *, socket_type: ProbeSocket
    ) -> None:
        """Await the first contact with the proxy; a refused handshake (no CURVE
        keys against a CURVE proxy, an unlisted key) is named: fatal with a start
        deadline, else one warning while the wait goes on."""
        if isinstance(self._bus, ZmqTransport):
            await diagnosed(attempt, self._bus.ctx, endpoint, self.config.curve, who="server",
                            timeout=self.config.ready_timeout, socket_type=socket_type)  # fmt: skip
        else:
            await attempt

    async def _start_pubsub(self) -> None:
        cfg = self.config
        assert self._bus is not None
        probe = f"{PROBE_TOPIC_PREFIX}{cfg.server_id}".encode()
        self._sub = self._bus.subscriber(cfg.proxy_xpub, [*sorted(self._topics), probe],
                                         hwm=cfg.hwm, curve=cfg.curve)  # fmt: skip
        self._pub = self._bus.publisher(cfg.proxy_xsub, hwm=cfg.hwm, linger_ms=1000,
                                        curve=cfg.curve)  # fmt: skip
        # Requests that arrive during the handshake are served, not lost.
        roundtrip = await_roundtrip(
            self._pub,
            self._sub,
            probe,
            timeout=cfg.ready_timeout,
            on_other=self._on_pubsub_message,
            what=f"proxy at {cfg.proxy_xpub}",
        )
        await self._diagnosed(roundtrip, split_endpoints(cfg.proxy_xsub)[0], socket_type="pub")
        self._sub.unsubscribe(probe)
        self._tasks.append(
            self.supervise(asyncio.create_task(self._receive_pubsub(), name="receiver"))
        )

    # -- stop ------------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        """Two-phase stop: refuse new work, drain for ``grace`` s, cancel the rest."""
        grace = self.config.grace if grace is None else grace
        self._role_stopping = True
        self._accepting = False
        self._serving = False
        if self._dealers_open():
            await self._send_all([VERSION, HB, self._state().to_bytes()])
            while not self._queue.empty():
                job = self._queue.get_nowait()
                self._finish(job)
                await self._hand_back(job)
        else:
            await self._stop_pubsub_intake()
        workers = list(self._workers)
        if workers:
            try:
                await within(self._queue.join(), timeout=grace)
            except asyncio.TimeoutError:
                log.warning("grace period of %.1f s over; cancelling unfinished work", grace)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._workers = []
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self._finish(job)
            await self._answer_unfinished(job, "the server stopped before running it")
        if self._dealers_open():
            await self._send_all([VERSION, BYE])
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flush_traces()  # the last ones (the PUB lingers to deliver them)
        for pair in (self._sub, self._pub, self._changes):
            if pair is not None:
                pair.close()
        for dealer in self._dealers:
            dealer.close()
        await self.executor.close()
        if self.llm is not None:
            await self.llm.close()
        if self._health_http is not None:
            self._health_http.close()
            self._health_http = None
        if self._bus is not None:
            bus, self._bus = self._bus, None
            if bus is not self._given_transport:
                # term() waits for linger (final replies to flush): off the loop.
                await asyncio.get_running_loop().run_in_executor(None, bus.close)

    async def _stop_pubsub_intake(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._sub is not None and not self._sub.closed:
            for topic in self._topics:
                self._sub.unsubscribe(topic)
            for frames in self._sub.drain(10_000):
                self._on_pubsub_message(frames)  # answered "overloaded": we are stopping
            self._sub.close()

    # -- intake: group -----------------------------------------------------------

    def on_crash(self) -> None:
        """A task died: take no more work; the next heartbeat says ``draining``."""
        self._accepting = False
        self.health.set_crashed(self.crash_reason or "a task died")

    def _state(self, holding: list[str] | None = None, link: int | None = None) -> ServerState:
        names = self.registry.names
        epoch = self._links.epochs[link] if link is not None else None
        return ServerState(
            server_id=self.config.server_id,
            topics=self.config.topics,
            slots=min(self.config.workers + self.config.prefetch, MAX_SLOTS),
            inline_slots=self.config.inline_slots,  # checked at start: <= MAX_SLOTS
            batches=MAX_BATCH,
            busy=self._in_flight,
            # (a heartbeat is bounded; the catalogue intent lists them all)
            digest=skills_digest((n, self.registry.catalog.skills[n].version) for n in names),
            draining=not self._accepting,
            skills=names[:MAX_SKILLS_PER_SERVER],
            holding=holding or [],
            # The proxy's bytes, untrusted: echoed only in the form proxies send.
            epoch=epoch.decode() if epoch is not None and _EPOCH.fullmatch(epoch) else "",
        )

    async def _watch_skills(self) -> None:
        """New, removed and edited skills take effect without a restart."""
        while True:
            await asyncio.sleep(self.config.reload_interval)  # the check period, not a hot path
            try:
                changed = self.registry.reload_if_changed()
            except Exception:
                log.exception("skill rescan failed; keeping the current skills")
                continue
            if changed:
                log.info("skills reloaded: %s", ", ".join(self.registry.names) or "(none)")
                self._expect_imports()

    def _expect_imports(self) -> None:
        """Tell a warm executor what the skills import, for its preload."""
        executor = self.executor
        if isinstance(executor, WarmExecutor):
            skills = self.registry.catalog.skills.values()
            executor.expect(s.entrypoint for s in skills if s.entrypoint and executor.is_warm(s))

    async def _heartbeats(self) -> None:
        warned = False
        while True:
            await self._send_heartbeats()
            await asyncio.sleep(self.config.heartbeat_interval)  # the heartbeat period itself
            silent = time.monotonic() - self._proxy_seen
            if self._proxy_ready.is_set() and silent > HEARTBEAT_TIMEOUT and not warned:
                log.warning("proxy silent for %.1f s; reconnecting in the background", silent)
            warned = silent > HEARTBEAT_TIMEOUT

    async def _send_heartbeats(self) -> None:
        """One heartbeat to each proxy; a passive one also hears what we hold."""
        now = time.monotonic()
        plain: bytes | None = None
        held: list[str] | None = None
        for link in range(len(self._dealers)):
            if self._links.passive(link, now):
                if held is None:
                    held = self._window.holding(now)
                # Per link: the list comes with the epoch that proxy told us.
                frame = self._state(held, link).to_bytes()
            else:
                # No list, so no epoch: a proxy settling a take-over must not
                # take this for the list it asked for (see ServerState.epoch).
                if plain is None:
                    plain = self._state().to_bytes()
                frame = plain
            await self._send_group([VERSION, HB, frame], block=False, link=link)

    async def _receive_group(self, link: int = 0) -> None:
        dealer = self._dealers[link]
        while True:
            frames = await dealer.recv_multipart()
            self._proxy_seen = time.monotonic()
            if len(frames) < 2 or frames[0] != VERSION:
                log.warning("ignoring a malformed message from the proxy")
                continue
            command, args = frames[1], frames[2:]
            if command == HB:
                if self._links.on_heartbeat(link, args, self._proxy_seen):
                    # A take-over or a restart: tell that proxy what we hold,
                    # so retransmissions go to us (proxy/failover.py).
                    held = self._state(self._window.holding(self._proxy_seen), link)
                    await self._send_group([VERSION, HB, held.to_bytes()], block=False, link=link)
                self._proxy_ready.set()
            elif command == REQ and 4 <= len(args) <= REQ_GROUP:
                if stamps.ON:
                    stamps.stamp("server.recv")
                await self._take_dispatch(args, link)
            elif command == REQ and len(args) % REQ_GROUP == 0 and len(args) <= MAX_REQ_FRAMES:
                await self._take_batch(args, link)
            elif command == REQ and args:
                # Not ours to guess at: back to the proxy, which answers in the end.
                log.warning("handing back a malformed dispatch of %d frames", len(args))
                await self._send_group([VERSION, RETURN, args[0]], link=link)
            else:
                log.warning("ignoring unknown proxy command %s", safe(command))

    async def _take_dispatch(self, args: list[bytes], link: int) -> None:
        try:
            await self._on_group_request(args, link)
        except Exception:
            # One bad dispatch must not end intake: hand it back (the
            # proxy gives up after its max attempts, with an answer).
            log.exception("failed to take dispatch %s; handing it back", safe(args[0]))
            await self._send_group([VERSION, RETURN, args[0]], link=link)

    async def _take_batch(self, args: list[bytes], link: int) -> None:
        """A batched ``REQ``: each group as its own dispatch; what is answered
        here goes back as batched ``REPLY`` (when that proxy takes them)."""
        replies: list[list[bytes]] = []
        task = asyncio.current_task()
        if self._links.batches[link] > 1:
            self._collecting[task] = (link, replies)
        try:
            for i in range(0, len(args), REQ_GROUP):
                if stamps.ON:
                    stamps.stamp("server.recv")
                await self._take_dispatch(args[i : i + REQ_GROUP], link)
        finally:
            self._collecting.pop(task, None)
            if replies:
                for frames in join_batch(replies, REPLY_GROUP, self._links.batches[link]):
                    await self._send_group(frames, link=link)

    async def _on_group_request(self, args: list[bytes], link: int = 0) -> None:
        dispatch_id, topic, payload, attempt_raw = args[:4]
        history = (
            [h for h in args[4].decode(errors="replace").split(",") if h] if len(args) > 4 else []
        )
        # A proxy that sends the mode frame reads the optional reply frames.
        mode = args[5] if len(args) > 5 else None
        decoded = self.handler.decode(payload)
        if isinstance(decoded, Rejection):
            reply_to = decoded.reply_to or ""
            frames = [VERSION, REPLY, dispatch_id, reply_to.encode(), decoded.reply.to_bytes()]
            if mode is not None:
                frames.append(INLINE)
            await self._send_group(frames, link=link)
            return
        job = Job(
            decoded,
            time.monotonic(),
            dispatch_id,
            int(attempt_raw or b"1"),
            history,
            topic.decode(errors="replace"),
            origin=link,
            mode=mode,
            inline=True,
        )
        duplicate = self._window.lookup(job.key, job, job.received_at)
        if duplicate is True:
            return  # answered with the running original, taking no worker
        if duplicate:
            await self._send_reply(job, duplicate)
            return
        if not self._accepting or self._in_flight >= self._capacity:
            await self._hand_back(job)
            return
        self._window.start(job.key, job.received_at)
        # An instruction-only skill (or an answer that needs no skill) is
        # answered here, in this receiving task: no queue, no worker, one
        # event-loop hop less per request. Still one reply, deadline-checked.
        reply = self.handler.process_now(job.request, job.received_at)
        if reply is not None:
            await self._answer(job, reply)
            return
        job.inline = False
        if mode == LANE and self._in_flight >= self.config.workers + self.config.prefetch:
            # Sent on the inline lane, yet it needs a worker and none is free:
            # back to the proxy's queue at once, where any replica can take it.
            await self._hand_back(job, busy=True)
            return
        self._in_flight += 1
        self._queue.put_nowait(job)
        if stamps.ON:
            stamps.stamp("server.decoded")

    def _dealers_open(self) -> bool:
        return any(not d.closed for d in self._dealers)

    async def _send_all(self, frames: list[bytes]) -> None:
        """To every proxy (the draining heartbeat, ``BYE``).

        Only a single proxy is waited for: of a pair, one may be dead, and
        a stop must not wait on it (the other sees us go silent anyway); nor
        one that never answered (e.g. it refused our CURVE handshake).
        """
        block = len(self._dealers) == 1 and self._proxy_ready.is_set()
        for link in range(len(self._dealers)):
            await self._send_group(frames, block=block, link=link)

    async def _send_reply(self, job: Job, payload: bytes) -> None:
        """A group reply goes to the active proxy, waiting for one during a take-over."""
        assert job.dispatch_id is not None
        frames = [VERSION, REPLY, job.dispatch_id, job.request.reply_to.encode(), payload]
        if job.inline and job.mode is not None:
            frames.append(INLINE)
        deadline = time.monotonic() + REPLY_SEND_TIMEOUT
        while (link := self._links.target(job.origin, time.monotonic())) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("no active proxy for %.0f s; reply to %s dropped",
                          REPLY_SEND_TIMEOUT, safe(job.request.request_id))  # fmt: skip
                return
            await self._links.wait_change(min(remaining, 1.0))
        await self._send_group(frames, link=link)

    async def _send_group(self, frames: list[bytes], *, block: bool = True,
                          link: int = 0) -> bool:  # fmt: skip
        """Send on a DEALER through the asyncio API; False if it could not go."""
        collecting = self._collecting.get(asyncio.current_task()) if self._collecting else None
        if collecting is not None and collecting[0] == link and frames[1] == REPLY:
            # A reply the receiver made answering a batch: it leaves with the batch.
            collecting[1].append(frames if len(frames) == 2 + REPLY_GROUP else [*frames, b""])
            return True
        dealer = self._dealers[link] if link < len(self._dealers) else None
        if dealer is None or dealer.closed:
            return False
        sent = await dealer.send(frames, timeout=REPLY_SEND_TIMEOUT if block else None)
        if not sent and block:
            log.error("could not deliver %s to the proxy in %.0f s", frames[1],
                      REPLY_SEND_TIMEOUT)  # fmt: skip
        return sent

    async def _hand_back(self, job: Job, *, busy: bool = False) -> None:
        assert job.dispatch_id is not None
        # Whatever waited for it goes back too: it was never answered here.
        for waiting in [job, *self._window.abandon(job.key)]:
            assert waiting.dispatch_id is not None
            frames = [VERSION, RETURN, waiting.dispatch_id]
            if busy and waiting is job:
                frames.append(BUSY)
            await self._send_group(frames, link=waiting.origin)

    # -- intake: pubsub ----------------------------------------------------------

    async def _receive_pubsub(self) -> None:
        assert self._sub is not None
        await pump(self._sub, self._on_pubsub_message)

    def _on_pubsub_message(self, frames: Frames) -> None:
        topic = bytes(frames[0])
        if topic not in self._topics:
            # ZeroMQ matches prefixes: TOPIC_ECHO also hears TOPIC_ECHO_V2.
            return
        if len(frames) != 2:
            decoded: Request | Rejection = self.handler.reject(
                b"\n".join(bytes(f) for f in frames[1:]),
                ErrorCode.BAD_REQUEST,
                f"a request is 2 frames [topic, json]; got {len(frames)}",
            )
        else:
            decoded = self.handler.decode(bytes(frames[1]))
        if isinstance(decoded, Rejection):
            if decoded.reply_to is None:
                log.warning("unanswerable request on %s: %s", safe(topic), decoded.reply.error)
            else:
                self._publish(decoded.reply_to, decoded.reply)
            return
        job = Job(decoded, time.monotonic(), topic=topic.decode(errors="replace"))
        duplicate = self._window.lookup(job.key, job, job.received_at)
        if duplicate is True:
            return  # answered with the running original
        if duplicate:
            self._publish_raw(job.request.reply_to, duplicate)
            return
        if not self._accepting:
            self._publish_error(job, ErrorCode.OVERLOADED, "the server is stopping; retry")
        elif self._in_flight >= self._capacity:
            self._publish_error(
                job,
                ErrorCode.OVERLOADED,
                f"server {self.config.server_id} is running {self.config.workers} and holding "
                f"{self.config.queue_size} more requests; retry later",
            )
        else:
            self._window.start(job.key, job.received_at)
            self._in_flight += 1
            self._queue.put_nowait(job)

    def _publish(self, reply_to: str, reply: Reply) -> None:
        self._publish_raw(reply_to, reply.to_bytes())

    def _publish_raw(self, reply_to: str, payload: bytes) -> None:
        if self._pub is None or self._pub.closed:
            log.error("cannot send a reply to %s: socket closed", safe(reply_to))
            return
        self._pub.send([reply_to.encode(), payload])

    def _publish_error(self, job: Job, code: ErrorCode, message: str) -> None:
        request = job.request
        reply = Reply.failure(request.request_id, code, message, server_id=self.config.server_id)
        self._publish(request.reply_to, reply)
        for _ in self._window.abandon(job.key):  # duplicates waiting for it
            self._publish(request.reply_to, reply)

    # -- the pipeline ------------------------------------------------------------

    def _finish(self, job: Job) -> None:
        self._in_flight -= 1
        self._queue.task_done()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            if stamps.ON:
                stamps.stamp("server.worker")
            try:
                reply = await self.handler.process(job.request, job.received_at)
            except Exception as exc:  # process() never raises; if it does, answer anyway
                log.exception("handler failed on %s", job.request.request_id)
                reply = Reply.failure(job.request.request_id, ErrorCode.INTERNAL,
                                      f"internal server error: {type(exc).__name__}",
                                      server_id=self.config.server_id)  # fmt: skip
            except asyncio.CancelledError:
                self._finish(job)
                await asyncio.shield(
                    self._answer_unfinished(job, "the server stopped while running it")
                )
                raise
            self._finish(job)
            await self._answer(job, reply)

    async def _answer(self, job: Job, reply: Reply) -> None:
        if job.dispatch_id is not None and reply.trace is not None:
            reply.trace.attempt = job.attempt
            reply.trace.redelivered_from = job.history or None
        await self._reply(job, reply)

    def _emit_trace(self, job: Job, reply: Reply) -> None:
        if not self.config.trace_events or self._pub is None or self._pub.closed:
            return
        if not self._links.traces_wanted:
            self.traces_unwanted += 1
            return  # nobody subscribes (the proxy says so in each heartbeat)
        trace = reply.trace
        request = job.request
        # A plain dict written by execution_trace_json: the model's bytes
        # without building the model (a third of the cost, per request).
        event: dict[str, Any] = {
            "request_id": request.request_id,
            "caller": caller_id(request.reply_to),
            "server_id": self.config.server_id,
            "topic": job.topic,
            "skill": reply.skill,
            "skill_version": reply.skill_version,
            "matcher_mode": trace.matcher_mode if trace else None,
            "input_bytes": len(request.intent.encode(errors="surrogatepass")),
            "outcome": "success" if reply.ok else (reply.error_code or ErrorCode.INTERNAL).value,
            "exit_code": trace.exit_code if trace else None,
            "elapsed_ms": reply.elapsed_ms,
            "attempt": job.attempt if job.dispatch_id is not None else None,
        }
        event.update(self.handler.event_details(reply))
        # The judge compares the two arms of a canary on the same kind of
        # content, so both carry it; other requests only with --trace-payloads.
        if reply.skill is not None and (
            self.config.trace_payloads or (trace is not None and trace.candidate is not None)
        ):
            event.update(payload_fields(request.intent, reply.content if reply.ok
                                        else (reply.error or "")))  # fmt: skip
        try:
            encoded = execution_trace_json(event)
        except (ValueError, TypeError) as exc:
            # Best-effort, and after the reply: a value JSON cannot carry (a
            # lone surrogate) costs this event, never the request.
            log.warning("trace event of %s not sent: %s", safe(request.request_id), exc)
            return
        self._traces.append(encoded)
        if len(self._traces) >= TRACE_BATCH:
            self._flush_traces()
        elif self._traces_timer is None:
            self._traces_timer = asyncio.get_running_loop().call_later(
                TRACE_DELAY, self._flush_traces
            )

    def _flush_traces(self) -> None:
        """Send the trace events that wait, back to back."""
        if self._traces_timer is not None:
            self._traces_timer.cancel()
            self._traces_timer = None
        traces, self._traces = self._traces, []
        if self._pub is None or self._pub.closed:
            return
        topic = TRACE_TOPIC.encode()
        for encoded in traces:
            self._pub.send([topic, encoded])

    async def _reply(self, job: Job, reply: Reply) -> None:
        if stamps.ON:
            stamps.stamp("server.encode")
        await self._deliver(job, reply)
        # After the reply, not before: the caller waits for the reply, nobody
        # for the trace event (one more model dump on the critical path).
        self._emit_trace(job, reply)

    async def _deliver(self, job: Job, reply: Reply) -> None:
        """Encode the reply (bounded), answer the job and any duplicates waiting on it."""
        payload = reply.to_bytes()
        if len(payload) > MAX_REPLY_BYTES - 4096:
            # Past the bus limit ZeroMQ would disconnect us and the caller would
            # hear nothing: escaped JSON can be several times the raw output.
            payload = Reply.failure(
                reply.request_id, ErrorCode.OUTPUT_TOO_LARGE,
                f"the reply is {len(payload)} bytes as JSON, over the bus limit of "
                f"{MAX_REPLY_BYTES} bytes", server_id=self.config.server_id,
            ).to_bytes()  # fmt: skip
        waiting = self._window.finish(job.key, payload, time.monotonic())
        marked = mark_deduplicated(payload) if waiting else b""
        for each, answer in [(job, payload), *((w, marked) for w in waiting)]:
            if each.dispatch_id is None:
                self._publish_raw(each.request.reply_to, answer)
            else:
                # A reply that cannot reach the proxy is logged by _send_group;
                # the proxy re-dispatches the job when this replica goes silent,
                # and a retransmission is answered from the window.
                await self._send_reply(each, answer)
        if stamps.ON:
            stamps.stamp("server.replied")

    async def _answer_unfinished(self, job: Job, why: str) -> None:
        """Group work goes back for another replica; pubsub work gets an error."""
        if job.dispatch_id is not None:
            await self._hand_back(job)
        else:
            self._publish_error(job, ErrorCode.OVERLOADED, f"{why}; retry")


def _loopback(base_url: str | None) -> bool:
    """True for an endpoint on this machine (Ollama, vLLM), which needs no key."""
    host = urlsplit(base_url).hostname if base_url else None
    return host in ("localhost", "127.0.0.1", "::1") or bool(host and host.startswith("127."))
