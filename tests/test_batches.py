"""Batched REQ and REPLY between the proxy and its replicas (see core/replica_protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest

from skillscale import Reply, Request
from skillscale.core.memory_bus import MemoryBus
from skillscale.core.replica_protocol import (
    HB,
    INLINE,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    REPLY,
    REQ,
    REQ_GROUP,
    VERSION,
    ServerState,
    batch_frame,
    join_batch,
)
from skillscale.core.runtime import within
from skillscale.core.transport import BusSocket, DealerSocket
from skillscale.proxy import Proxy, ProxyConfig
from skillscale.skill_server.proxies import ProxyLinks
from skillscale.skill_server.server import ServerConfig, SkillServer
from tests.helpers import FIXTURE_SKILLS, collect_replies

pytestmark = pytest.mark.timeout(60)
REPLY_TOPIC = "AGENT_REPLY_batches"


def request(i: int, skill: str = "guide") -> Request:
    return Request(request_id=f"r{i}", reply_to=REPLY_TOPIC,
                   intent=json.dumps({"skill": skill, "data": str(i)}))  # fmt: skip


def req(i: int, payload: bytes = b"{}") -> list[bytes]:
    return [VERSION, REQ, b"d%d" % i, b"T", payload, b"1", b"", b""]


def test_join_batch_keeps_order_and_respects_both_limits() -> None:
    joined = join_batch([req(i) for i in range(70)], REQ_GROUP, MAX_BATCH)
    assert [len(m) for m in joined] == [2 + 64 * REQ_GROUP, 2 + 6 * REQ_GROUP]
    ids = [m[i] for m in joined for i in range(2, len(m), REQ_GROUP)]
    assert ids == [b"d%d" % i for i in range(70)]
    assert all(m[:2] == [VERSION, REQ] for m in joined)
    assert len(join_batch([req(i) for i in range(10)], REQ_GROUP, 4)) == 3
    big = b"x" * (MAX_BATCH_BYTES // 2 + 1)
    # Two big payloads never share a message; a big one travels alone.
    sizes = [len(m) for m in join_batch([req(0, big), req(1, big), req(2)], REQ_GROUP, 64)]
    assert sizes == [2 + REQ_GROUP, 2 + 2 * REQ_GROUP]


@pytest.mark.parametrize(
    ("raw", "count"),
    [(b"64", 64), (b"1", 1), (b"9999", MAX_BATCH), (b"0", 1), (b"", 1), (b"x2", 1),
     (b"-5", 1), (b"123456", 1), ("٣".encode(), 1)],
)  # fmt: skip
def test_a_proxy_batches_frame_is_parsed_within_bounds(raw: bytes, count: int) -> None:
    assert batch_frame(raw) == count


def test_a_server_learns_from_each_proxy_heartbeat_whether_it_takes_batches() -> None:
    links = ProxyLinks(2)
    links.on_heartbeat(0, [b"active", b"e1", b"64"], 1.0)
    links.on_heartbeat(1, [b"passive", b"e2"], 1.0)  # an older proxy: no frame
    assert links.batches == [64, 1]
    links.on_heartbeat(0, [b"active", b"e1"], 2.0)  # replaced by an older one
    assert links.batches == [1, 1]


async def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # state of in-process objects: no event to wait on
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_burst_travels_in_batches_both_ways_and_every_request_gets_one_reply() -> None:
    bus = MemoryBus()
    config = ServerConfig(topics=["T"], skills_dirs=[FIXTURE_SKILLS / "testing"], workers=2,
                          inline_slots=32, executor="cold")  # fmt: skip
    async with (
        Proxy(ProxyConfig(metrics_port=None), transport=bus) as proxy,
        SkillServer(config, transport=bus),
    ):
        sub = bus.subscriber("memory://xpub", [REPLY_TOPIC.encode()], hwm=10_000)
        pub = bus.publisher("memory://xsub", hwm=10_000)
        got: dict[str, Reply] = {}
        try:
            await wait_until(lambda: bool(proxy.groups.members))
            member = next(iter(proxy.groups.members.values()))
            assert member.state.batches == MAX_BATCH
            for i in range(300):
                pub.send([b"T", request(i).to_bytes()])
            await collect_replies(sub, got, 300, 20)
            proxy._update_gauges()
            metrics = proxy.metrics.registry
        finally:
            sub.close()
            pub.close()
    assert sorted(got) == sorted(f"r{i}" for i in range(300))
    assert all(r.ok and r.skill == "guide" for r in got.values())
    dispatched, replied = proxy._io.batched
    assert dispatched > 0 and replied > 0, proxy._io.batched
    for kind, count in (("dispatch", dispatched), ("reply", replied)):
        assert metrics.get_sample_value("skillscale_proxy_batched_total", {"kind": kind}) == count


async def fake_replica(bus: MemoryBus, identity: bytes, state: ServerState) -> DealerSocket:
    dealer = bus.dealer("memory://router", identity, hwm=10_000)
    # Two: a proxy just started admits a replica once it said what it holds.
    for _ in range(2):
        await dealer.send([VERSION, HB, state.to_bytes()], timeout=5)
    return dealer


@contextlib.asynccontextmanager
async def one_fake_replica(
    state: ServerState,
) -> AsyncIterator[tuple[Proxy, DealerSocket, BusSocket, BusSocket]]:
    """A real proxy on the memory bus with one replica this test plays, admitted;
    and a subscriber to the reply topic and a publisher of requests."""
    bus = MemoryBus()
    identity = state.server_id.encode()
    async with Proxy(ProxyConfig(metrics_port=None), transport=bus) as proxy:
        dealer = await fake_replica(bus, identity, state)
        sub = bus.subscriber("memory://xpub", [REPLY_TOPIC.encode()], hwm=1000)
        pub = bus.publisher("memory://xsub", hwm=1000)
        try:
            await wait_until(lambda: identity in proxy.groups.members)
            yield proxy, dealer, sub, pub
        finally:
            sub.close()
            pub.close()
            dealer.close()


async def test_an_old_replica_gets_one_request_per_message_and_its_replies_are_taken() -> None:
    old = ServerState(server_id="old-1", topics=["T"], slots=8)  # announces no batches
    assert old.batches == 1
    got: dict[str, Reply] = {}
    async with one_fake_replica(old) as (proxy, dealer, sub, pub):
        for i in range(8):
            pub.send([b"T", request(i).to_bytes()])
        reqs = []
        while len(reqs) < 8:
            frames = await within(dealer.recv_multipart(), 5)
            if frames[1] == REQ:
                assert len(frames) == 2 + REQ_GROUP, "a batch sent to an old replica"
                reqs.append(frames)
        for frames in reqs:  # the old REPLY shape: no flag frame
            rid = Request.from_bytes(frames[4]).request_id
            payload = Reply(request_id=rid, status="success", content="old").to_bytes()
            answer = [VERSION, REPLY, frames[2], REPLY_TOPIC.encode(), payload]
            await dealer.send(answer, timeout=5)
        await collect_replies(sub, got, 8, 10)
    assert sorted(got) == [f"r{i}" for i in range(8)] and proxy._io.batched == [0, 0]


async def test_a_malformed_group_in_a_batched_reply_costs_only_itself() -> None:
    state = ServerState(server_id="new-1", topics=["T"], slots=8, batches=MAX_BATCH)
    got: dict[str, Reply] = {}
    async with one_fake_replica(state) as (proxy, dealer, sub, pub):
        for i in range(4):
            pub.send([b"T", request(i).to_bytes()])
        groups: list[list[bytes]] = []
        while sum(len(g) for g in groups) < 4 * REQ_GROUP:
            frames = await within(dealer.recv_multipart(), 5)
            if frames[1] == REQ:
                groups.append(frames[2:])
        flat = [f for g in groups for f in g]
        dispatches = [flat[i : i + REQ_GROUP] for i in range(0, len(flat), REQ_GROUP)]
        assert len(dispatches) == 4 and len(groups) < 4, "the burst was not batched"
        answer: list[bytes] = [VERSION, REPLY]
        for n, (dispatch_id, _topic, payload, *_rest) in enumerate(dispatches):
            request_id = Request.from_bytes(payload).request_id
            body = Reply(request_id=request_id, status="success", content="new").to_bytes()
            flag = b"bogus" if n == 1 else (INLINE if n % 2 else b"")
            answer += [dispatch_id, REPLY_TOPIC.encode(), body, flag]
        await dealer.send(answer, timeout=5)
        await collect_replies(sub, got, 3, 10)
        bad = Request.from_bytes(dispatches[1][2]).request_id
        assert bad not in got and len(got) == 3
        assert proxy.groups.inflight and list(proxy.groups.inflight) == [dispatches[1][0]]
        # A message longer than any batch is dropped whole, loop unharmed.
        await dealer.send([VERSION, REPLY, *([b"x"] * (4 * MAX_BATCH + 4))], timeout=5)
        await dealer.send([VERSION, HB, state.to_bytes()], timeout=5)
        await wait_until(lambda: proxy.metrics.registry.get_sample_value(
            "skillscale_proxy_dropped_total",
            {"topic": "_SKILLSCALE_GROUP", "reason": "malformed"}) == 2)  # fmt: skip


async def test_a_server_answers_a_batched_req_with_one_batched_reply_in_order() -> None:
    bus = MemoryBus()
    sockets = bus.bind_proxy()  # this test is the proxy
    assert sockets.router is not None
    router = sockets.router
    config = ServerConfig(topics=["T"], skills_dirs=[FIXTURE_SKILLS / "testing"], workers=1,
                          executor="cold", heartbeat_interval=0.05)  # fmt: skip

    async def next_message(command: bytes) -> list[bytes]:
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, f"no {command!r} from the server"
            await sockets.wait(0.05)
            for frames in router.drain(100):
                raw = [bytes(f) for f in frames]
                if raw[2] == command:
                    return raw

    server = SkillServer(config, transport=bus)
    starting = asyncio.create_task(server.__aenter__())  # it waits for a proxy's heartbeat
    try:
        hb = await next_message(HB)
        identity, state = hb[0], ServerState.from_bytes(hb[3])
        assert state.batches == MAX_BATCH
        router.send([identity, VERSION, HB, b"active", b"epoch-1", b"64"])
        await within(starting, 10)
        groups = [
            [b"p-1", b"T", request(1).to_bytes(), b"1", b"", b""],
            [b"p-2", b"T", b"\xff not json", b"1", b"", b""],
            [b"p-3", b"T", request(3).to_bytes(), b"1", b"", b""],
        ]
        router.send([identity, VERSION, REQ, *[f for g in groups for f in g]])
        reply = await next_message(REPLY)
    finally:
        await within(starting, 10)
        await server.__aexit__(None, None, None)
    args = reply[3:]
    assert len(args) == 3 * 4, "not one batched REPLY"
    assert [args[i] for i in range(0, 12, 4)] == [b"p-1", b"p-2", b"p-3"]
    assert all(args[i + 3] == INLINE for i in range(0, 12, 4))
    answers = [Reply.from_bytes(args[i + 2]) for i in range(0, 12, 4)]
    assert answers[0].ok and answers[2].ok and answers[0].skill == "guide"
    assert not answers[1].ok and answers[1].error_code is not None
    assert answers[1].error_code.value == "bad_request"


async def test_a_replica_that_leaves_and_rejoins_within_one_batch_gets_each_request_once() -> None:
    state = ServerState(server_id="back-1", topics=["T"], slots=8, batches=MAX_BATCH)
    async with one_fake_replica(state) as (proxy, dealer, _sub, pub):
        # All of it lands before the proxy's next turn: the requests are
        # gathered for the replica, which then says BYE and comes back.
        for i in range(3):
            pub.send([b"T", request(i).to_bytes()])
        await dealer.send([VERSION, b"BYE"], timeout=5)
        for _ in range(2):
            await dealer.send([VERSION, HB, state.to_bytes()], timeout=5)
        dispatches: list[tuple[bytes, bytes]] = []
        while len(dispatches) < 3:
            frames = await within(dealer.recv_multipart(), 5)
            if frames[1] == REQ:
                args = frames[2:]
                dispatches += [(args[i], args[i + 3]) for i in range(0, len(args), REQ_GROUP)]
        member = proxy.groups.members[b"back-1"]
        await wait_until(lambda: len(member.inflight) == 3)
        # Nothing else is on its way: a heartbeat round trip comes back first.
        await dealer.send([VERSION, HB, state.to_bytes()], timeout=5)
        while (frames := await within(dealer.recv_multipart(), 5))[1] != HB:
            args = frames[2:]
            dispatches += [(args[i], args[i + 3]) for i in range(0, len(args), REQ_GROUP)]
    ids = [d for d, _ in dispatches]
    assert len(ids) == len(set(ids)) == 3, dispatches
    assert {attempt for _, attempt in dispatches} == {b"2"}  # the first attempt was lost with it
