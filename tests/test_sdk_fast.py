"""The client's fast reply path: the FD reader callback, the deadline heap, late replies.

A stand-in proxy (a bound SUB for the client's requests, a bound PUB for its
replies, probes echoed) lets each test decide exactly when and how replies
arrive: all at once, twice, after the caller gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import zmq
import zmq.asyncio

from skillscale import Reply, Request
from skillscale.core.errors import SkillTimeoutError
from skillscale.core.protocol import PROBE_TOPIC_PREFIX
from skillscale.core.transport import SocketPair
from skillscale.sdk.client import _READ_BATCH, SkillScaleClient

WAIT = 10.0
T = "TOPIC_FAST"


class StandInProxy:
    """Echoes probes; keeps requests for the test to answer (or answers them itself)."""

    def __init__(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.inbound = self.ctx.socket(zmq.SUB)
        self.inbound.setsockopt(zmq.SUBSCRIBE, b"")
        self.inbound.setsockopt(zmq.LINGER, 0)
        self.outbound = self.ctx.socket(zmq.PUB)
        self.outbound.setsockopt(zmq.LINGER, 0)
        self.outbound.setsockopt(zmq.SNDHWM, 100_000)
        self.xsub = f"tcp://127.0.0.1:{self.inbound.bind_to_random_port('tcp://127.0.0.1')}"
        self.xpub = f"tcp://127.0.0.1:{self.outbound.bind_to_random_port('tcp://127.0.0.1')}"
        self.requests: list[Request] = []
        self.arrived = asyncio.Condition()
        self.auto_answer = False
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            topic, payload = await self.inbound.recv_multipart()
            if topic.startswith(PROBE_TOPIC_PREFIX.encode()):
                await self.outbound.send_multipart([topic, payload])
                continue
            request = Request.from_bytes(payload)
            if self.auto_answer:
                self.reply(request)
            async with self.arrived:
                self.requests.append(request)
                self.arrived.notify_all()

    async def wait_requests(self, count: int) -> list[Request]:
        """Until ``count`` requests have come (all of them, in order)."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.requests) >= count), WAIT)
        return list(self.requests)

    def reply(self, request: Request, content: str | None = None) -> None:
        """Send the reply to ``request`` at once (no await: a burst stays one burst)."""
        reply = Reply(request_id=request.request_id, status="success",
                      content=request.request_id if content is None else content)  # fmt: skip
        self.outbound.send_multipart([request.reply_to.encode(), reply.to_bytes()])

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.inbound.close(0)
        self.outbound.close(0)
        self.ctx.term()


@pytest.fixture
async def proxy() -> AsyncIterator[StandInProxy]:
    stand_in = StandInProxy()
    yield stand_in
    await stand_in.close()


async def connected(proxy: StandInProxy, **options: Any) -> SkillScaleClient:
    client = SkillScaleClient(proxy.xsub, proxy.xpub, connect_timeout=WAIT, **options)
    await client.connect()
    return client


async def settled(client: SkillScaleClient) -> None:
    """Until everything the stand-in sent before now has reached the client.

    A probe sent now travels behind those messages on the same sockets, and
    one socket's messages keep their order.
    """
    assert await client._prove_path(WAIT)


@pytest.mark.timeout(60)
async def test_replies_are_read_by_the_fd_callback(proxy: StandInProxy) -> None:
    client = await connected(proxy)
    try:
        assert client._reader_fd is not None, "the SUB socket's FD is watched by a callback"
        proxy.auto_answer = True
        reply = await client.call(T, "hello", timeout=WAIT)
        assert reply.ok and reply.content == reply.request_id
    finally:
        await client.close()
    assert client._reader_fd is None


@pytest.mark.timeout(60)
async def test_a_burst_larger_than_one_read_batch_is_all_delivered(proxy: StandInProxy) -> None:
    count = 2 * _READ_BATCH + 37  # more than one callback takes: the rest come at the next turn
    client = await connected(proxy, max_in_flight=count)
    try:
        calls = [asyncio.create_task(client.call(T, f"r{i}", timeout=WAIT)) for i in range(count)]
        requests = await proxy.wait_requests(count)
        for request in requests:  # all sent back to back, before the client reads any
            proxy.reply(request)
        replies = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
        assert [r.content for r in replies] == [r.request_id for r in replies]
        assert len({r.request_id for r in replies}) == count
        assert client.late_replies == 0
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_a_reply_after_its_timeout_is_counted_late_and_resolves_nothing(
    proxy: StandInProxy,
) -> None:
    client = await connected(proxy)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        with pytest.raises(SkillTimeoutError) as raised:
            await client.call(T, "slow", timeout=0.2)
        (request,) = await proxy.wait_requests(1)
        assert raised.value.request_id == request.request_id
        proxy.reply(request)  # too late
        await settled(client)
        assert client.late_replies == 1
        assert not client._pending
        # A reply that comes twice: the first answers, the second is late.
        task = asyncio.create_task(client.call(T, "twice", timeout=WAIT))
        second = (await proxy.wait_requests(2))[1]
        proxy.reply(second, "first")
        proxy.reply(second, "again")
        assert (await asyncio.wait_for(task, WAIT)).content == "first"
        await settled(client)
        assert client.late_replies == 2
        assert errors == [], "no callback failed (a future resolved twice would say so)"
    finally:
        loop.set_exception_handler(None)
        await client.close()


@pytest.mark.timeout(60)
async def test_a_shorter_deadline_behind_a_longer_one_fires_first(proxy: StandInProxy) -> None:
    client = await connected(proxy)
    try:
        long = asyncio.create_task(client.call(T, "long", timeout=WAIT))
        await proxy.wait_requests(1)
        with pytest.raises(SkillTimeoutError):
            await client.call(T, "short", timeout=0.1)  # the heap's timer re-arms earlier
        assert not long.done()
        proxy.reply(proxy.requests[0])
        assert (await asyncio.wait_for(long, WAIT)).ok
        # Both entries are done now; the timer still armed finds nothing live.
        assert all(entry[2].done() for entry in client._deadlines)
    finally:
        await client.close()
    assert client._deadline_timer is None and not client._deadlines


@pytest.mark.timeout(60)
async def test_the_deadline_heap_stays_bounded_by_the_calls_in_flight(
    proxy: StandInProxy,
) -> None:
    proxy.auto_answer = True
    client = await connected(proxy, max_in_flight=4)
    try:
        most = 0
        for _ in range(50):
            await asyncio.gather(*(client.call(T, "x", timeout=WAIT) for _ in range(4)))
            most = max(most, len(client._deadlines))
        # 200 answered calls, each deadline seconds away: without compaction
        # every entry would still be there.
        assert most <= 2 * 4 + 64 + 1
        assert client._deadline_timer is not None  # one timer, for the earliest entry
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_a_cancelled_call_leaves_no_live_deadline(proxy: StandInProxy) -> None:
    client = await connected(proxy)
    try:
        task = asyncio.create_task(client.call(T, "never answered", timeout=WAIT))
        (request,) = await proxy.wait_requests(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(entry[2].done() for entry in client._deadlines)
        assert not client._pending
        proxy.reply(request)
        await settled(client)
        assert client.late_replies == 1
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_noise_and_malformed_replies_do_not_stop_the_reader(proxy: StandInProxy) -> None:
    client = await connected(proxy)
    try:
        task = asyncio.create_task(client.call(T, "x", timeout=WAIT))
        (request,) = await proxy.wait_requests(1)
        topic = request.reply_to.encode()
        proxy.outbound.send_multipart([topic, b"{not json"])
        proxy.outbound.send_multipart([topic, b"a", b"three frames"])
        proxy.outbound.send_multipart([topic + b"-longer", json.dumps({}).encode()])
        proxy.reply(request)
        assert (await asyncio.wait_for(task, WAIT)).ok
        assert client.late_replies == 0
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_a_reply_whose_fd_signal_was_consumed_is_read_after_a_failover_move(
    proxy: StandInProxy,
) -> None:
    """Any call on the SUB socket may take the FD's signal; a failover's move is
    one, so the reader looks again right after it instead of waiting for the
    next signal (which, with one call in flight, never comes)."""
    client = SkillScaleClient([proxy.xsub, proxy.xsub], [proxy.xpub, proxy.xpub],
                              connect_timeout=WAIT)  # fmt: skip
    await client.connect()
    try:
        task = asyncio.create_task(client.call(T, "x", timeout=WAIT))
        (request,) = await proxy.wait_requests(1)
        proxy.reply(request)
        assert client._sub is not None and isinstance(client._sub, SocketPair)
        # Blocks the loop until the reply waits in the socket, reading
        # ZMQ_EVENTS on the way: the FD's signal is gone before the loop polls.
        poller = zmq.Poller()
        poller.register(client._sub.sync, zmq.POLLIN)
        assert poller.poll(WAIT * 1000)
        client._fail_over()  # to the same endpoints: the sockets stay as they are
        assert (await asyncio.wait_for(task, WAIT)).ok
    finally:
        await client.close()
