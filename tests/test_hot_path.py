"""The bus hot path (issue 14): inline answers, prefetch, batched I/O, the SDK's encoding.

Each change that made an instruction-only call cheaper keeps a rule of the
fabric; these cases check the rule, not the speed (``bench/speed.py`` does that).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import zmq

from skillscale.core.errors import ConfigError, ErrorCode
from skillscale.core.protocol import IntentMode, Reply, Request, parse_intent
from skillscale.core.transport import ZmqTransport
from skillscale.sdk.client import _request_payload
from skillscale.skill_server.executor import SubprocessExecutor
from skillscale.skill_server.handler import HandlerConfig, RequestHandler
from skillscale.skill_server.registry import SkillRegistry
from skillscale.skill_server.server import ServerConfig, SkillServer
from tests.helpers import FIXTURE_SKILLS
from tests.test_fabric_cases import WAIT, Fabric, explicit

pytestmark = pytest.mark.timeout(60)

T = "TOPIC_TESTING"
TESTING = FIXTURE_SKILLS / "testing"
REPLY_TO = "AGENT_REPLY_" + "c" * 32


# -- the SDK's request frame -------------------------------------------------------


@pytest.mark.parametrize(
    "intent",
    ['{"skill": "echo", "data": "é ✓"}', "plain text", 'quote " backslash \\ newline \n',
     "\u2028 \x00 \x1f", json.dumps({"skill": "x", "data": {"k": [1, 2.5, None]}})],
)  # fmt: skip
def test_request_frame_is_the_models_frame(intent: str) -> None:
    now = time.time()
    fast = _request_payload("a1b2", REPLY_TO, intent, now, now + 30)
    model = Request(request_id="a1b2", reply_to=REPLY_TO, intent=intent, timestamp=now,
                    deadline=now + 30)  # fmt: skip
    assert fast == model.to_bytes()
    assert Request.from_bytes(fast) == model


def test_request_frame_with_a_lone_surrogate_fails_as_the_model_does() -> None:
    with pytest.raises(Exception, match="surrogate"):
        _request_payload("a1b2", REPLY_TO, "\ud800", 1.0, 2.0)


# -- answering without a worker ------------------------------------------------------


def handler() -> RequestHandler:
    registry = SkillRegistry([TESTING], 1.0, None, "keyword")
    registry.reload()
    config = HandlerConfig(server_id="s1", topics=frozenset([T]))
    return RequestHandler(registry, SubprocessExecutor(), config)


def request(intent: str, *, deadline: float | None = None) -> Request:
    return Request(request_id="r1", reply_to=REPLY_TO, intent=intent,
                   deadline=time.time() + 30 if deadline is None else deadline)  # fmt: skip


def comparable(reply: Reply) -> dict[str, Any]:
    """A reply without its clocks."""
    out = reply.model_dump(exclude={"timestamp", "elapsed_ms"})
    out["trace"].pop("queue_ms")
    return out


@pytest.mark.parametrize(
    ("intent", "code"),
    [(explicit("guide", "x"), None), ("/guide some input", None),
     (explicit("no-such-skill", "x"), ErrorCode.SKILL_NOT_FOUND),
     (json.dumps({"catalog": True}), None),
     (json.dumps({"skill": 5}), ErrorCode.BAD_REQUEST)],
)  # fmt: skip
async def test_answered_now_exactly_as_a_worker_would(intent: str, code: ErrorCode | None) -> None:
    h = handler()
    now = h.process_now(request(intent), time.monotonic())
    assert now is not None
    assert now.error_code is code
    assert now.trace is not None and now.trace.server_id == "s1"
    assert comparable(now) == comparable(await h.process(request(intent), time.monotonic()))


async def test_a_passed_deadline_is_answered_now() -> None:
    now = handler().process_now(request(explicit("guide", "x"), deadline=time.time() - 1))
    assert now is not None and now.error_code is ErrorCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("intent", [explicit("echo", "x"), "write a haiku about the sea"])
def test_scripts_and_matching_wait_for_a_worker(intent: str) -> None:
    assert handler().process_now(request(intent)) is None
    if not intent.startswith("{"):
        assert parse_intent(intent).mode is IntentMode.TASK


# -- prefetch --------------------------------------------------------------------------


def test_prefetch_is_announced_as_slots_and_bounded(tmp_path: Any) -> None:
    def server(**kw: Any) -> SkillServer:
        return SkillServer(ServerConfig(topics=[T], skills_dirs=[TESTING], executor="cold",
                                        reload_interval=0, **kw))  # fmt: skip

    assert server(workers=2)._state().slots == 2
    assert server(workers=2, prefetch=14)._state().slots == 16
    for bad in (-1, 300):
        with pytest.raises(ConfigError, match="prefetch"):
            server(workers=2, prefetch=bad, queue_size=256)


async def test_a_burst_with_prefetch_gets_one_right_reply_each(fabric: Fabric) -> None:
    await fabric.start_proxy()
    await fabric.start_server(TESTING, T, "hot-1", workers=1, prefetch=32)
    client = await fabric.client()
    intents = [explicit("guide", str(i)) if i % 10 else explicit("echo", f"e{i}")
               for i in range(120)]  # fmt: skip
    replies = await asyncio.wait_for(asyncio.gather(*(client.call(T, i) for i in intents)), WAIT)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    for i, reply in enumerate(replies):
        if i % 10:
            assert reply.skill == "guide" and "haiku" in reply.content.lower()
        else:
            assert reply.skill == "echo" and reply.content.strip() == f"e{i}"
    assert len({r.request_id for r in replies}) == len(replies)
    assert fabric.proxy is not None
    assert not fabric.proxy.groups.inflight  # every dispatch answered, none twice


async def test_an_inline_answer_is_in_the_dedupe_window(fabric: Fabric) -> None:
    proxy = await fabric.start_proxy()
    # Past its start-up recovery window, where the proxy itself would drop a
    # second reply to one request id (proxy/failover.py): the window's answer
    # is what this case is about.
    proxy.recovery.until = 0.0
    server = await fabric.start_server(TESTING, T, "hot-2")
    client = await fabric.client()
    first = await client.call(T, explicit("guide", "x"))
    assert first.ok and first.trace is not None and not first.trace.deduplicated
    assert first.trace.attempt == 1
    # The same request again (a retransmission): answered from the window.
    frozen = Request(request_id=first.request_id, reply_to=client.reply_topic,
                     intent=explicit("guide", "x"), deadline=time.time() + WAIT)  # fmt: skip
    waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    client._pending[first.request_id] = waiter
    assert client._pub is not None
    client._pub.send([T.encode(), frozen.to_bytes()])
    again = await asyncio.wait_for(waiter, WAIT)
    assert again.content == first.content and again.trace is not None
    assert again.trace.deduplicated
    assert server._window.hits == 1


# -- the DEALER's own readiness ------------------------------------------------------


async def test_a_send_never_leaves_the_receiver_asleep() -> None:
    """The DEALER's FD signal may be consumed by a send from another task; the
    receiver sleeping on it must still hear every message (the router sends one
    right before each of our sends)."""
    bus = ZmqTransport()
    router = bus.ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = bus.dealer(f"tcp://127.0.0.1:{port}", b"d1", hwm=1000)
    got: list[bytes] = []
    done = asyncio.Event()
    rounds = 300

    async def receive() -> None:
        while len(got) < rounds:
            got.append((await dealer.recv_multipart())[0])
        done.set()

    receiver = asyncio.create_task(receive())
    try:
        assert await dealer.send([b"hello"], timeout=WAIT)
        identity, _ = await asyncio.wait_for(router.recv_multipart(), WAIT)
        for i in range(rounds):
            await router.send_multipart([identity, b"m%d" % i])
            if i % 2 == 0:
                # Block the loop (on purpose) while the message reaches the
                # DEALER, so that our send, not the loop, takes its FD signal.
                time.sleep(0.002)
            assert await dealer.send([b"ack"], timeout=WAIT)
            await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), WAIT)
        assert got == [b"m%d" % i for i in range(rounds)]
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        dealer.close()
        router.close()
        bus.close()


async def test_subscriber_wait_honours_its_timeout_and_wakes_on_a_message() -> None:
    bus = ZmqTransport()
    pub = bus.ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = bus.subscriber(f"tcp://127.0.0.1:{port}", [b"T"], hwm=100)
    try:
        started = time.monotonic()
        assert not await sub.wait_readable(0.2)
        assert 0.15 < time.monotonic() - started < 5
        deadline = time.monotonic() + WAIT
        while not await sub.wait_readable(0.05):  # the slow joiner: until it hears us
            assert time.monotonic() < deadline
            await pub.send_multipart([b"T", b"x"])
        assert sub.drain(10)
    finally:
        sub.close()
        pub.close()
        bus.close()
