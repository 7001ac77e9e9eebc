"""The SDK client: send intents to topics, await exactly one reply each.

One PUB socket sends requests to the proxy's XSUB side; one SUB socket,
subscribed to this client's unguessable reply topic, receives replies. A
single reader task correlates replies to waiting calls by ``request_id``.
``connect`` returns only after a probe has made the round trip through the
proxy, so the first request cannot fall into ZeroMQ's slow-joiner window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future as ConcurrentFuture
from pathlib import Path
from typing import Any, TypeVar

import pydantic_core
import zmq
import zmq.asyncio
from pydantic import ValidationError
from zmq.utils.monitor import parse_monitor_message

from skillscale.core import stamps
from skillscale.core.discovery import Catalog, SkillDiscovery, default_skills_dirs
from skillscale.core.errors import (
    ConfigError,
    ErrorCode,
    RequestError,
    SkillScaleError,
    SkillTimeoutError,
    UnavailableError,
    error_for_code,
)
from skillscale.core.events import (
    FEEDBACK_TOPIC,
    SKILLS_CHANGED_TOPIC,
    TRAJECTORY_TOPIC,
    AgentTrajectory,
    FeedbackEvent,
    SkillsChangedEvent,
)
from skillscale.core.llm import LLMClient, LLMSettings
from skillscale.core.protocol import (
    MAX_REPLY_BYTES,
    PROBE_TOPIC_PREFIX,
    REPLY_TOPIC_PREFIX,
    TOPIC_PREFIX,
    Reply,
    Request,
    new_reply_topic,
)
from skillscale.core.runtime import AsyncRole, within
from skillscale.core.security import CurveKeys, diagnosed
from skillscale.core.skill_format import Skill
from skillscale.core.transport import (
    BusSocket,
    Frames,
    SocketPair,
    Transport,
    ZmqTransport,
    await_roundtrip,
    proxy_xpub_endpoint,
    proxy_xsub_endpoint,
    pump,
)
from skillscale.sdk.failover import EndpointRing, Retransmissions
from skillscale.sdk.router import Route, TopicRouter

log = logging.getLogger(__name__)

T = TypeVar("T")

IntentLike = str | dict[str, Any]


class SkillScaleClient(AsyncRole):
    """Async client; ``async with SkillScaleClient() as client: ...``.

    ``timeout`` is the default seconds to wait for a reply; every call may
    override it. ``max_in_flight`` bounds concurrent calls (extra calls wait
    for a slot, within their own timeout). ``curve`` enables CURVE with the
    client's certificate and the proxy's public key. ``transport``: None
    connects over ZeroMQ; any :class:`~skillscale.core.transport.Transport`
    (e.g. an in-memory :class:`~skillscale.core.memory_bus.MemoryBus`) is
    used as given and left open by :meth:`close`.

    ``proxy_xsub`` / ``proxy_xpub`` may each list several proxies (a list, or
    comma-separated, in the same order: a failover pair, see
    ``docs/failover.md``): the client uses one at a time and moves to the
    next when the connection drops or a probe stays unanswered for
    ``failover_timeout`` seconds. After any reconnect or failover it sends
    unanswered requests again (same ``request_id``, until their deadline);
    at most ``max_retransmit`` requests and ``max_retransmit_bytes`` are
    kept for that (``retransmit=False`` keeps none).

    ``heartbeat_timeout`` (seconds, default 3; None turns it off): the
    client's sockets ping the proxy every third of it (ZMTP heartbeats) and
    drop a connection that stayed silent that long. A proxy whose node
    vanished without a TCP reset (power loss, partition, a stopped process)
    is then noticed like a dropped connection: the client fails over to the
    next proxy, or with a single proxy holds calls until it is back. Any
    traffic counts as an answer; the proxy's own ``--stuck-timeout`` drops a
    client that stops answering in the same way. It applies to the client's
    own ZeroMQ transport (not to a ``transport`` given to it).
    """

    def __init__(
        self,
        proxy_xsub: str | Sequence[str] | None = None,
        proxy_xpub: str | Sequence[str] | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_in_flight: int = 1024,
        hwm: int = 10_000,
        curve: CurveKeys | None = None,
        catalog: Catalog | None = None,
        llm: LLMSettings | None = None,
        transport: Transport | None = None,
        retransmit: bool = True,
        max_retransmit: int = 10_000,
        max_retransmit_bytes: int = 64 * 1024 * 1024,
        failover_timeout: float = 3.0,
        heartbeat_timeout: float | None = 3.0,
    ) -> None:
        if heartbeat_timeout is not None and not 0.01 <= heartbeat_timeout <= 6553:
            raise ConfigError(
                f"heartbeat_timeout must be 0.01-6553 s (or None), got {heartbeat_timeout}"
            )
        self.heartbeat_timeout = heartbeat_timeout
        self._given_transport = transport
        self._ring = EndpointRing(proxy_xsub or proxy_xsub_endpoint(),
                                  proxy_xpub or proxy_xpub_endpoint())  # fmt: skip
        self.proxy_xsub = self._ring.current.xsub
        self.proxy_xpub = self._ring.current.xpub
        self._retx = Retransmissions(max_retransmit if retransmit else 0, max_retransmit_bytes)
        self._generation = 0
        """Counts connections: a request sent on an earlier one is retransmitted."""
        self.failover_timeout = failover_timeout
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.reply_topic = new_reply_topic()
        self._hwm = hwm
        self._curve = curve or CurveKeys.from_env()
        self._catalog = catalog
        self._llm_settings = llm
        self._router: TopicRouter | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._bus: Transport | None = None
        self._pub: BusSocket | None = None
        self._sub: BusSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._path_up = asyncio.Event()
        self._probe_seen = asyncio.Event()
        # The probe travels on a topic of its own, outside the reply prefix:
        # under CURVE nothing from a client key may reach a reply topic, so a
        # forged "probe" can never prefix-match someone's reply subscription.
        self._probe = (
            PROBE_TOPIC_PREFIX + "C" + self.reply_topic[len(REPLY_TOPIC_PREFIX) :]
        ).encode()
        self._reply_topic_b = self.reply_topic.encode()

    async def start(self) -> None:
        """Same as :meth:`connect` (for ``async with``)."""
        await self.connect()

    async def stop(self) -> None:
        """Same as :meth:`close` (for ``async with``)."""
        await self.close()

    @property
    def connected(self) -> bool:
        """True between a successful ``connect`` and ``close``."""
        return self._reader is not None

    async def connect(self) -> None:
        """Connect to the proxy and wait until the bus path is proven live."""
        if self._reader is not None:
            return
        if self._curve is not None:
            self._curve.validate()  # a missing key file fails here, before any socket exists
        self._bus = bus = self._given_transport or ZmqTransport(heartbeat=self.heartbeat_timeout)
        try:
            self._pub = bus.publisher(self.proxy_xsub, hwm=self._hwm, curve=self._curve)
            self._sub = bus.subscriber(self.proxy_xpub, [self._reply_topic_b, self._probe],
                                       hwm=self._hwm, max_message_bytes=MAX_REPLY_BYTES,
                                       curve=self._curve)  # fmt: skip
        except BaseException:
            await self._teardown()
            raise
        try:
            await self._first_roundtrip(bus)
        except ConfigError as exc:
            await self._teardown()
            raise UnavailableError(exc.message, code=ErrorCode.NO_SERVER) from None
        except TimeoutError as exc:
            await self._teardown()
            raise UnavailableError(
                f"cannot reach the SkillScale proxy ({exc}); is `skillscale up` running?",
                code=ErrorCode.NO_SERVER,
            ) from None
        except BaseException:
            await self._teardown()
            raise
        self._path_up.set()
        self._reader = asyncio.create_task(self._read_replies(), name="skillscale-client-reader")
        if isinstance(self._pub, SocketPair):
            # Over ZeroMQ the connection can drop and come back (an in-process
            # bus cannot): watch it, and hold calls while it is down.
            self._monitor = self._pub.async_sock.get_monitor_socket(
                zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
            )
            self._watcher = asyncio.create_task(self._watch_proxy(), name="skillscale-client-watch")

    async def _first_roundtrip(self, bus: Transport) -> None:
        """Prove a path through the first proxy that answers (of a pair, the active one)."""
        assert self._pub is not None and self._sub is not None
        deadline = time.monotonic() + self.connect_timeout
        while True:
            remaining = deadline - time.monotonic()
            per_try = remaining if len(self._ring) == 1 else min(self.failover_timeout, remaining)
            try:
                roundtrip = await_roundtrip(
                    self._pub,
                    self._sub,
                    self._probe,
                    timeout=max(per_try, 0.001),
                    what=f"proxy at {self.proxy_xsub} / {self.proxy_xpub}",
                )
                if isinstance(bus, ZmqTransport):
                    # A refused handshake (CURVE on one side only, an unknown
                    # key) names its cause instead of timing out as "not running".
                    await diagnosed(roundtrip, bus.ctx, self.proxy_xsub, self._curve,
                                    timeout=max(per_try, 0.001))  # fmt: skip
                else:
                    await roundtrip
                return
            except TimeoutError:
                if len(self._ring) == 1 or time.monotonic() >= deadline:
                    raise
                self._fail_over()

    def _fail_over(self) -> None:
        """Move both sockets to the next proxy of the ring."""
        if not isinstance(self._pub, SocketPair) or not isinstance(self._sub, SocketPair):
            raise UnavailableError("failover between proxies needs the ZeroMQ transport")
        old = self._ring.current
        new = self._ring.advance()
        self._pub.move(old.xsub, new.xsub)
        self._sub.move(old.xpub, new.xpub)
        self.proxy_xsub, self.proxy_xpub = new.xsub, new.xpub
        log.warning("trying the proxy at %s / %s", new.xsub, new.xpub)

    async def close(self) -> None:
        """Fail waiting calls, close sockets and the context."""
        if self._router is not None and self._router.llm is not None:
            await self._router.llm.close()
        tasks = [t for t in (self._reader, self._watcher) if t is not None]
        self._reader = self._watcher = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._teardown()

    async def _teardown(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(UnavailableError("client closed before the reply arrived"))
        self._pending.clear()
        if self._monitor is not None:
            if isinstance(self._pub, SocketPair) and not self._pub.closed:
                self._pub.async_sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        for pair in (self._pub, self._sub):
            if pair is not None:
                pair.close(0)
        self._pub = self._sub = None
        if self._bus is not None:
            bus, self._bus = self._bus, None
            if bus is not self._given_transport:
                bus.close()

    # -- calls -----------------------------------------------------------

    async def call(self, topic: str, intent: IntentLike, *, timeout: float | None = None) -> Reply:
        """Send one request and return its reply, success or error.

        Raises :class:`SkillTimeoutError` if no reply comes within
        ``timeout`` seconds and :class:`UnavailableError` if not connected.
        """
        if self._pub is None or self._reader is None:
            raise UnavailableError("client is not connected; use `async with` or connect()")
        wait = self.timeout if timeout is None else timeout
        if not 0 < wait < math.inf:
            raise RequestError("timeout must be positive (seconds)")
        if stamps.ON:
            stamps.stamp("client.call")
        loop = asyncio.get_running_loop()
        start = loop.time()
        request_id = _new_request_id()
        now = time.time()
        deadline = now + wait
        payload = _request_payload(request_id, self.reply_topic,
                                   intent if isinstance(intent, str) else json.dumps(intent),
                                   now, deadline)  # fmt: skip
        if self._slots.locked():
            try:
                await within(self._slots.acquire(), timeout=wait)
            except asyncio.TimeoutError:
                raise SkillTimeoutError(
                    f"no free request slot within {wait:g} s", request_id=request_id
                ) from None
        else:
            await self._slots.acquire()  # free: returns without suspending
        future: asyncio.Future[Reply] = loop.create_future()
        self._pending[request_id] = future
        timer: asyncio.TimerHandle | None = None
        try:
            if not self._path_up.is_set():
                # The proxy is away (restarting?): hold the request rather than
                # publish it into a dropped connection.
                remaining = wait - (loop.time() - start)
                await within(self._path_up.wait(), timeout=max(remaining, 0.001))
            topic_b = topic.encode()
            self._pub.send([topic_b, payload])
            self._retx.keep(request_id, topic_b, payload, deadline, self._generation)
            if stamps.ON:
                stamps.stamp("client.sent")
            # One timer per call, not wait_for's wrapper future and callbacks.
            remaining = wait - (loop.time() - start)
            timer = loop.call_at(loop.time() + max(remaining, 0.001), _expire, future)
            reply = await future
            if stamps.ON:
                stamps.stamp("client.woken")
            return reply
        except asyncio.TimeoutError:
            raise SkillTimeoutError(
                f"no reply on {topic} within {wait:g} s", request_id=request_id
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
            self._pending.pop(request_id, None)
            self._retx.drop(request_id)
            self._slots.release()

    async def invoke(self, topic: str, intent: IntentLike, *, timeout: float | None = None) -> str:
        """Send an intent (any form) and return the skill's content.

        Error replies raise the :class:`SkillScaleError` subclass of their
        ``error_code``.
        """
        reply = await self.call(topic, intent, timeout=timeout)
        if reply.ok:
            return reply.content
        raise error_for_code(
            reply.error_code,
            reply.error or "the server replied with an error and no message",
            request_id=reply.request_id,
            trace=reply.trace.model_dump(exclude_none=True) if reply.trace else None,
        )

    async def invoke_skill(
        self,
        topic: str,
        skill: str,
        data: Any = "",
        *,
        task: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Run the named ``skill`` with ``data`` as its input."""
        intent: dict[str, Any] = {"skill": skill, "data": data}
        if task is not None:
            intent["task"] = task
        return await self.invoke(topic, json.dumps(intent), timeout=timeout)

    async def invoke_task(self, topic: str, task: str, *, timeout: float | None = None) -> str:
        """Let the topic's server match ``task`` to a skill and run it."""
        return await self.invoke(topic, json.dumps({"task": task}), timeout=timeout)

    def submit_trajectory(self, trajectory: AgentTrajectory | dict[str, Any]) -> AgentTrajectory:
        """Publish an agent run on ``_SKILLSCALE_TRAJECTORY``, redacted first.

        Best effort, like every event: nothing is published while the proxy is
        away. Returns the event as published.
        """
        if self._pub is None:
            raise UnavailableError("client is not connected; use `async with` or connect()")
        event = (
            trajectory
            if isinstance(trajectory, AgentTrajectory)
            else AgentTrajectory.model_validate(trajectory)
        ).redacted()
        self._pub.send([TRAJECTORY_TOPIC.encode(), event.model_dump_json().encode()])
        return event

    def feedback(self, request_id: str, score: float, comment: str | None = None) -> FeedbackEvent:
        """Say how good the reply to ``request_id`` was: ``score`` from 0 (wrong) to 1 (right).

        Published on ``_SKILLSCALE_FEEDBACK`` for the distiller, whose canary
        counts a score below 0.5 as a failure of the version that answered.
        Best effort, like every event. Returns the event as published.
        """
        if self._pub is None:
            raise UnavailableError("client is not connected; use `async with` or connect()")
        try:
            event = FeedbackEvent(request_id=request_id, score=score, comment=comment)
        except ValidationError as exc:
            raise RequestError(f"bad feedback: {exc.errors()[0]['msg']}") from None
        self._pub.send([FEEDBACK_TOPIC.encode(), event.model_dump_json().encode()])
        return event

    async def fetch_catalog(self, topics: Iterable[str]) -> Catalog:
        """The skills a running fabric serves on ``topics`` (asked over the bus).

        Each topic's server answers a ``{"catalog": true}`` intent with its
        skills' names, descriptions and metadata.
        """
        catalog = Catalog()
        for topic in topics:
            listing = json.loads(await self.invoke(topic, {"catalog": True}))
            category = topic.removeprefix(TOPIC_PREFIX).lower().replace("_", "-")
            for item in listing:
                skill = Skill(
                    name=item["name"],
                    description=item["description"],
                    path=Path(f"fabric:{topic}/{item['name']}"),
                    body="",
                    metadata={str(k): str(v) for k, v in (item.get("metadata") or {}).items()},
                )
                catalog._add(skill, category)
        return catalog

    async def invoke_auto(self, task: str, *, timeout: float | None = None) -> str:
        """Choose the topic for ``task`` (LLM when configured, else keywords), then invoke.

        The catalogue is the one given to the client, else the skills found
        in ``SKILLSCALE_SKILLS_DIR`` / ``./skills`` / the bundled skills.
        """
        route = await self.route(task)
        return await self.invoke_task(route.topic, task, timeout=timeout)

    async def route(self, task: str) -> Route:
        """The topic :meth:`invoke_auto` would use, and how it was chosen."""
        if self._router is None:
            catalog = self._catalog or SkillDiscovery(default_skills_dirs()).scan()
            settings = self._llm_settings or LLMSettings.load()
            llm = LLMClient(settings) if settings is not None else None
            self._router = TopicRouter(catalog, llm)
        return await self._router.route(task)

    async def invoke_parallel(
        self,
        requests: Iterable[tuple[str, IntentLike]],
        *,
        timeout: float | None = None,
        return_exceptions: bool = True,
    ) -> list[str | SkillScaleError]:
        """Run many ``(topic, intent)`` calls concurrently, results in order.

        With ``return_exceptions`` (the default) a failed call does not
        raise: its :class:`SkillScaleError` stands in its place in the list,
        so check each item (``isinstance(item, SkillScaleError)``) and one
        failure never hides the other results. With ``return_exceptions=False``
        the first failure raises. Errors that are not a ``SkillScaleError``
        (bugs, cancellation) always raise.
        """
        calls = [self.invoke(topic, intent, timeout=timeout) for topic, intent in requests]
        results = await asyncio.gather(*calls, return_exceptions=return_exceptions)
        out: list[str | SkillScaleError] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, SkillScaleError):
                raise result
            out.append(result)
        return out

    # -- the reader --------------------------------------------------------

    async def _watch_proxy(self) -> None:
        """Follow the connection to the proxy; after a reconnect, prove the path again.

        A request published while the connection is down is dropped by ZeroMQ,
        so calls wait (within their own timeout) until a probe has made the
        round trip through the proxy, and requests sent before the drop are
        sent again then. With several proxies, a drop, or a proxy that does
        not answer within ``failover_timeout`` (a passive one), moves the
        client to the next.
        """
        assert self._monitor is not None and self._pub is not None
        several = len(self._ring) > 1
        while True:
            down = not self._path_up.is_set()
            try:
                raw = await within(
                    self._monitor.recv_multipart(),
                    self.failover_timeout if several and down else None,
                )
            except asyncio.TimeoutError:
                self._fail_over()  # no connection to this proxy at all
                continue
            message = parse_monitor_message(raw)
            raw_endpoint = message.get("endpoint", b"")
            endpoint = (
                raw_endpoint.decode() if isinstance(raw_endpoint, bytes) else str(raw_endpoint)
            )
            if self._ring.owns(endpoint):
                continue  # a late event of the proxy we left
            event = message["event"]
            if event == zmq.EVENT_DISCONNECTED and not down:
                self._path_up.clear()
                self._generation += 1
                log.warning("lost the connection to the proxy at %s", self.proxy_xsub)
                if several:
                    self._fail_over()
            elif event == zmq.EVENT_CONNECTED and down:
                if not await self._prove_path(self.failover_timeout if several else None):
                    self._fail_over()
                    continue
                self._path_up.set()
                self._retransmit()
                log.info("connection to the proxy at %s is back", self.proxy_xsub)

    async def _prove_path(self, timeout: float | None) -> bool:
        """Probe until one comes back; False after ``timeout`` seconds (None: forever)."""
        assert self._pub is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.005
        self._probe_seen.clear()
        while not self._probe_seen.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._pub.send([self._probe, b"probe"])
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._probe_seen.wait(), interval)
            interval = min(interval * 2, 0.25)
        return True

    def _retransmit(self) -> None:
        """Send again what was sent before the connection dropped and is unanswered."""
        if self._pub is None:
            return
        due = self._retx.due(self._generation)
        for frames in due:
            self._pub.send(list(frames))
        if due:
            log.info("retransmitted %d unanswered requests", len(due))

    async def _read_replies(self) -> None:
        assert self._sub is not None
        await pump(self._sub, self._on_message)

    def _on_message(self, frames: Frames) -> None:
        if stamps.ON:
            stamps.stamp("client.recv")
        topic = bytes(frames[0])
        if topic == self._probe:
            self._probe_seen.set()
            return
        if len(frames) != 2 or topic != self._reply_topic_b:
            return  # noise on a longer topic sharing our prefix
        try:
            reply = Reply.from_bytes(bytes(frames[1]))
        except ValidationError as exc:
            log.warning("discarding malformed reply: %s", exc.errors()[:1])
            return
        future = self._pending.get(reply.request_id)
        if future is None or future.done():
            log.debug("reply %s arrived after its caller stopped waiting", reply.request_id)
            return
        future.set_result(reply)


def _expire(future: asyncio.Future[Reply]) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


def _request_payload(request_id: str, reply_to: str, intent: str, timestamp: float,
                     deadline: float) -> bytes:  # fmt: skip
    """A request's JSON frame, as :meth:`Request.to_bytes` writes it.

    Built directly: every field but the intent is ours and valid by
    construction, and the model's validation costs more than the rest of a
    call's encoding. Written by pydantic-core's serializer, the model's own
    (~1 µs; ``json.dumps`` took ~7). An intent that JSON cannot carry as
    UTF-8 (a lone surrogate) goes through the model, which says what is wrong.
    """
    try:
        return pydantic_core.to_json(
            {"request_id": request_id, "reply_to": reply_to, "intent": intent,
             "timestamp": timestamp, "deadline": deadline},
        )  # fmt: skip
    except ValueError:
        return Request(request_id=request_id, reply_to=reply_to, intent=intent,
                       timestamp=timestamp, deadline=deadline).to_bytes()  # fmt: skip


def _new_request_id() -> str:
    """32 random hex characters, as :func:`new_request_id` (uuid4's formatting took ~4 µs)."""
    return os.urandom(16).hex()


class SyncSkillScaleClient:
    """A blocking wrapper for scripts: runs a client on a private event loop thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client: SkillScaleClient = self._run(self._make(args, kwargs))
        try:
            self._run(self._client.connect())
        except BaseException:
            self._shutdown_loop()
            raise

    @staticmethod
    async def _make(args: Sequence[Any], kwargs: dict[str, Any]) -> SkillScaleClient:
        # Created on the loop thread so its asyncio primitives bind there.
        return SkillScaleClient(*args, **kwargs)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: ConcurrentFuture[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def __enter__(self) -> SyncSkillScaleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def invoke(self, topic: str, intent: IntentLike, *, timeout: float | None = None) -> str:
        """Blocking :meth:`SkillScaleClient.invoke`."""
        return self._run(self._client.invoke(topic, intent, timeout=timeout))

    def call(self, topic: str, intent: IntentLike, *, timeout: float | None = None) -> Reply:
        """Blocking :meth:`SkillScaleClient.call`."""
        return self._run(self._client.call(topic, intent, timeout=timeout))

    def invoke_skill(
        self, topic: str, skill: str, data: Any = "", *, timeout: float | None = None
    ) -> str:
        """Blocking :meth:`SkillScaleClient.invoke_skill`."""
        return self._run(self._client.invoke_skill(topic, skill, data, timeout=timeout))

    def invoke_task(self, topic: str, task: str, *, timeout: float | None = None) -> str:
        """Blocking :meth:`SkillScaleClient.invoke_task`."""
        return self._run(self._client.invoke_task(topic, task, timeout=timeout))

    def feedback(self, request_id: str, score: float, comment: str | None = None) -> FeedbackEvent:
        """Blocking :meth:`SkillScaleClient.feedback` (sent from the client's loop thread,
        which owns its sockets)."""
        return self._run(self._on_loop(self._client.feedback, request_id, score, comment))

    def submit_trajectory(self, trajectory: AgentTrajectory | dict[str, Any]) -> AgentTrajectory:
        """Blocking :meth:`SkillScaleClient.submit_trajectory`."""
        return self._run(self._on_loop(self._client.submit_trajectory, trajectory))

    def publish_skills_changed(self, event: SkillsChangedEvent, *, timeout: float = 3.0) -> bool:
        """Publish ``event`` on ``_SKILLSCALE_SKILLS_CHANGED``; True once it has passed the proxy.

        For tools that change a library outside a server (``skillscale skills
        promote`` and friends) and exit right after: a probe sent behind the
        event must come back within ``timeout`` seconds. One socket's messages
        keep their order through the proxy, so by then the proxy has handed
        the event to every subscribed server; False if no probe came back.
        """
        client = self._client

        async def publish() -> bool:
            if client._pub is None:
                raise UnavailableError("client is not connected; use `with` or connect()")
            client._pub.send([SKILLS_CHANGED_TOPIC.encode(), event.model_dump_json().encode()])
            return await client._prove_path(timeout)

        return self._run(publish())

    @staticmethod
    async def _on_loop(fn: Callable[..., T], *args: Any) -> T:
        # A ZeroMQ socket is used from one thread only: the loop thread.
        return fn(*args)

    def close(self) -> None:
        """Close the client and stop its loop thread."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
