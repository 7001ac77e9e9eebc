"""Trace events are built only while someone subscribes to them (the proxy says so in HB)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest

from skillscale import Reply, Request
from skillscale.core.events import TRACE_TOPIC
from skillscale.core.memory_bus import MemoryBus
from skillscale.core.transport import BusSocket
from skillscale.proxy import Proxy, ProxyConfig
from skillscale.skill_server.proxies import ProxyLinks
from skillscale.skill_server.server import ServerConfig, SkillServer
from tests.helpers import FIXTURE_SKILLS

pytestmark = pytest.mark.timeout(60)
REPLY_TOPIC = "AGENT_REPLY_traces"


def test_each_proxy_heartbeat_says_whether_traces_are_wanted() -> None:
    links = ProxyLinks(2)
    assert links.traces_wanted  # before any heartbeat: send them
    links.on_heartbeat(0, [b"active", b"e1", b"64", b"0"], 1.0)
    assert links.traces_wanted  # the second proxy has not said
    links.on_heartbeat(1, [b"passive", b"e2", b"64", b"0"], 1.0)
    assert not links.traces_wanted
    links.on_heartbeat(1, [b"passive", b"e2", b"64", b"1"], 2.0)
    assert links.traces_wanted
    links.on_heartbeat(1, [b"passive", b"e2"], 3.0)  # an older proxy: it wants them
    assert links.traces == [False, True]
    links.on_heartbeat(1, [b"passive", b"e2", b"64", b"junk"], 4.0)
    assert links.traces == [False, True]


async def call(pub: BusSocket, sub: BusSocket, n: int) -> Reply:
    request = Request(request_id=f"r{n}", reply_to=REPLY_TOPIC,
                      intent=json.dumps({"skill": "guide", "data": str(n)}))  # fmt: skip
    pub.send([b"T", request.to_bytes()])
    deadline = time.monotonic() + 10
    while (left := deadline - time.monotonic()) > 0:
        if await sub.wait_readable(left):
            for frames in sub.drain(100):
                if bytes(frames[0]) != REPLY_TOPIC.encode():
                    continue  # a subscriber to everything sees requests and traces too
                reply = Reply.from_bytes(bytes(frames[1]))
                if reply.request_id == request.request_id:
                    return reply
    raise AssertionError(f"no reply to r{n}")


async def traces_of(sub: BusSocket, request_id: str, timeout: float) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    while not found and (left := deadline - time.monotonic()) > 0:
        if await sub.wait_readable(left):
            for frames in sub.drain(100):
                if bytes(frames[0]) != TRACE_TOPIC.encode():
                    continue
                event = json.loads(bytes(frames[1]))
                if event.get("request_id") == request_id:
                    found.append(event)
    return found


@contextlib.asynccontextmanager
async def fabric() -> AsyncIterator[tuple[MemoryBus, Proxy, SkillServer, BusSocket, BusSocket]]:
    """The real proxy and a server of the testing skills, on the in-memory bus,
    with a publisher of requests and a subscriber to their replies (subscribed)."""
    bus = MemoryBus()
    config = ServerConfig(topics=["T"], skills_dirs=[FIXTURE_SKILLS / "testing"], workers=1,
                          executor="cold")  # fmt: skip
    async with (
        Proxy(ProxyConfig(metrics_port=None), transport=bus) as proxy,
        SkillServer(config, transport=bus) as server,
    ):
        replies = bus.subscriber("memory://xpub", [REPLY_TOPIC.encode()], hwm=1000)
        pub = bus.publisher("memory://xsub", hwm=1000)
        try:
            await proxy.wait_subscriptions(lambda s: REPLY_TOPIC.encode() in s, 10)
            yield bus, proxy, server, replies, pub
        finally:
            replies.close()
            pub.close()


async def test_traces_start_for_the_request_right_after_a_subscription_and_stop_after() -> None:
    async with fabric() as (bus, proxy, server, replies, pub):
        traces: BusSocket | None = None
        try:
            assert (await call(pub, replies, 1)).ok
            assert server.traces_unwanted == 1  # nobody listens: not even built
            traces = bus.subscriber("memory://xpub", [TRACE_TOPIC.encode()], hwm=1000)
            await proxy.wait_subscriptions(lambda s: TRACE_TOPIC.encode() in s, 10)
            # At once, not at the next heartbeat: this request's trace arrives.
            assert (await call(pub, replies, 2)).ok
            got = await traces_of(traces, "r2", 5)
            assert len(got) == 1 and got[0]["skill"] == "guide", got
            assert server.traces_unwanted == 1
            traces.close()
            traces = None
            await proxy.wait_subscriptions(lambda s: TRACE_TOPIC.encode() not in s, 10)
            await asyncio.sleep(0)  # the proxy's heartbeat reaches the server's inbox
            assert (await call(pub, replies, 3)).ok
            assert server.traces_unwanted == 2
        finally:
            if traces is not None:
                traces.close()


async def test_a_subscriber_to_everything_wants_traces_too() -> None:
    async with fabric() as (bus, proxy, server, _replies, pub):
        everything = bus.subscriber("memory://xpub", [b""], hwm=1000)
        try:
            await proxy.wait_subscriptions(lambda s: b"" in s, 10)
            assert (await call(pub, everything, 7)).ok
            assert await traces_of(everything, "r7", 5)
            assert server.traces_unwanted == 0
        finally:
            everything.close()


async def test_a_refused_trace_subscription_still_turns_traces_on() -> None:
    # The table's bound refuses it: the proxy no longer knows who listens, so it
    # must assume someone does (libzmq still delivers to that subscriber).
    async with fabric() as (bus, proxy, server, replies, pub):
        traces: BusSocket | None = None
        try:
            proxy._subs.max_total = len(proxy._subs)  # full: the next one is refused
            traces = bus.subscriber("memory://xpub", [TRACE_TOPIC.encode()], hwm=1000)
            deadline = time.monotonic() + 10
            while not proxy._subs.saturated:  # in-process state: no event to wait on
                assert time.monotonic() < deadline, "the trace subscription was not refused"
                await asyncio.sleep(0.005)
            assert (await call(pub, replies, 5)).ok
            assert server.traces_unwanted == 0
        finally:
            if traces is not None:
                traces.close()
