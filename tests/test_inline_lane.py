"""The inline lane end to end: the real proxy and server on the in-memory bus."""

from __future__ import annotations

import asyncio
import json

import pytest

from skillscale import Reply, Request
from skillscale.core.memory_bus import MemoryBus
from skillscale.proxy import Proxy, ProxyConfig
from skillscale.skill_server.server import ServerConfig, SkillServer
from tests.helpers import FIXTURE_SKILLS, collect_replies

pytestmark = pytest.mark.timeout(60)


def request(i: int, skill: str, data: str = "") -> Request:
    return Request(
        request_id=f"r{i}",
        reply_to="AGENT_REPLY_lane",
        intent=json.dumps({"skill": skill, "data": data}),
    )


async def test_a_lane_dispatch_that_needs_a_busy_worker_goes_back_and_runs_later() -> None:
    bus = MemoryBus()
    config = ServerConfig(
        topics=["T"], skills_dirs=[FIXTURE_SKILLS / "testing"], workers=1, inline_slots=8,
        executor="cold",
    )  # fmt: skip
    async with (
        Proxy(ProxyConfig(metrics_port=None), transport=bus) as proxy,
        SkillServer(config, transport=bus),
    ):
        sub = bus.subscriber("memory://xpub", [b"AGENT_REPLY_lane"], hwm=1000)
        pub = bus.publisher("memory://xsub", hwm=1000)
        got: dict[str, Reply] = {}

        try:
            while not proxy.groups.members:  # the server's first heartbeat
                await asyncio.sleep(0.01)
            member = next(iter(proxy.groups.members.values()))
            assert member.state.inline_slots == 8
            for i in range(12):  # instruction-only: answered inline, the lane opens
                pub.send([b"T", request(i, "guide").to_bytes()])
            await collect_replies(sub, got, 12, 10)
            assert len(got) == 12 and all(r.ok for r in got.values())
            assert member.lane == 8
            # One worker, four scripts at once: one takes the worker, the rest
            # ride the lane, come back busy and wait in the proxy's queue.
            for i in range(100, 104):
                pub.send([b"T", request(i, "slow", "0.2").to_bytes()])
            await collect_replies(sub, got, 16, 20)
        finally:
            sub.close()
            pub.close()
    slow = [got[f"r{i}"] for i in range(100, 104)]
    assert all(r.ok and r.content.strip() == "slept 0.2" for r in slow), slow
    assert proxy.groups.bounced >= 1 and proxy.groups.redelivered == 0
    for reply in slow:
        assert reply.trace is not None and reply.trace.attempt == 1
        # It never waited inside the server behind the busy worker.
        assert reply.trace.queue_ms is not None and reply.trace.queue_ms < 150, reply.trace
