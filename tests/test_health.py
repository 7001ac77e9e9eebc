"""Health endpoints of every role, ``skillscale health``, and the per-topic no-server wait."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from skillscale.core.health import HealthServer, RoleHealth
from skillscale.core.transport import ZmqTransport
from skillscale.proxy.groups import GroupsConfig, ReplicaGroups
from skillscale.proxy.proxy import Proxy, ProxyConfig
from skillscale.skill_server.server import ServerConfig, SkillServer
from skillscale.tools.cli import build_parser, main
from skillscale.tools.cli.proxy import _proxy_config
from tests.helpers import BUNDLED_SKILLS, ROOT, RoleProcess, free_port, role_env, start_proxy
from tests.test_groups import FakeIO, payload, state


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def health_cli(url: str) -> subprocess.CompletedProcess[str]:
    """The command as an image runs it: its own process."""
    return subprocess.run(
        [sys.executable, "-m", "skillscale", "health", url, "--timeout", "3"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=role_env(), check=False,
    )  # fmt: skip


def health_main(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The same command in-process (a process start costs a second on a busy machine)."""
    code = main(["health", url, "--timeout", "3"])
    out, err = capsys.readouterr()
    return code, out, err


# -- the reusable piece --------------------------------------------------------


def test_role_health_over_http(capsys: pytest.CaptureFixture[str]) -> None:
    ready: list[str | None] = ["warming up"]
    health = RoleHealth(lambda: ready[0], stale_after=30)
    http = HealthServer(health, routes={"/extra": lambda q: (200, "text/plain", repr(q).encode())})
    port = http.serve("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        assert get(f"{base}/healthz") == (200, '{"status": "ok", "check": "healthz"}\n')
        code, body = get(f"{base}/readyz")
        assert code == 503
        assert json.loads(body) == {"status": "fail", "check": "readyz", "reason": "warming up"}
        ready[0] = None
        assert get(f"{base}/readyz")[0] == 200
        assert get(f"{base}/extra?topic=A")[1] == "{'topic': ['A']}"
        assert get(f"{base}/metrics")[0] == 404  # nothing mounted there
        request = urllib.request.Request(f"{base}/readyz", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 405
        # A stale loop fails liveness, and a dead role is never ready.
        health.stale_after = -1
        code, body = get(f"{base}/healthz")
        assert code == 503 and "event loop silent" in body
        health.stale_after = 30
        health.set_crashed("task x died")
        assert get(f"{base}/healthz")[0] == 503
        code, body = get(f"{base}/readyz")
        assert code == 503 and "crashed: task x died" in body
        # The CLI: one line naming the failure, exit 1; exit 0 when healthy.
        code, out, _ = health_main(f"{base}/readyz", capsys)
        assert code == 1
        assert out.splitlines() == [f"{base}/readyz: HTTP 503: crashed: task x died"]
    finally:
        http.close()
    code, out, _ = health_main(f"{base}/healthz", capsys)
    assert code == 1 and "unreachable" in out and len(out.splitlines()) == 1
    code, _, err = health_main("/healthz", capsys)
    assert code == 1 and "not an http(s) URL" in err


# -- the proxy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy() -> Iterator[RoleProcess]:
    role = start_proxy(no_server_wait=1, no_server_wait_topic="TOPIC_HELD=60")
    yield role
    role.close()


def test_proxy_health_metrics_and_queues_share_one_port(
    proxy: RoleProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    ready = proxy.ready
    assert ready["health"] == ready["metrics"].replace("/metrics", "/readyz")
    base = ready["metrics"].rsplit("/", 1)[0]
    probed = health_cli(ready["health"])
    assert (probed.returncode, probed.stdout) == (0, "")
    assert health_main(f"{base}/healthz", capsys)[0] == 0
    assert get(f"{base}/metrics")[0] == 200
    code, body = get(f"{base}/queues?topic=TOPIC_NEVER_SEEN")
    doc = json.loads(body)
    assert code == 200
    assert {k: doc[k] for k in ("topic", "queue_depth", "inflight", "replicas", "load")} == {
        "topic": "TOPIC_NEVER_SEEN", "queue_depth": 0, "inflight": 0, "replicas": 0, "load": 0,
    }  # fmt: skip
    assert "topics" in json.loads(get(f"{base}/queues")[1])
    assert get(f"{base}/nothing-here")[0] == 404


async def test_proxy_readiness_follows_its_sockets() -> None:
    proxy = Proxy(ProxyConfig(xsub_bind="tcp://127.0.0.1:0", xpub_bind="tcp://127.0.0.1:0",
                              router_bind="tcp://127.0.0.1:0", metrics_port=0))  # fmt: skip
    assert proxy.health.ready() == "sockets not bound yet"
    async with proxy:
        assert proxy.health_url is not None
        code, _ = await asyncio.to_thread(get, proxy.health_url)
        assert code == 200
    assert proxy.health.ready() == "stopping"


# -- a server ------------------------------------------------------------------------


async def test_server_is_live_at_once_and_ready_when_the_proxy_answers() -> None:
    router = free_port()
    config = ServerConfig(
        topics=["TOPIC_DATA_PROCESSING"],
        skills_dirs=[BUNDLED_SKILLS / "data-processing"],
        proxy_router=f"tcp://127.0.0.1:{router}",
        proxy_xsub="tcp://127.0.0.1:1",  # trace events off below: never connected
        workers=1,
        reload_interval=0,
        trace_events=False,
        health_port=0,
        executor="warm",
        heartbeat_interval=0.2,  # the first heartbeat went nowhere: retry soon
    )
    server = SkillServer(config, transport=ZmqTransport())
    starting = asyncio.ensure_future(server.__aenter__())
    try:
        while server.health_url is None:  # set first thing in start()
            await asyncio.sleep(0)
        url = server.health_url
        live = url.replace("/readyz", "/healthz")
        assert (await asyncio.to_thread(get, live))[0] == 200
        code, body = await asyncio.to_thread(get, url)
        assert code == 503 and "no answer from the proxy" in body
        proxy = Proxy(
            ProxyConfig(
                xsub_bind="tcp://127.0.0.1:0",
                xpub_bind="tcp://127.0.0.1:0",
                router_bind=f"tcp://127.0.0.1:{router}",
                metrics_port=None,
            )
        )
        async with proxy:
            await asyncio.wait_for(starting, 20)
            code, body = await asyncio.to_thread(get, url)
            assert (code, json.loads(body)["status"]) == (200, "ok")
            assert server.executor.running  # type: ignore[attr-defined]
            await server.executor.close()  # the fork server goes: not ready
            code, body = await asyncio.to_thread(get, url)
            assert code == 503 and "fork server is not running" in body
            await server.__aexit__(None, None, None)
    finally:
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
    with pytest.raises(OSError):
        await asyncio.to_thread(get, url, 2)


def test_server_health_flags() -> None:
    argv = ["server", "--health-port", "8080", "--health-host", "0.0.0.0"]
    args = build_parser().parse_args(argv)
    assert (args.health_port, args.health_host) == (8080, "0.0.0.0")
    assert build_parser().parse_args(["server"]).health_port == -1  # off unless asked


# -- the per-topic no-server wait ------------------------------------------------------------


def test_per_topic_no_server_wait_holds_and_counts_parked_requests() -> None:
    io = FakeIO()
    groups = ReplicaGroups(
        io, GroupsConfig(no_server_wait=1.0, no_server_wait_topics={"TOPIC_SCALED": 60.0})
    )
    groups.on_request(b"TOPIC_SCALED", payload("a"), 0.0, plain_subscriber=False)
    groups.on_request(b"TOPIC_OTHER", payload("b"), 0.0, plain_subscriber=False)
    groups.tick(2.0)
    assert [(j.topic, code.value) for j, code, _ in io.errors] == [(b"TOPIC_OTHER", "no_server")]
    assert "waited 1 s" in io.errors[0][2]
    # The held request is in the exported queue depth: what wakes a topic at zero.
    assert groups.queue_depth(b"TOPIC_SCALED") == 1
    groups.tick(59.0)
    assert len(io.errors) == 1
    groups.on_heartbeat(b"s1", state("s1", topics=("TOPIC_SCALED",)), 59.5)
    assert groups.queue_depth(b"TOPIC_SCALED") == 0 and groups.inflight_count(b"TOPIC_SCALED") == 1
    # A topic losing its last replica holds its waiting work for its own wait.
    groups.on_request(b"TOPIC_SCALED", payload("c"), 59.6, plain_subscriber=False)
    groups.on_request(b"TOPIC_SCALED", payload("d"), 59.6, plain_subscriber=False)
    groups.on_bye(b"s1", 60.0)
    groups.tick(100.0)
    assert len(io.errors) == 1
    groups.tick(121.0)
    codes = [(j.topic, code.value) for j, code, _ in io.errors[1:]]
    assert codes == [(b"TOPIC_SCALED", "no_server")] * 3
    assert "waited 60 s" in io.errors[-1][2]


def test_no_server_wait_topic_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["proxy", "--no-server-wait", "2"]
    args = build_parser().parse_args([*base, "--no-server-wait-topic", "TOPIC_A=60",
                                      "--no-server-wait-topic", "TOPIC_B=1.5"])  # fmt: skip
    config = _proxy_config(args)
    assert config.groups.no_server_wait == 2
    assert config.groups.no_server_wait_topics == {"TOPIC_A": 60.0, "TOPIC_B": 1.5}
    monkeypatch.setenv("SKILLSCALE_NO_SERVER_WAIT_TOPICS", "TOPIC_A=60, TOPIC_C=90")
    config = _proxy_config(build_parser().parse_args(["proxy"]))
    assert config.groups.no_server_wait_topics == {"TOPIC_A": 60.0, "TOPIC_C": 90.0}
    for wrong in ("TOPIC_A", "TOPIC_A=-1", "TOPIC_A=60000000", "=5"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["proxy", "--no-server-wait-topic", wrong])


def test_a_held_request_is_answered_no_server_only_after_its_topic_wait(
    proxy: RoleProcess,
) -> None:
    """Over the real bus: TOPIC_HELD waits 60 s; another topic waits the default (1 s here)."""
    from tests.helpers import ReferenceClient

    client = ReferenceClient(proxy.ready["xsub"], proxy.ready["xpub"])
    base = proxy.ready["metrics"].rsplit("/", 1)[0]
    try:
        started = time.monotonic()
        client.send("TOPIC_HELD", "hello", request_id="held")
        client.send("TOPIC_DEFAULT", "hello", request_id="default")
        reply: dict[str, Any] = client.recv(timeout=15)
        waited = time.monotonic() - started
        assert (reply["request_id"], reply["error_code"]) == ("default", "no_server")
        assert 0.9 <= waited < 15
        doc = json.loads(get(f"{base}/queues?topic=TOPIC_HELD")[1])
        assert doc["queue_depth"] == 1 and doc["load"] == 1
    finally:
        client.close()


def test_the_health_port_serves_a_bounded_number_of_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from skillscale.core import health as health_module

    monkeypatch.setattr(health_module, "MAX_CONNECTIONS", 2)
    http = HealthServer(RoleHealth(lambda: None))
    port = http.serve("127.0.0.1", 0)
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        # Both slots are held by clients that send nothing: the next is closed unanswered.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        silent.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the freed slot comes back once the server sees the close
            try:
                assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.monotonic() < deadline
    finally:
        for sock in silent:
            sock.close()
        http.close()


def test_distiller_health_follows_the_role(proxy: RoleProcess, tmp_path: Any) -> None:
    """The long-lived distiller serves /healthz and /readyz on its own port, as compose probes."""
    role = RoleProcess(
        "distill", "--skills-dir", str(tmp_path / "lib"), "--home", str(tmp_path / "home"),
        "--proxy-xsub", proxy.ready["xsub"], "--proxy-xpub", proxy.ready["xpub"],
        "--health-port", "0", "--json",
    )  # fmt: skip
    try:
        url = role.ready["health"]
        assert url.endswith("/readyz")
        assert get(url)[0] == 200
        code, body = get(url.replace("/readyz", "/healthz"))
        assert code == 200
        assert json.loads(body)["status"] == "ok"
    finally:
        role.close()
    with pytest.raises(OSError):
        get(url, timeout=1.0)
