"""A silent active proxy (SIGSTOP: no TCP reset, the kernel still ACKs): the client fails over.

A stopped process, a node that lost power or a partition close no connection,
so only ZMTP heartbeats tell the client its proxy is gone. With them (the
default) a call made after the stop is answered through the backup within
the heartbeat timeout plus the take-over; without them the client keeps
waiting on the dead half, which the second case shows (so the first cannot
pass by accident).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import zmq

from skillscale import SkillScaleClient, SkillScaleError
from skillscale.core.transport import ZmqTransport
from tests.helpers import FIXTURE_SKILLS, RoleProcess, dump_stacks
from tests.test_failover import TOPIC, start_pair

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HEARTBEAT = 1.0
WITHIN = 8.0
"""Seconds a call after the stop may take: heartbeat (1) + the backup's take-over
(two peer heartbeats, a client vote) + a probe, with room for a loaded machine."""


def test_the_transport_sets_heartbeats_before_connecting() -> None:
    bus = ZmqTransport(heartbeat=1.5)
    try:
        for pair in (bus.publisher("tcp://127.0.0.1:1", hwm=10),
                     bus.subscriber("tcp://127.0.0.1:1", [b"x"], hwm=10)):  # fmt: skip
            sock = pair.async_sock
            ivl, timeout = (
                sock.getsockopt(zmq.HEARTBEAT_IVL),
                sock.getsockopt(zmq.HEARTBEAT_TIMEOUT),
            )
            assert (ivl, timeout, sock.getsockopt(zmq.HEARTBEAT_TTL)) == (500, 1500, 1500)
            pair.close(0)
        plain = ZmqTransport().publisher("tcp://127.0.0.1:1", hwm=10)
        assert plain.async_sock.getsockopt(zmq.HEARTBEAT_IVL) == 0
        plain.close(0)
    finally:
        bus.close()
    with pytest.raises(ValueError):
        ZmqTransport(heartbeat=0)


@pytest.mark.parametrize("heartbeat", [HEARTBEAT, None], ids=["heartbeat", "none"])
async def test_a_stopped_active_proxy_fails_the_client_over(
    tmp_path: Path, heartbeat: float | None
) -> None:
    primary, backup = start_pair()
    proxies = [primary, backup]
    joined = {k: ",".join(p.ready[k] for p in proxies) for k in ("xsub", "xpub", "router")}
    server = RoleProcess(
        "server", "--skills-dir", str(FIXTURE_SKILLS / "failover"), "--topic", TOPIC,
        "--proxy-xsub", joined["xsub"], "--proxy-xpub", joined["xpub"],
        "--proxy-router", joined["router"],
    )  # fmt: skip
    tally = tmp_path / "tally"

    def intent(tag: str) -> str:
        return json.dumps({"skill": "tally-slow", "data": f"{tally} {tag} 0"})

    try:
        async with SkillScaleClient(
            [p.ready["xsub"] for p in proxies], [p.ready["xpub"] for p in proxies],
            failover_timeout=1.5, heartbeat_timeout=heartbeat,
        ) as client:  # fmt: skip
            assert client.proxy_xsub == primary.ready["xsub"]
            first = await client.call(TOPIC, intent("before"), timeout=20)
            assert first.ok and first.content == "before"
            primary.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            if heartbeat is None:
                with pytest.raises(SkillScaleError) as caught:
                    await client.call(TOPIC, intent("after"), timeout=WITHIN)
                assert caught.value.code.value == "timeout"
                assert client.proxy_xsub == primary.ready["xsub"]  # still on the dead half
                return
            after = await client.call(TOPIC, intent("after"), timeout=WITHIN)
            took = time.monotonic() - stopped
            assert after.ok and after.content == "after"
            assert client.proxy_xsub == backup.ready["xsub"]
            assert took < WITHIN
            print(f"HEARTBEAT failover after SIGSTOP: answered in {took:.2f} s")
    except BaseException:
        dump_stacks(backup, server, primary)
        raise
    finally:
        primary.signal(signal.SIGKILL)  # a stopped process dies of SIGKILL too
        server.signal(signal.SIGTERM)
        server.close()
        for proxy in proxies:
            proxy.kill()
            proxy.close()
    runs = tally.read_text().split()
    assert runs.count("before") == 1
    if heartbeat is not None:
        assert runs.count("after") == 1  # failed over, and ran once
