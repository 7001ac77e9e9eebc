"""The core integration cases, once over ZeroMQ and once in memory.

The same roles run in this process (``Proxy``, ``SkillServer``,
``SkillScaleClient``) over the transport each case is parametrised with:
``memory`` is a :class:`~skillscale.core.memory_bus.MemoryBus` (no sockets),
``zmq`` is the product's ZeroMQ over loopback. Only the bus differs: replica
groups, matching and execution (real child processes) are the real ones.
Time each half with ``-k memory`` / ``-k zmq``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from skillscale import ErrorCode, Reply, SkillScaleClient
from skillscale.core.memory_bus import MemoryBus
from skillscale.core.protocol import Request
from skillscale.core.replica_protocol import HB
from skillscale.proxy.groups import GroupsConfig
from skillscale.proxy.proxy import Proxy, ProxyConfig
from skillscale.skill_server.server import ServerConfig, SkillServer
from tests.helpers import BUNDLED_SKILLS, FIXTURE_SKILLS

pytestmark = pytest.mark.timeout(60)

T = "TOPIC_TESTING"
DATA = "TOPIC_DATA_PROCESSING"
CODE = "TOPIC_CODE_ANALYSIS"
TESTING = FIXTURE_SKILLS / "testing"
WAIT = 20.0
"""Seconds any single step may take before the case fails."""

ARTICLE = (
    "ZeroMQ is a high-performance asynchronous messaging library. It provides a message "
    "queue, but unlike message-oriented middleware, a ZeroMQ system can run without a "
    "dedicated message broker. Publish-subscribe is one of its core patterns. Many trading "
    "systems use ZeroMQ for its low latency."
)
CSV = "id,region,revenue\n1,north,1200\n2,south,1350\n3,north,1100\n3,north,1100\n"
CODE_SAMPLE = (
    "import os\nimport json\n\n\ndef tangled(a, b):\n    if a:\n        for x in range(b):\n"
    "            if x and a or b:\n                return 1\n    return 0\n\n\n"
    "def _unused_helper():\n    return json.dumps({})\n"
)


def explicit(skill: str, data: str) -> str:
    return json.dumps({"skill": skill, "data": data})


class Fabric:
    """A proxy, servers and clients in this process over one transport."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.bus = MemoryBus() if kind == "memory" else None
        self.proxy: Proxy | None = None
        self.servers: list[SkillServer] = []
        self.clients: list[SkillScaleClient] = []

    async def start_proxy(self, **groups: Any) -> Proxy:
        groups.setdefault("heartbeat_timeout", 0.5)
        groups.setdefault("no_server_wait", 0.3)
        cfg = ProxyConfig(
            xsub_bind="tcp://127.0.0.1:0",
            xpub_bind="tcp://127.0.0.1:0",
            router_bind="tcp://127.0.0.1:0",
            metrics_port=None,
            linger_ms=0,
            tick=0.05,
            heartbeat_interval=0.1,
            groups=GroupsConfig(**groups),
        )
        self.proxy = Proxy(cfg, transport=self.bus)
        await self.proxy.start()
        return self.proxy

    async def start_server(
        self, skills: Path, topic: str, server_id: str, **kw: Any
    ) -> SkillServer:
        assert self.proxy is not None and self.proxy.router_endpoint is not None
        kw.setdefault("workers", 2)
        kw.setdefault("executor", "cold")
        cfg = ServerConfig(
            topics=[topic],
            skills_dirs=[skills],
            proxy_router=self.proxy.router_endpoint,
            proxy_xsub=self.proxy.xsub_endpoint,
            proxy_xpub=self.proxy.xpub_endpoint,
            server_id=server_id,
            matcher="keyword",
            heartbeat_interval=0.1,
            reload_interval=0,
            ready_timeout=WAIT,
            grace=1.0,
            **kw,
        )
        server = SkillServer(cfg, transport=self.bus)
        await server.start()
        self.servers.append(server)
        return server

    async def client(self) -> SkillScaleClient:
        assert self.proxy is not None
        proxy = self.proxy
        client = SkillScaleClient(proxy.xsub_endpoint, proxy.xpub_endpoint, timeout=WAIT,
                                  connect_timeout=WAIT, transport=self.bus)  # fmt: skip
        await client.connect()
        self.clients.append(client)
        return client

    async def lose(self, server: SkillServer) -> None:
        """The replica vanishes: no goodbye, no hand-back, no reply."""
        assert server._dealer is not None
        server._dealer.close()
        await server.stop(grace=0)
        self.servers.remove(server)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for server in reversed(self.servers):
            await server.stop(grace=0)
        if self.proxy is not None:
            await self.proxy.stop()


class Gate:
    """Holds a server's requests before they run, until opened."""

    def __init__(self, server: SkillServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()
        original = server.handler.process

        async def gated(request: Request, received_at: float) -> Reply:
            self.entered.set()
            await asyncio.wait_for(self.open.wait(), WAIT)
            return await original(request, received_at)

        monkeypatch.setattr(server.handler, "process", gated)


async def within(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, WAIT)


BUNDLED = [
    (DATA, "summarize: " + ARTICLE, "text-summarizer", "## Summary"),
    (DATA, "analyze this CSV:\n" + CSV, "csv-analyzer", "north"),
    (CODE, "analyze the complexity of this code:\n" + CODE_SAMPLE, "code-complexity", "tangled"),
    (CODE, explicit("dead-code-detector", CODE_SAMPLE), "dead-code-detector", "_unused_helper"),
]


@pytest.mark.parametrize(("topic", "intent", "skill", "expect"), BUNDLED,
                         ids=[case[2] for case in BUNDLED])  # fmt: skip
async def test_bundled_skill(fabric: Fabric, topic: str, intent: str, skill: str,
                             expect: str) -> None:  # fmt: skip
    await fabric.start_proxy()
    folder = "data-processing" if topic == DATA else "code-analysis"
    await fabric.start_server(BUNDLED_SKILLS / folder, topic, f"{folder}-1")
    client = await fabric.client()
    reply = await client.call(topic, intent)
    assert reply.ok, reply.error
    assert reply.skill == skill and expect in reply.content
    assert reply.trace is not None and reply.trace.attempt == 1


async def test_bad_input_is_bad_request(fabric: Fabric) -> None:
    await fabric.start_proxy()
    await fabric.start_server(BUNDLED_SKILLS / "data-processing", DATA, "data-1")
    client = await fabric.client()
    reply = await client.call(DATA, explicit("csv-analyzer", "just words"))
    assert reply.error_code is ErrorCode.BAD_REQUEST and reply.skill == "csv-analyzer"


async def test_no_match(fabric: Fabric) -> None:
    await fabric.start_proxy()
    await fabric.start_server(TESTING, T, "testing-1")
    client = await fabric.client()
    reply = await client.call(T, "what is the weather in Paris?")
    assert reply.error_code is ErrorCode.NO_MATCH and "threshold" in (reply.error or "")


async def test_no_server(fabric: Fabric) -> None:
    await fabric.start_proxy(no_server_wait=0.2)
    client = await fabric.client()
    reply = await client.call("TOPIC_NOBODY_HOME", "anything")
    assert reply.error_code is ErrorCode.NO_SERVER and reply.server_id == "proxy"


async def test_overloaded(fabric: Fabric, monkeypatch: pytest.MonkeyPatch) -> None:
    await fabric.start_proxy(max_queue=1)
    server = await fabric.start_server(TESTING, T, "testing-1", workers=1)
    gate = Gate(server, monkeypatch)
    client = await fabric.client()
    running = asyncio.ensure_future(client.call(T, explicit("echo", "first")))
    await within(gate.entered.wait())
    # One more waits in the proxy's queue (max_queue=1); the other is refused.
    second = asyncio.ensure_future(client.call(T, explicit("echo", "second")))
    third = asyncio.ensure_future(client.call(T, explicit("echo", "third")))
    done, _ = await within(asyncio.wait([second, third], return_when=asyncio.FIRST_COMPLETED))
    refused = done.pop().result()
    assert refused.error_code is ErrorCode.OVERLOADED, refused
    gate.open.set()
    replies = await within(asyncio.gather(running, second, third))
    assert sorted(r.content.strip() for r in replies if r.ok) in (
        ["first", "second"],
        ["first", "third"],
    )


async def test_redelivery_after_a_replica_is_lost(
    fabric: Fabric, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fabric.start_proxy()
    lost = await fabric.start_server(TESTING, T, "replica-a", workers=1)
    gate = Gate(lost, monkeypatch)  # never opened: the job is lost with its replica
    client = await fabric.client()
    call = asyncio.ensure_future(client.call(T, explicit("echo", "survives")))
    await within(gate.entered.wait())
    await fabric.start_server(TESTING, T, "replica-b", workers=1)
    await fabric.lose(lost)
    reply = await within(call)
    assert reply.ok and reply.content.strip() == "survives", reply
    assert reply.server_id == "replica-b"
    assert reply.trace is not None and reply.trace.attempt == 2
    assert reply.trace.redelivered_from == ["replica-a"]


async def test_first_reply_wins(fabric: Fabric, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await fabric.start_proxy()
    slow = await fabric.start_server(TESTING, T, "replica-a", workers=1)
    gate = Gate(slow, monkeypatch)
    client = await fabric.client()
    call = asyncio.ensure_future(client.call(T, explicit("echo", "once")))
    await within(gate.entered.wait())
    # replica-a goes silent (no heartbeats) but keeps its job: the proxy
    # gives the job to replica-b, and replica-a answers late.
    send_group = slow._send_group

    async def no_heartbeats(frames: list[bytes], *, block: bool = True, link: int = 0) -> bool:
        return True if frames[1] == HB else await send_group(frames, block=block, link=link)

    monkeypatch.setattr(slow, "_send_group", no_heartbeats)
    await fabric.start_server(TESTING, T, "replica-b", workers=1)
    reply = await within(call)
    assert reply.ok and reply.server_id == "replica-b" and reply.trace is not None
    assert reply.trace.attempt == 2
    late = asyncio.Event()
    on_reply = proxy.groups.on_reply

    def counted(*args: Any, **kwargs: Any) -> None:
        on_reply(*args, **kwargs)
        late.set()

    monkeypatch.setattr(proxy.groups, "on_reply", counted)
    gate.open.set()
    await within(late.wait())
    assert proxy.groups.duplicates_dropped == 1
