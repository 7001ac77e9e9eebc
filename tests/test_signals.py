"""A second SIGINT/SIGTERM stops a role (and ``skillscale up``) at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import (
    FIXTURE_SKILLS,
    ReferenceClient,
    RoleProcess,
    pid_alive,
    start_proxy,
    start_server,
    wait_pid_gone,
)

pytestmark = pytest.mark.integration
SLOW = json.dumps({"skill": "slow", "data": "60"})


def busy(ready: dict[str, str], topic: str) -> ReferenceClient:
    """A client whose request keeps a worker busy for a minute (once it is in flight)."""
    client = ReferenceClient(ready["xsub"], ready["xpub"])
    client.send(topic, SLOW)
    deadline = time.monotonic() + 20
    line = f'skillscale_topic_inflight{{topic="{topic}"}} 1.0'
    while line not in httpx.get(ready["metrics"], timeout=5).text:
        assert time.monotonic() < deadline, "the slow request never started"
        time.sleep(0.1)  # polling the proxy's gauge: the event is only visible there
    return client


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_stops_a_server_at_once(signum: int) -> None:
    proxy = start_proxy()
    server = start_server(proxy, FIXTURE_SKILLS / "testing", "TOPIC_SIG", grace=60, workers=1)
    client = busy(proxy.ready, "TOPIC_SIG")
    try:
        server.signal(signum)
        with pytest.raises(subprocess.TimeoutExpired):
            server.proc.wait(1.5)  # graceful: it waits for the running request
        started = time.monotonic()
        server.signal(signum)
        assert server.proc.wait(10) == 128 + signum
        assert time.monotonic() - started < 5
    finally:
        client.close()
        server.close()
        proxy.close()


def test_second_ctrl_c_stops_up_and_every_child_at_once() -> None:
    up = RoleProcess(
        "up", "--xsub-port", "0", "--xpub-port", "0", "--router-port", "0", "--metrics-port", "0",
        "--skills-dir", str(FIXTURE_SKILLS / "testing"), "--grace", "60", "--workers", "1",
        "--json",
    )  # fmt: skip
    children = [up.ready["proxy_pid"], *(s["pid"] for s in up.ready["servers"])]
    client = busy(up.ready, "TOPIC_TESTING")
    try:
        up.signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            up.proc.wait(1.5)
        up.signal(signal.SIGINT)
        assert up.proc.wait(10) == 128 + signal.SIGINT
        assert all(wait_pid_gone(pid, 10) for pid in children)
        assert not any(pid_alive(pid) for pid in children)
    finally:
        client.close()
        up.close()


def test_a_server_waiting_for_its_proxy_stops_on_the_first_signal() -> None:
    from tests.helpers import free_port, role_env

    nowhere = f"tcp://127.0.0.1:{free_port()}"
    args = [
        sys.executable, "-m", "skillscale", "server", "--topic", "TOPIC_SIG",
        "--skills-dir", str(FIXTURE_SKILLS / "testing"), "--proxy-router", nowhere,
        "--proxy-xsub", nowhere, "--proxy-xpub", nowhere,
    ]  # fmt: skip
    env = role_env(SKILLSCALE_LOG_LEVEL="INFO")
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the event: it says what it waits for
            if b"waiting for the proxy" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
