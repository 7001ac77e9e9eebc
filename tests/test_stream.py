"""The proxy's XSUB -> XPUB stream: every message through intact, counted exactly.

Messages on topics no replica group routes (replies, events, requests with
only plain subscribers) take the stream's per-batch path; these tests pin
what it must keep: order, frames, the request size limit, and exact
per-topic metrics.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator

import httpx
import pytest
import zmq
import zmq.asyncio

from skillscale.proxy import Proxy, ProxyConfig
from tests.helpers import RoleProcess, start_proxy

pytestmark = pytest.mark.timeout(60)

REQUEST = b"TOPIC_STREAMTEST"
REPLY = b"AGENT_REPLY_streamtest"
EVENT = b"_SKILLSCALE_STREAMTEST"
PRIME = b"_SKILLSCALE_PRIME"


@pytest.fixture
def proxy() -> Iterator[RoleProcess]:
    # Queues that hold the whole burst: a loss would be the proxy's.
    role = start_proxy(max_message_bytes=1000, subscriber_hwm=20_000, hwm=20_000)
    try:
        yield role
    finally:
        role.stop()


@pytest.fixture
def ends(proxy: RoleProcess) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A publisher and a subscriber (to every topic above), the path proven live."""
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    for sock in (pub, sub):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    for topic in (REQUEST, REPLY, EVENT, PRIME):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(proxy.ready["xpub"])
    pub.connect(proxy.ready["xsub"])
    primes = 0
    while True:  # until a prime comes back: both subscriptions are through
        pub.send_multipart([PRIME, b"prime"])
        primes += 1
        assert primes < 500, "the proxy never forwarded a prime"
        if sub.poll(100):
            break
    while sub.poll(200):
        assert sub.recv_multipart()[0] == PRIME
    try:
        yield pub, sub
    finally:
        pub.close()
        sub.close()
        ctx.term()


def metric(proxy: RoleProcess, name: str, **labels: str) -> float:
    text = httpx.get(proxy.ready["metrics"], timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_stream_is_forwarded_in_order_and_counted_exactly(
    proxy: RoleProcess, ends: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]
) -> None:
    pub, sub = ends
    sent = []
    for i in range(3000):
        if i % 3 == 0:
            msg = [REQUEST, json.dumps({"n": i}).encode()]
        elif i % 3 == 1:
            msg = [REPLY, b"r" * (i % 50), b""]  # three frames, one of them empty
        else:
            msg = [EVENT, str(i).encode()]
        sent.append(msg)
        pub.send_multipart(msg)
    got = []
    while len(got) < len(sent) and sub.poll(5000):
        got.append(sub.recv_multipart())
    assert got == sent
    down = {"direction": "downstream"}
    for topic, label in ((REQUEST, "TOPIC_STREAMTEST"), (REPLY, "AGENT_REPLY_*"),
                         (EVENT, "_SKILLSCALE_STREAMTEST")):  # fmt: skip
        ours = [m for m in sent if m[0] == topic]
        assert len(ours) == 1000
        count = metric(proxy, "skillscale_proxy_messages_total", topic=label, **down)
        size = metric(proxy, "skillscale_proxy_bytes_total", topic=label, **down)
        assert (count, size) == (len(ours), sum(len(f) for m in ours for f in m)), label
    assert metric(proxy, "skillscale_proxy_dropped_total") == 0


def test_an_oversized_request_is_refused_not_forwarded(
    proxy: RoleProcess, ends: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]
) -> None:
    pub, sub = ends
    big = json.dumps({"request_id": "big", "reply_to": REPLY.decode(), "intent": "x" * 2000})
    pub.send_multipart([REQUEST, big.encode()])
    pub.send_multipart([REQUEST, b"small"])
    topic, body = sub.recv_multipart()
    assert topic == REPLY
    reply = json.loads(body)
    assert reply["request_id"] == "big" and reply["error_code"] == "payload_too_large"
    # The next message is the small request: the big one was never published.
    assert sub.poll(5000) and sub.recv_multipart() == [REQUEST, b"small"]
    assert metric(proxy, "skillscale_proxy_dropped_total", reason="too_large") == 1


async def test_the_collector_is_tuned_while_the_stream_runs_and_restored_after() -> None:
    # Process-wide state: a proxy run inside another process (a test's) must
    # leave Python's cyclic collector as it found it.
    before = gc.get_threshold()
    config = ProxyConfig(
        xsub_bind="tcp://127.0.0.1:0", xpub_bind="tcp://127.0.0.1:0",
        router_bind="tcp://127.0.0.1:0", metrics_port=None,
    )  # fmt: skip
    async with Proxy(config):
        deadline = asyncio.get_running_loop().time() + 10
        while gc.get_threshold()[0] != 20_000:  # the loop is a task: it starts soon
            assert asyncio.get_running_loop().time() < deadline, "the collector was not tuned"
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


async def test_a_message_failing_on_the_stream_is_dropped_and_the_stream_goes_on() -> None:
    config = ProxyConfig(
        xsub_bind="tcp://127.0.0.1:0", xpub_bind="tcp://127.0.0.1:0",
        router_bind="tcp://127.0.0.1:0", metrics_port=None,
    )  # fmt: skip
    async with Proxy(config) as proxy:
        stream = proxy._stream
        assert stream is not None
        original = stream.publish

        def flaky(frames: list[zmq.Frame]) -> None:
            if frames[1].bytes == b"poison":
                raise RuntimeError("injected fault on one message")
            original(frames)

        stream.publish = flaky  # type: ignore[method-assign]
        ctx = zmq.asyncio.Context()
        pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        try:
            for sock in (pub, sub):
                sock.setsockopt(zmq.LINGER, 0)
            sub.subscribe(EVENT)
            sub.connect(proxy.xpub_endpoint)
            pub.connect(proxy.xsub_endpoint)
            received: list[bytes] = []
            for _ in range(200):  # three frames: the stream's publish, not the inline send
                pub.send_multipart([EVENT, b"poison", b""])
                pub.send_multipart([EVENT, b"fine", b""])
                if await sub.poll(50):
                    received.append((await sub.recv_multipart())[1])
                    break
            assert received == [b"fine"]
            assert not proxy.crashed.is_set()
        finally:
            pub.close(0)
            sub.close(0)
            ctx.term()
