"""Supervision: a role whose long-running task dies says so and stops taking work.

Faults are injected into the real roles (in-process, over real ZeroMQ on
loopback): the proxy's forwarding loop, a server's receiver and a worker.
No request may be routed into a dead component, and every caller gets an
answer or a clear error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
import zmq.asyncio

from skillscale import SkillScaleClient
from skillscale.core.runtime import serve_until
from skillscale.proxy import Proxy, ProxyConfig
from skillscale.skill_server.server import ServerConfig, SkillServer
from tests.helpers import FIXTURE_SKILLS, RoleProcess, start_proxy, start_server

T = "TOPIC_SUPERVISED"


def loopback_proxy() -> ProxyConfig:
    return ProxyConfig(
        xsub_bind="tcp://127.0.0.1:0",
        xpub_bind="tcp://127.0.0.1:0",
        router_bind="tcp://127.0.0.1:0",
        metrics_port=None,
    )


async def test_a_dying_forward_loop_crashes_the_proxy() -> None:
    async with Proxy(loopback_proxy()) as proxy:

        async def broken_wait(timeout: float) -> tuple[bool, bool, bool]:
            raise RuntimeError("injected fault in the forwarding loop")

        assert proxy._sockets is not None
        proxy._sockets.wait = broken_wait  # type: ignore[method-assign]
        stop = asyncio.Event()
        status = await asyncio.wait_for(serve_until(stop, proxy), 5)
        assert status == 1
        assert proxy.crash_reason is not None and "injected fault" in proxy.crash_reason


async def test_failing_housekeeping_is_counted_and_the_loop_goes_on() -> None:
    async with Proxy(loopback_proxy()) as proxy:
        ticks = 0

        def broken_tick(now: float) -> None:
            nonlocal ticks
            ticks += 1
            raise RuntimeError("injected fault in housekeeping")

        proxy.groups.tick = broken_tick  # type: ignore[method-assign]
        while ticks < 3:  # the loop survives the fault and ticks again
            await asyncio.wait_for(asyncio.sleep(0.05), 5)  # the tick period
        assert not proxy.crashed.is_set()
        sample = proxy.metrics.registry.get_sample_value(
            "skillscale_proxy_dropped_total",
            {"topic": "_SKILLSCALE_GROUP", "reason": "internal_error"},
        )
        assert sample is not None and sample >= 3


async def test_one_failing_message_is_dropped_and_the_loop_goes_on() -> None:
    async with Proxy(loopback_proxy()) as proxy:
        ctx = zmq.asyncio.Context()
        pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        try:
            for sock in (pub, sub):
                sock.setsockopt(zmq.LINGER, 0)
            sub.subscribe(b"TOPIC_")
            sub.connect(proxy.xpub_endpoint)
            pub.connect(proxy.xsub_endpoint)
            calls = 0
            original = proxy.groups.on_request

            def flaky(topic: bytes, payload: bytes, now: float, **kw: Any) -> bool:
                nonlocal calls
                calls += 1
                if payload == b"poison":
                    raise RuntimeError("injected fault on one message")
                return original(topic, payload, now, **kw)

            proxy.groups.on_request = flaky  # type: ignore[method-assign]
            # Through the full per-message path, where the fault is: a request
            # no group serves would otherwise be only published (Proxy._plain_topic).
            proxy._plain_topic = lambda topic: False  # type: ignore[method-assign]
            received: list[bytes] = []
            for _ in range(200):
                pub.send_multipart([b"TOPIC_X", b"poison"])
                pub.send_multipart([b"TOPIC_X", b"fine"])
                if await sub.poll(50):
                    received.append((await sub.recv_multipart())[1])
                    break
            assert received == [b"fine"]
            assert calls >= 2
            assert not proxy.crashed.is_set()
        finally:
            pub.close(0)
            sub.close(0)
            ctx.term()


@pytest.fixture
def bus() -> Iterator[RoleProcess]:
    proxy = start_proxy(no_server_wait=20, heartbeat_timeout=3)
    yield proxy
    proxy.close()


def faulty_server(proxy: RoleProcess) -> SkillServer:
    return SkillServer(
        ServerConfig(
            topics=[T],
            skills_dirs=[FIXTURE_SKILLS / "testing"],
            proxy_router=proxy.ready["router"],
            proxy_xsub=proxy.ready["xsub"],
            proxy_xpub=proxy.ready["xpub"],
            workers=1,
            executor="cold",
            reload_interval=0,
            grace=1,
        )
    )


@pytest.mark.integration
@pytest.mark.parametrize("where", ["worker", "receiver"])
async def test_a_server_whose_task_dies_stops_taking_work_and_loses_nothing(
    bus: RoleProcess, where: str
) -> None:
    async with SkillScaleClient(bus.ready["xsub"], bus.ready["xpub"], timeout=40) as client:
        server = faulty_server(bus)
        async with server:
            if where == "worker":

                async def broken_reply(*args: object) -> None:
                    raise RuntimeError("injected fault in a worker")

                server._reply = broken_reply  # type: ignore[method-assign]
                call = asyncio.ensure_future(
                    client.call(T, json.dumps({"skill": "echo", "data": "survives"}))
                )
            else:
                assert server._dealer is not None

                async def broken_recv(*args: object, **kw: object) -> list[bytes]:
                    raise RuntimeError("injected fault in the receiver")

                # The receiver is parked in recv; the next heartbeat wakes it into the fault.
                server._dealer.recv_multipart = broken_recv  # type: ignore[method-assign]
                call = None
            status = await asyncio.wait_for(serve_until(asyncio.Event(), server), 20)
            assert status == 1
            assert server.crash_reason is not None and "injected fault" in server.crash_reason
        # The server said goodbye on its way out: the proxy routes nothing to it,
        # and work it held goes to the next replica.
        healthy = await asyncio.to_thread(start_server, bus, FIXTURE_SKILLS / "testing", T)
        try:
            if call is None:
                call = asyncio.ensure_future(
                    client.call(T, json.dumps({"skill": "echo", "data": "survives"}))
                )
            reply = await asyncio.wait_for(call, 40)
            assert reply.ok, reply
            assert reply.content.strip() == "survives"
            assert reply.server_id != server.config.server_id
        finally:
            await asyncio.to_thread(healthy.close)
