"""The proxy in-process: forwarding both ways, subscription tracking, clean stop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import zmq
import zmq.asyncio

from skillscale.proxy import Proxy, ProxyConfig
from tests.helpers import start_proxy


@pytest.fixture
async def running_proxy() -> AsyncIterator[Proxy]:
    config = ProxyConfig(
        xsub_bind="tcp://127.0.0.1:0",
        xpub_bind="tcp://127.0.0.1:0",
        router_bind="tcp://127.0.0.1:0",
        metrics_port=None,
    )
    async with Proxy(config) as p:
        yield p


@pytest.fixture
def ctx() -> zmq.asyncio.Context:
    context = zmq.asyncio.Context()
    yield context
    # Fails (by hanging into the test timeout) if any socket was left open.
    context.term()


async def recv_until(sock: zmq.asyncio.Socket, topic: bytes, send: object) -> list[bytes]:
    """Keep sending until a message on ``topic`` arrives (slow-joiner safe)."""
    for _ in range(200):
        send()  # type: ignore[operator]
        if await sock.poll(50):
            frames: list[bytes] = await sock.recv_multipart()
            if frames[0] == topic:
                return frames
    raise TimeoutError("nothing arrived")


async def test_forwards_multipart_messages_and_counts_subscriptions(
    running_proxy: Proxy, ctx: zmq.asyncio.Context
) -> None:
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        for s in (pub, sub):
            s.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"TOPIC_A")
        sub.connect(running_proxy.xpub_endpoint)
        pub.connect(running_proxy.xsub_endpoint)
        frames = await recv_until(
            sub, b"TOPIC_A", lambda: pub.send_multipart([b"TOPIC_A", b"1", b"\x00\xff"])
        )
        assert frames == [b"TOPIC_A", b"1", b"\x00\xff"]
        assert b"TOPIC_A" in running_proxy.subscriptions
        sub.setsockopt(zmq.UNSUBSCRIBE, b"TOPIC_A")
        await running_proxy.wait_subscriptions(lambda subs: b"TOPIC_A" not in subs, 5)
    finally:
        pub.close(0)
        sub.close(0)


async def test_held_replies_go_to_their_exact_topic_only(
    running_proxy: Proxy, ctx: zmq.asyncio.Context
) -> None:
    # A group reply whose caller is not subscribed (yet) is held; a peer
    # subscribing to the bare prefix must not collect it.
    running_proxy._publish([b"AGENT_REPLY_victim", b"secret"])
    assert running_proxy._held_count == 1
    spy, caller = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    try:
        for s in (spy, caller):
            s.setsockopt(zmq.LINGER, 0)
            s.connect(running_proxy.xpub_endpoint)
        spy.setsockopt(zmq.SUBSCRIBE, b"AGENT_REPLY_")
        await running_proxy.wait_subscriptions(lambda subs: b"AGENT_REPLY_" in subs, 5)
        assert running_proxy._held_count == 1 and not await spy.poll(100)
        caller.setsockopt(zmq.SUBSCRIBE, b"AGENT_REPLY_victim")
        assert await caller.poll(5000)
        assert await caller.recv_multipart() == [b"AGENT_REPLY_victim", b"secret"]
        assert running_proxy._held_count == 0 and running_proxy._held_bytes == 0
    finally:
        spy.close(0)
        caller.close(0)


async def test_topic_labels_are_bounded(running_proxy: Proxy) -> None:
    metrics = running_proxy.metrics
    assert metrics.topic_label(b"AGENT_REPLY_abc") == "AGENT_REPLY_*"
    assert metrics.topic_label(b"_SKILLSCALE_PROBE_x") == "_SKILLSCALE_PROBE_*"
    assert metrics.topic_label(b"\xff\xfe") == "_invalid"
    assert metrics.topic_label(b"T" * 100_000) == "_invalid"
    labels = {metrics.topic_label(f"T{i}".encode()) for i in range(2000)}
    assert "_other" in labels and len(labels) <= 501


def test_proxy_process_stops_cleanly_on_sigterm() -> None:
    role = start_proxy()
    assert role.ready["metrics"].startswith("http://127.0.0.1:")
    assert role.stop() == 0
