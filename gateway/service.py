"""The gateway role: one object owning its SDK client, event subscription and scraper.

Read top to bottom: :meth:`Gateway.start` connects the SDK client (proven
round trip), subscribes to the event topics and starts the one reader task;
calls go through :meth:`invoke`; every answer (success or error) is kept in
a bounded ring of recent requests with the trace events the servers
published for it; SSE listeners get events through bounded queues (a slow
browser loses events, never the gateway's memory); :meth:`stop` stops the
reader, closes the listeners, then the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from skillscale.core import rollout
from skillscale.core.discovery import Catalog, SkillDiscovery
from skillscale.core.errors import ErrorCode, SkillNotFoundError, SkillScaleError
from skillscale.core.events import SKILLS_CHANGED_TOPIC, TRACE_TOPIC, SkillsChangedEvent
from skillscale.core.llm import LLMClient, LLMSettings
from skillscale.core.protocol import MAX_REQUEST_BYTES, TOPIC_PREFIX, Reply, topic_for_category
from skillscale.core.runtime import AsyncRole
from skillscale.core.security import CurveKeys
from skillscale.core.transport import (
    BusSocket,
    Frames,
    Transport,
    ZmqTransport,
    proxy_xpub_endpoint,
    proxy_xsub_endpoint,
    pump,
)
from skillscale.gateway import versions
from skillscale.gateway.models import (
    CanarySample,
    ErrorDetail,
    ReplicaState,
    RequestRecord,
    RolloutStatus,
    RouteInfo,
    SkillHistory,
    SkillInfo,
    SkillList,
    Stats,
    Timing,
    TopicInfo,
    TopicStats,
    VersionDiff,
)
from skillscale.sdk.client import SkillScaleClient
from skillscale.sdk.router import TopicRouter

log = logging.getLogger(__name__)

EVENT_TOPICS = (TRACE_TOPIC, SKILLS_CHANGED_TOPIC)
MAX_EVENT_BYTES = 1024 * 1024
CATALOG_TTL = 5.0
"""Seconds a fetched catalogue is reused (a skills-changed event drops it at once)."""
CATALOG_TIMEOUT = 5.0
METRICS_TTL = 0.5
METRICS_TIMEOUT = 2.0
MAX_METRICS_BYTES = 8 * 1024 * 1024
MAX_REPLICAS = 1000
LISTENER_QUEUE = 256
MAX_LISTENERS = 64
CANARY_SAMPLES = 500
"""Canary evidence samples kept per canary (for the console's plot)."""
CANARY_SKILLS = 64
RolloutChange = Literal["promote", "canary", "reject", "rollback"]
ORPHAN_EVENTS = 1024
"""Trace events kept for request ids the ring has not seen yet (they race the reply)."""


@dataclass
class GatewayConfig:
    """What the gateway serves and where the fabric is. Durations in seconds."""

    host: str = "127.0.0.1"
    port: int = 8401
    token: str | None = None
    proxy_xsub: str | None = None
    proxy_xpub: str | None = None
    metrics_url: str | None = "http://127.0.0.1:9100/metrics"
    skills_dirs: list[Path] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    """Topics to offer besides those the proxy's metrics and the skills dirs name."""
    timeout: float = 60.0
    connect_timeout: float = 10.0
    max_body_bytes: int = MAX_REQUEST_BYTES
    recent: int = 256
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    matcher: str = "auto"
    llm: LLMSettings | None = None
    curve: CurveKeys | None = None


class Gateway(AsyncRole):
    """``async with Gateway(config) as gw: ...``; the FastAPI app calls its methods."""

    def __init__(self, config: GatewayConfig, *, transport: Transport | None = None) -> None:
        self.config = config
        self._given_transport = transport
        self.client = SkillScaleClient(
            config.proxy_xsub or proxy_xsub_endpoint(),
            config.proxy_xpub or proxy_xpub_endpoint(),
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            curve=config.curve,
            transport=transport,
        )
        self._bus: Transport | None = None
        self._events: BusSocket | None = None
        self._changes: BusSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._recent: OrderedDict[str, RequestRecord] = OrderedDict()
        self._orphans: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.malformed_events = 0  # bus events that were not a JSON object
        self._listeners: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._catalog: tuple[float, SkillList] | None = None
        self._catalog_lock = asyncio.Lock()
        self._stats: tuple[float, Stats] | None = None
        self._router: tuple[SkillList, TopicRouter] | None = None
        self._canary_samples: OrderedDict[tuple[str, str, str, float], deque[CanarySample]] = (
            OrderedDict()
        )
        self._known: tuple[tuple[object, object, object], frozenset[str]] | None = None
        # The local library: SKILL.md bodies, validation, versions, and the skills
        # that exist only as drafts (no SKILL.md of their own, so no server has them).
        self._local, self._drafts = _scan_library(config.skills_dirs)
        self._library_at = time.monotonic()
        self.ready = False

    # -- life --------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the fabric and subscribe to its events; ready on return."""
        cfg = self.config
        await self.client.connect()
        try:
            self._bus = bus = self._given_transport or ZmqTransport()
            self._events = bus.subscriber(
                self.client.proxy_xpub,
                [t.encode() for t in EVENT_TOPICS],
                hwm=10_000,
                max_message_bytes=MAX_EVENT_BYTES,
                curve=cfg.curve,
            )
            # Rollout changes made here are announced as the distiller announces
            # its own, so servers reload the skill at once, not on their rescan.
            self._changes = bus.publisher(self.client.proxy_xsub, hwm=100, linger_ms=500,
                                          curve=cfg.curve)  # fmt: skip
            self._http = httpx.AsyncClient(timeout=METRICS_TIMEOUT)
            self._reader = self.supervise(
                asyncio.create_task(self._read_events(), name="gateway-events")
            )
        except BaseException:
            await self.stop()
            raise
        self.ready = True

    async def stop(self) -> None:
        """Stop reading events, end every event stream, close the client."""
        self.ready = False
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self.end_streams()
        if self._events is not None:
            self._events.close(0)
            self._events = None
        if self._changes is not None:
            self._changes.close()
            self._changes = None
        if self._bus is not None and self._bus is not self._given_transport:
            self._bus.close()
        self._bus = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._router is not None and self._router[1].llm is not None:
            await self._router[1].llm.close()
        await self.client.close()

    # -- events ------------------------------------------------------------

    async def _read_events(self) -> None:
        assert self._events is not None
        await pump(self._events, self._on_event)

    def _on_event(self, frames: Frames) -> None:
        if len(frames) != 2:
            return
        topic = bytes(frames[0]).decode("utf-8", "replace")
        if topic not in EVENT_TOPICS:  # ZeroMQ matches prefixes; we want whole topics
            return
        try:
            event = json.loads(bytes(frames[1]))
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            event = None
        if not isinstance(event, dict):
            # A peer's bad message costs one count and one (rate-limited)
            # warning; it must not end the events task.
            self.malformed_events += 1
            log.warning("gateway: a malformed %s event was dropped", topic)
            return
        event.setdefault("event", "execution" if topic == TRACE_TOPIC else "skills_changed")
        event["_topic"] = topic
        if topic == SKILLS_CHANGED_TOPIC:
            self._catalog = None  # the next catalogue request asks the servers again
            self._library_at = -math.inf  # and reads the local library again
        else:
            self._attach(event)
        self.publish(event)

    def _attach(self, event: dict[str, Any]) -> None:
        rid = event.get("request_id")
        if not isinstance(rid, str):
            return
        record = self._recent.get(rid)
        if record is not None:
            record.events.append(event)
            return
        self._orphans.setdefault(rid, []).append(event)
        while len(self._orphans) > ORPHAN_EVENTS:
            self._orphans.popitem(last=False)

    def end_streams(self) -> None:
        """End every open event stream (at stop, before the HTTP server's grace)."""
        for queue in list(self._listeners):
            if queue.full():
                queue.get_nowait()  # the end marker must get in
            queue.put_nowait(None)

    def publish(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to every event-stream listener; a full listener misses it."""
        for queue in self._listeners:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        """Events as they arrive, until the gateway stops (for ``GET /v1/events``)."""
        if len(self._listeners) >= MAX_LISTENERS:
            raise SkillScaleError(
                f"{MAX_LISTENERS} event streams are open already", code=ErrorCode.OVERLOADED
            )
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(LISTENER_QUEUE)
        self._listeners.add(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._listeners.discard(queue)

    # -- calls -------------------------------------------------------------

    def known_topics(self) -> frozenset[str]:
        """Topics the gateway may send to: configured, local and last seen served."""
        # Asked on every call: recomputed only when one of its sources changed.
        # (The cache holds its sources, so "is" cannot be fooled by a reused id.)
        sources = (self._local, self._catalog, self._stats)
        known = self._known
        if known is not None and all(a is b for a, b in zip(known[0], sources, strict=True)):
            return known[1]
        topics = set(self.config.topics) | set(self._local.topics())
        if self._catalog is not None:
            topics |= {s.topic for s in self._catalog[1].skills}
        if self._stats is not None:
            topics |= {t.topic for t in self._stats[1].topics if t.replicas}
        self._known = (sources, frozenset(topics))
        return self._known[1]

    async def invoke(
        self,
        topic: str,
        intent: str | dict[str, Any],
        *,
        timeout: float | None,
        route: RouteInfo | None = None,
    ) -> RequestRecord:
        """Send one request; the record of its answer (kept in the recent ring).

        Never raises for a fabric error: the record carries it, with the
        HTTP status the API answers with.
        """
        started = time.perf_counter()
        received = time.time()
        try:
            reply: Reply | SkillScaleError = await self.client.call(topic, intent, timeout=timeout)
        except SkillScaleError as exc:
            reply = exc
        gateway_ms = round((time.perf_counter() - started) * 1000, 3)
        # Records are built with model_construct: every value comes from a reply
        # the SDK has validated already, or from here; a second validation per
        # request would only cost time.
        if isinstance(reply, SkillScaleError):
            rid = reply.request_id or f"gw-{int(received * 1e6):x}"
            record = RequestRecord.model_construct(
                request_id=rid,
                topic=topic,
                intent=intent,
                received_at=received,
                status="error",
                http_status=http_status(reply.code),
                error=error_detail(reply.code, reply.message, rid, reply.trace or None),
                timing=Timing.model_construct(gateway_ms=gateway_ms),
                route=route,
                events=self._orphans.pop(rid, []),
            )
        else:
            trace = reply.trace.model_dump(exclude_none=True) if reply.trace else None
            server_ms = reply.elapsed_ms
            timing = Timing.model_construct(
                gateway_ms=gateway_ms,
                server_ms=server_ms,
                queue_ms=(trace or {}).get("queue_ms"),
                exec_ms=(trace or {}).get("elapsed_ms"),
                bus_ms=round(gateway_ms - server_ms, 3) if server_ms is not None else None,
            )
            code = reply.error_code or ErrorCode.EXEC_FAILED
            record = RequestRecord.model_construct(
                request_id=reply.request_id,
                topic=topic,
                intent=intent,
                received_at=received,
                status="success" if reply.ok else "error",
                http_status=200 if reply.ok else http_status(code),
                content=reply.content if reply.ok else None,
                error=None
                if reply.ok
                else error_detail(code, reply.error or "error reply", reply.request_id, trace),
                skill=reply.skill,
                skill_version=reply.skill_version,
                server_id=reply.server_id,
                trace=trace,
                timing=timing,
                route=route,
                # Given, not defaulted: a default_factory costs model_construct
                # an inspect.signature call.
                events=self._orphans.pop(reply.request_id, []),
            )
        self._remember(record)
        return record

    def _remember(self, record: RequestRecord) -> None:
        self._recent[record.request_id] = record
        while len(self._recent) > self.config.recent:
            self._recent.popitem(last=False)
        if not self._listeners:
            return
        self.publish(
            {
                "event": "request",
                "request_id": record.request_id,
                "topic": record.topic,
                "status": record.status,
                "http_status": record.http_status,
                "gateway_ms": record.timing.gateway_ms,
            }
        )

    def recent(self, limit: int) -> list[RequestRecord]:
        """The newest ``limit`` records, newest first."""
        return list(reversed(self._recent.values()))[:limit]

    def request(self, request_id: str) -> RequestRecord | None:
        """One recent record, if the ring still holds it."""
        return self._recent.get(request_id)

    async def route(self, task: str) -> RouteInfo:
        """The topic for ``task`` over the live catalogue (keyword or LLM router)."""
        listing = await self.skills()
        if self._router is None or self._router[0] is not listing:
            catalog = Catalog()
            by_name = {s.name: s for s in self._local.skills.values()}
            for info in listing.skills:
                local = by_name.get(info.name)
                if local is None:
                    continue  # only a skill with a description we hold can be matched
                catalog.skills[info.name] = local
                catalog.category_of[info.name] = _category(info.topic)
            if not catalog.skills:
                catalog = self._local
            settings = self.config.llm
            llm = LLMClient(settings) if settings is not None else None
            if self._router is not None and self._router[1].llm is not None:
                await self._router[1].llm.close()
            self._router = (listing, TopicRouter(catalog, llm, self.config.matcher))
        route = await self._router[1].route(task)
        return RouteInfo(topic=route.topic, mode=route.mode, detail=route.detail)

    # -- catalogue ---------------------------------------------------------

    async def skills(self) -> SkillList:
        """The live catalogue: every known topic's servers asked over the bus."""
        cached = self._catalog
        if cached is not None and time.monotonic() - cached[0] < CATALOG_TTL:
            return cached[1]
        async with self._catalog_lock:
            cached = self._catalog
            if cached is not None and time.monotonic() - cached[0] < CATALOG_TTL:
                return cached[1]
            listing = await self._fetch_catalog()
            self._catalog = (time.monotonic(), listing)
            return listing

    async def _refresh_library(self, *, max_age: float = 0.0) -> None:
        """Read the local library again (in a thread) when older than ``max_age``:
        the distiller adds drafts and promotes them while the gateway runs."""
        if not self.config.skills_dirs or time.monotonic() - self._library_at < max_age:
            return
        self._library_at = time.monotonic()
        self._local, self._drafts = await asyncio.to_thread(_scan_library, self.config.skills_dirs)

    async def _fetch_catalog(self) -> SkillList:
        await self._refresh_library(max_age=CATALOG_TTL)
        stats = await self.stats()
        topics = set(self.config.topics) | set(self._local.topics())
        topics |= {t.topic for t in stats.topics if t.replicas}
        results = await asyncio.gather(
            *(self._catalog_of(t) for t in sorted(topics)), return_exceptions=True
        )
        problems: dict[str, list[str]] = {}
        for problem in self._local.problems:
            problems.setdefault(problem.path.parent.name, []).append(problem.message)
        skills: list[SkillInfo] = []
        errors: dict[str, ErrorDetail] = {}
        seen: set[tuple[str, str]] = set()
        for topic, result in zip(sorted(topics), results, strict=True):
            if isinstance(result, SkillScaleError):
                errors[topic] = error_detail(result.code, result.message, result.request_id)
                continue
            if isinstance(result, BaseException):
                raise result
            for item in result:
                name = str(item.get("name", ""))
                local = self._local.skills.get(name)
                seen.add((topic, name))
                skills.append(
                    SkillInfo(
                        name=name,
                        topic=topic,
                        description=str(item.get("description", "")),
                        version=_opt_str(item.get("version")),
                        timeout=_opt_float(item.get("timeout")),
                        metadata={str(k): str(v) for k, v in (item.get("metadata") or {}).items()},
                        live=True,
                        body=local.body if local is not None else None,
                        problems=problems.get(name, []),
                    )
                )
        for topic, local_skills in self._local.topics().items():
            for skill in local_skills:
                if (topic, skill.name) not in seen:
                    skills.append(
                        SkillInfo(
                            name=skill.name,
                            topic=topic,
                            description=skill.description,
                            version=skill.version,
                            timeout=skill.timeout,
                            metadata=dict(skill.metadata),
                            live=False,
                            body=skill.body,
                        )
                    )
        skills.extend(await asyncio.to_thread(self._draft_skills))
        for problem in self._local.problems:
            folder = problem.path.parent if problem.path.name == "SKILL.md" else problem.path
            skills.append(
                SkillInfo(
                    name=folder.name,
                    topic=topic_for_category(folder.parent.name),
                    description="",
                    live=False,
                    valid=False,
                    problems=[problem.message],
                )
            )
        await asyncio.to_thread(self._add_rollout_states, skills)
        skills.sort(key=lambda s: (s.topic, s.name))
        return SkillList(skills=skills, errors=errors)

    def _add_rollout_states(self, skills: list[SkillInfo]) -> None:
        """Each local skill's rollout state, drafts and degraded flag (blocking reads)."""
        for info in skills:
            skill = self._local.skills.get(info.name)
            if info.rollout_state is not None or skill is None:
                continue
            if topic_for_category(self._local.category_of[info.name]) != info.topic:
                continue
            state = rollout.read_rollout(skill.path)
            if state is None:
                info.rollout_state = "active"
                continue
            status = state.status()
            info.rollout_state = status["state"]
            info.degraded, info.drafts = state.degraded, state.drafts()

    def _draft_skills(self) -> list[SkillInfo]:
        """The skills that exist only as drafts, described by their newest draft."""
        out = []
        for name, folder in sorted(self._drafts.items()):
            if name in self._local.skills:
                continue  # a served skill of that name wins; its drafts show there
            state = rollout.read_rollout(folder)
            drafts = state.drafts() if state is not None else []
            info = SkillInfo(name=name, topic=_draft_topic(folder), description="", live=False,
                             rollout_state="draft", drafts=drafts)  # fmt: skip
            try:
                draft = rollout.load_version(folder, drafts[-1])
            except (IndexError, rollout.RolloutError, SkillScaleError) as exc:
                info.valid = False
                info.problems = [getattr(exc, "message", None) or "the draft is missing"]
            else:
                info.description, info.version, info.timeout = (
                    draft.description,
                    draft.version,
                    draft.timeout,
                )
                info.metadata, info.body = dict(draft.metadata), draft.body
            out.append(info)
        return out

    async def _catalog_of(self, topic: str) -> list[dict[str, Any]]:
        reply = await self.client.call(topic, {"catalog": True}, timeout=CATALOG_TIMEOUT)
        if not reply.ok:
            raise SkillScaleError(
                reply.error or "the catalogue request failed",
                code=reply.error_code or ErrorCode.EXEC_FAILED,
                request_id=reply.request_id,
            )
        try:
            listing = json.loads(reply.content)
        except ValueError:
            listing = None
        if not isinstance(listing, list):
            raise SkillScaleError(
                "the server's catalogue is not a JSON list", code=ErrorCode.INTERNAL
            )
        return [item for item in listing if isinstance(item, dict)]

    async def topics(self) -> list[TopicInfo]:
        """Every known topic with its live skills and the proxy's figures for it."""
        listing = await self.skills()
        stats = {t.topic: t for t in (await self.stats()).topics}
        names = self.known_topics() | set(listing.errors) | set(stats)
        out = []
        for topic in sorted(n for n in names if n.startswith(TOPIC_PREFIX) or n in stats):
            if topic.startswith("_") or topic.endswith("*"):
                continue
            figures = stats.get(topic)
            live = [s.name for s in listing.skills if s.topic == topic and s.live]
            out.append(
                TopicInfo(
                    topic=topic,
                    skills=live or [s.name for s in listing.skills if s.topic == topic],
                    replicas=figures.replicas if figures else None,
                    queue_depth=figures.queue_depth if figures else None,
                    inflight=figures.inflight if figures else None,
                    live=bool(live),
                )
            )
        return out

    # -- versions (skillscale.core.rollout) ---------------------------------

    async def _skill_dir(self, topic: str, name: str) -> Path:
        """The folder of local skill ``name`` on ``topic``: served, or only a draft."""
        for attempt in range(2):
            skill = self._local.skills.get(name)
            if skill is not None and topic_for_category(self._local.category_of[name]) == topic:
                return skill.path
            draft = self._drafts.get(name)
            if skill is None and draft is not None and _draft_topic(draft) == topic:
                return draft
            if attempt == 0:
                # Perhaps new since the last read (a draft the distiller just wrote);
                # read again at most once per CATALOG_TTL, whatever callers ask for.
                await self._refresh_library(max_age=CATALOG_TTL)
        raise SkillNotFoundError(
            f"no local skill {name!r} on {topic}: versions are managed in the gateway's "
            "--skills-dir"
        )

    async def rollout_status(self, topic: str, name: str) -> RolloutStatus:
        """A skill's versions and canary (read from its rollout file)."""
        folder = await self._skill_dir(topic, name)
        state = await asyncio.to_thread(rollout.read_rollout, folder)
        if state is None:
            skill = self._local.skills[name]
            return RolloutStatus(skill=name, topic=topic, managed=False,
                                 active=skill.version, state="active")  # fmt: skip
        status = RolloutStatus(topic=topic, managed=True, **state.status())
        if state.canary is not None:
            status.canary_history = self._sample_canary(topic, name, state.canary)
        return status

    def _sample_canary(self, topic: str, name: str, canary: rollout.Canary) -> list[CanarySample]:
        """Add the canary's evidence to its bounded history if it moved; the history."""
        key = (topic, name, canary.version, canary.started)
        samples = self._canary_samples.pop(key, None) or deque(maxlen=CANARY_SAMPLES)
        self._canary_samples[key] = samples  # most recently used last
        while len(self._canary_samples) > CANARY_SKILLS:
            self._canary_samples.popitem(last=False)
        pairs = canary.pairs
        arms = canary.arms
        sample = CanarySample(
            at=time.time(),
            pairs=pairs.candidate_wins + pairs.active_wins,
            candidate_wins=pairs.candidate_wins,
            active_wins=pairs.active_wins,
            llr=round(canary.llr, 4),
            active_n=arms.active.n,
            active_successes=arms.active.successes,
            candidate_n=arms.candidate.n,
            candidate_successes=arms.candidate.successes,
        )
        last = samples[-1] if samples else None
        if last is None or last.model_dump(exclude={"at"}) != sample.model_dump(exclude={"at"}):
            samples.append(sample)
        return list(samples)

    async def version_diff(
        self, topic: str, name: str, old: str | None, new: str | None
    ) -> VersionDiff:
        """What changed between two revisions (defaults: the active version and the
        canary, else the newest draft, else the version active before)."""
        folder = await self._skill_dir(topic, name)
        if old is None or new is None:
            state = await asyncio.to_thread(rollout.read_rollout, folder)
            default_old, default_new = _default_pair(state)
            old, new = old or default_old, new or default_new
            if old is None or new is None:
                raise SkillScaleError(
                    f"{name} has one version only: nothing to compare (name two revisions)",
                    code=ErrorCode.BAD_REQUEST,
                )
        if old.startswith("git:") != new.startswith("git:"):
            raise SkillScaleError(
                "compare two versions, or two git: revisions, not one of each",
                code=ErrorCode.BAD_REQUEST,
            )
        try:
            files, truncated = await asyncio.to_thread(versions.diff_revisions, folder, old, new)
        except (versions.RevisionError, rollout.RolloutError) as exc:
            raise SkillNotFoundError(str(exc)) from None
        return VersionDiff(skill=name, topic=topic, old=old, new=new, files=files,
                           truncated=truncated)  # fmt: skip

    async def history(self, topic: str, name: str, limit: int) -> SkillHistory:
        """The skill's own git history, newest first."""
        folder = await self._skill_dir(topic, name)
        entries = await asyncio.to_thread(versions.history, folder, limit)
        return SkillHistory(skill=name, topic=topic, entries=entries)

    async def change_rollout(
        self,
        topic: str,
        name: str,
        action: RolloutChange,
        version: str | None = None,
        reason: str | None = None,
        share: float = rollout.DEFAULT_SHARE,
    ) -> RolloutStatus:
        """Promote the canary (or newest draft), put a draft in canary, reject the
        canary, or roll back to a retired version; as ``skillscale skills ...`` does."""
        folder = await self._skill_dir(topic, name)
        why = reason or f"{action} from the gateway"
        try:
            if action == "promote":
                subject = await asyncio.to_thread(rollout.promote, folder, why)
            elif action == "canary":
                subject = await asyncio.to_thread(
                    functools.partial(rollout.start_canary, folder, version, share=share)
                )
            elif action == "reject":
                subject = await asyncio.to_thread(rollout.reject, folder, why)
            else:
                subject = await asyncio.to_thread(rollout.rollback, folder, version, why)
        except rollout.RolloutError as exc:
            raise SkillScaleError(exc.message, code=ErrorCode.BAD_REQUEST) from None
        self._catalog = None  # the servers reload the skill; ask them again
        await self._refresh_library()  # a promoted draft is a served skill now
        status = await self.rollout_status(topic, name)
        self._announce(action, subject, status, folder, why)
        return status

    def _announce(self, action: RolloutChange, version: str, status: RolloutStatus,
                  folder: Path, reason: str) -> None:  # fmt: skip
        """Publish the change as a skills-changed event (best effort, as PUB is)."""
        if self._changes is None or self._changes.closed:
            return
        change = {"promote": "promoted", "canary": "canary", "reject": "rejected",
                  "rollback": "rolled_back"}[action]  # fmt: skip
        event = SkillsChangedEvent.model_validate(
            {"change": change, "skill": status.skill, "version": version,
             "active": status.active, "path": str(folder), "reason": reason[:2000]}
        )  # fmt: skip
        self._changes.send([SKILLS_CHANGED_TOPIC.encode(), event.model_dump_json().encode()])

    # -- proxy metrics -----------------------------------------------------

    async def stats(self) -> Stats:
        """The proxy's per-topic figures (scraped, reused for half a second)."""
        cached = self._stats
        if cached is not None and time.monotonic() - cached[0] < METRICS_TTL:
            return cached[1]
        stats = await self._scrape()
        self._stats = (time.monotonic(), stats)
        return stats

    async def _scrape(self) -> Stats:
        url = self.config.metrics_url
        now = time.time()
        if not url:
            return Stats(available=False, timestamp=now, error="no proxy metrics URL configured")
        if self._http is None:
            return Stats(available=False, source=url, timestamp=now, error="gateway not started")
        text, rows = await asyncio.gather(self._get(url), self._get(replicas_url(url)))
        if isinstance(text, Exception):
            return Stats(available=False, source=url, timestamp=now,
                         error=f"{type(text).__name__}: {text}")  # fmt: skip
        stats = parse_metrics(text, url, now)
        if isinstance(rows, Exception):
            stats.replicas_error = f"{type(rows).__name__}: {rows}"
        else:
            stats.replicas, stats.replicas_error = parse_replicas(rows)
        return stats

    async def _get(self, url: str) -> str | httpx.HTTPError:
        assert self._http is not None
        # Streamed, to stop reading at the limit: a body read whole first is
        # as large as whatever answers at the URL chooses to send.
        body = bytearray()
        try:
            async with self._http.stream("GET", url) as response:
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    body += chunk[: MAX_METRICS_BYTES - len(body)]
                    if len(body) >= MAX_METRICS_BYTES:
                        break
        except httpx.HTTPError as exc:
            return exc
        return body.decode(response.encoding or "utf-8", "replace")


def _scan_library(roots: list[Path]) -> tuple[Catalog, dict[str, Path]]:
    """The served skills below ``roots`` and the draft-only ones (blocking)."""
    if not roots:
        return Catalog(), {}
    resolved = tuple(Path(r).expanduser().resolve() for r in roots)
    return SkillDiscovery(roots).scan(), rollout.find_drafts(resolved)


def _draft_topic(folder: Path) -> str:
    """A draft-only skill's topic: its category folder's, as discovery derives it."""
    return topic_for_category(folder.parent.name)


def _default_pair(state: rollout.Rollout | None) -> tuple[str | None, str | None]:
    """The two versions the console compares first."""
    if state is None or state.active is None:
        return None, None
    if state.canary is not None:
        return state.active, state.canary.version
    drafts = state.drafts()
    if drafts:
        return state.active, drafts[-1]
    retired = sorted(
        ((i.decided or 0.0, v) for v, i in state.versions.items() if i.state == "retired"),
        reverse=True,
    )
    return (retired[0][1], state.active) if retired else (state.active, None)


def replicas_url(metrics_url: str) -> str:
    """The proxy's ``/replicas`` beside its ``/metrics``."""
    base = metrics_url.split("?", 1)[0]
    return base.removesuffix("/metrics").rstrip("/") + "/replicas"


def parse_replicas(text: str) -> tuple[list[ReplicaState], str | None]:
    """The proxy's ``/replicas`` rows; rows that do not validate are left out, and said."""
    try:
        doc = json.loads(text)
        rows = doc["replicas"]
        if not isinstance(rows, list):
            raise TypeError("replicas is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        return [], f"unparsable replica list: {type(exc).__name__}"
    out: list[ReplicaState] = []
    bad = 0
    for row in rows[:MAX_REPLICAS]:
        try:
            out.append(ReplicaState.model_validate(row))
        except ValueError:
            bad += 1
    problem = f"{bad} replica rows did not validate" if bad else None
    if doc.get("truncated"):
        problem = (problem + "; " if problem else "") + "the proxy truncated the list"
    return out, problem


def parse_metrics(text: str, source: str, now: float) -> Stats:
    """The proxy's exposition text as :class:`Stats` (prometheus_client's parser)."""
    topics: dict[str, TopicStats] = {}
    stats = Stats(available=True, source=source, timestamp=now)

    def topic(name: str) -> TopicStats:
        return topics.setdefault(name, TopicStats(topic=name))

    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        return Stats(
            available=False, source=source, timestamp=now, error=f"unparsable metrics: {exc}"
        )
    for family in families:
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            name = sample.name
            if name == "skillscale_topic_replicas":
                topic(labels["topic"]).replicas = int(value)
            elif name == "skillscale_topic_queue_depth":
                topic(labels["topic"]).queue_depth = int(value)
            elif name == "skillscale_topic_inflight":
                topic(labels["topic"]).inflight = int(value)
            elif name == "skillscale_topic_slots":
                topic(labels["topic"]).slots = int(value)
            elif name == "skillscale_topic_replicas_draining":
                topic(labels["topic"]).draining = int(value)
            elif (
                name == "skillscale_proxy_messages_total"
                and labels.get("direction") == "downstream"
            ):
                topic(labels["topic"]).messages += value
            elif name == "skillscale_proxy_bytes_total" and labels.get("direction") == "downstream":
                topic(labels["topic"]).bytes += value
            elif name == "skillscale_proxy_dropped_total":
                topic(labels["topic"]).dropped += value
            elif name == "skillscale_proxy_error_replies_total":
                stats.error_replies[labels.get("code", "")] = value
            elif name == "skillscale_proxy_redelivered_total":
                stats.redelivered = value
            elif name == "skillscale_proxy_duplicate_replies_dropped_total":
                stats.duplicates_dropped = value
            elif name == "skillscale_proxy_subscriptions":
                stats.subscriptions = value
    stats.topics = sorted(topics.values(), key=lambda t: t.topic)
    return stats


_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.NO_MATCH: 404,
    ErrorCode.SKILL_NOT_FOUND: 404,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.EXEC_FAILED: 502,
    ErrorCode.OUTPUT_TOO_LARGE: 502,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.NO_SERVER: 503,
    ErrorCode.INTERNAL: 500,
}


def http_status(code: ErrorCode) -> int:
    """The HTTP status the API answers a fabric error code with."""
    return _STATUS.get(code, 500)


def error_detail(
    code: ErrorCode | str,
    message: str,
    request_id: str | None = None,
    trace: dict[str, Any] | None = None,
    status: int | None = None,
) -> ErrorDetail:
    """The one error shape, for a fabric code (or ``http_error``)."""
    value = code.value if isinstance(code, ErrorCode) else code
    if status is None:
        status = http_status(code) if isinstance(code, ErrorCode) else 500
    return ErrorDetail(
        code=value, message=message, status=status, request_id=request_id, trace=trace
    )


def not_served(topic: str, known: frozenset[str]) -> SkillScaleError:
    """The error for a topic the gateway has never seen served."""
    served = ", ".join(sorted(known)) or "none"
    return SkillNotFoundError(
        f"no server is known for topic {topic!r}; known topics: {served}", code=ErrorCode.NO_SERVER
    )


def _category(topic: str) -> str:
    return topic.removeprefix(TOPIC_PREFIX).lower().replace("_", "-")


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
