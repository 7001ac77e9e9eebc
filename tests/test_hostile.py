"""Hostile and careless peers against real processes on loopback (issue 8).

One test per finding of the audit. Each sends what an attacker (or a broken
peer) would send, then checks that a legitimate request is still answered
within its deadline: one bad message must never stop the fabric.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import zmq

from skillscale.core.security import generate_keypair
from tests.helpers import (
    FIXTURE_SKILLS,
    ReferenceClient,
    RoleProcess,
    role_env,
    rss_mib,
    start_proxy,
    start_server,
)

pytestmark = pytest.mark.integration
T = "TOPIC_HOSTILE"


def echo(data: str) -> str:
    return json.dumps({"skill": "echo", "data": data})


def metric(proxy: RoleProcess, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    text = httpx.get(proxy.ready["metrics"], timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def still_answers(proxy: RoleProcess, deadline: float = 10.0) -> None:
    """A legitimate request (a fresh reference client) is answered in time."""
    client = ReferenceClient(proxy.ready["xsub"], proxy.ready["xpub"])
    try:
        started = time.monotonic()
        rid = client.send(T, echo("legit"))
        reply = client.recv(timeout=deadline)
        assert reply["request_id"] == rid
        assert reply["status"] == "success", reply
        assert reply["content"].strip() == "legit"
        assert time.monotonic() - started < deadline
    finally:
        client.close()
    assert proxy.proc.poll() is None, "the proxy died"


@pytest.fixture(scope="module")
def fabric() -> Iterator[tuple[RoleProcess, RoleProcess]]:
    proxy = start_proxy(no_server_wait=0.5, subscriber_hwm=20, stuck_timeout=2)
    server = start_server(proxy, FIXTURE_SKILLS / "testing", T, workers=2)
    yield proxy, server
    server.close()
    proxy.close()


@pytest.fixture
def raw() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def publisher(ctx: zmq.Context[zmq.Socket[bytes]], proxy: RoleProcess) -> zmq.Socket[bytes]:
    """A PUB whose path through the proxy is proven (no slow-joiner loss)."""
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(proxy.ready["xsub"])
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.subscribe(b"AGENT_REPLY_pathcheck")
    sub.connect(proxy.ready["xpub"])
    for _ in range(200):
        pub.send_multipart([b"AGENT_REPLY_pathcheck", b"{}"])
        if sub.poll(50):
            break
    else:
        raise TimeoutError("no path through the proxy")
    sub.close(0)
    return pub


def dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], proxy: RoleProcess, ident: bytes
) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, ident)
    sock.connect(proxy.ready["router"])
    return sock


def test_1_deadlines_that_break_parsing_do_not_stop_forwarding(fabric, raw) -> None:
    proxy, _ = fabric
    pub = publisher(raw, proxy)
    nested = "[" * 200_000 + "]" * 200_000
    for deadline in ("1" * 400, nested, "-1e999", '"soon"', "NaN", "true"):
        payload = (
            '{"request_id":"x1","reply_to":"AGENT_REPLY_nobody","intent":"hi",'
            f'"timestamp":1,"deadline":{deadline}}}'
        )
        # A topic nobody serves: the request waits in a queue, which parses its deadline.
        pub.send_multipart([b"TOPIC_NOBODY_SERVES", payload.encode()])
    still_answers(proxy)
    assert metric(proxy, "skillscale_proxy_dropped_total", reason="internal_error") == 0


@pytest.mark.parametrize(
    "state",
    [
        b'{"server_id":"evil","topics":[],"slots":1,"busy":null}',
        b'{"server_id":"evil","topics":["TOPIC_HOSTILE"],"slots":1,"skills":5}',
        b'{"server_id":"evil","topics":["TOPIC_HOSTILE"],"slots":Infinity}',
        b'{"server_id":"evil","topics":' + b"[" * 100_000 + b"]" * 100_000 + b',"slots":1}',
        b'{"server_id":"evil\\nFAKE LOG LINE","topics":["TOPIC_HOSTILE"],"slots":1}',
        b'{"server_id":"evil","topics":["' + b"T" * 300 + b'"],"slots":1}',
        b'{"server_id":"evil","topics":' + json.dumps([f"T{i}" for i in range(100)]).encode()
        + b',"slots":1}',
        b"\xff\xfe not json",
    ],
    ids=["busy-null", "skills-int", "infinity", "deep", "newline-id", "long-topic", "100-topics",
         "binary"],
)  # fmt: skip
def test_2_malformed_heartbeats_do_not_stop_the_proxy(fabric, raw, state: bytes) -> None:
    proxy, _ = fabric
    before = metric(proxy, "skillscale_proxy_dropped_total", reason="malformed")
    sock = dealer(raw, proxy, b"evil-peer")
    sock.send_multipart([b"SSG1", b"HB", state])
    sock.send_multipart([b"SSG1"])  # too few frames
    sock.send_multipart([b"XXXX", b"HB", b"{}"])  # wrong version
    still_answers(proxy)
    assert metric(proxy, "skillscale_proxy_dropped_total", reason="malformed") >= before + 2
    assert metric(proxy, "skillscale_proxy_dropped_total", reason="internal_error") == 0


def test_3_a_subscriber_that_never_reads_costs_only_itself(fabric, raw) -> None:
    proxy, _ = fabric
    stuck = raw.socket(zmq.SUB)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.subscribe(b"")
    stuck.connect(proxy.ready["xpub"])
    pub = publisher(raw, proxy)
    rss_before = rss_mib(proxy.pid)
    chunk = b"n" * 65536
    # Far more than the stuck peer's kernel buffers plus its 20-message pipe.
    for _ in range(3000):
        pub.send_multipart([b"AGENT_REPLY_noise", chunk])
    # New clients connect and get answers while the stuck peer is still there.
    still_answers(proxy)
    still_answers(proxy)
    dropped = metric(proxy, "skillscale_proxy_dropped_total", reason="slow_subscriber")
    rss_after = rss_mib(proxy.pid)
    print(f"HOSTILE stalled subscriber: slow_subscriber drops {dropped:.0f}, "
          f"proxy RSS {rss_before:.0f} -> {rss_after:.0f} MiB")  # fmt: skip
    assert dropped > 0
    assert rss_after < rss_before + 100


def calls_per_second(proxy: RoleProcess, calls: int = 200) -> float:
    """Sequential calls of the instruction-only skill (no process: the bus's own cost)."""
    client = ReferenceClient(proxy.ready["xsub"], proxy.ready["xpub"])
    try:
        started = time.monotonic()
        for _ in range(calls):
            rid = client.send(T, json.dumps({"skill": "guide"}))
            reply = client.recv(timeout=10)
            assert reply["request_id"] == rid and reply["status"] == "success"
        return calls / (time.monotonic() - started)
    finally:
        client.close()


def test_5_many_subscriptions_are_bounded_and_do_not_slow_routing(fabric, raw) -> None:
    proxy, _ = fabric
    before = calls_per_second(proxy)
    hog = raw.socket(zmq.SUB)
    hog.setsockopt(zmq.LINGER, 0)
    hog.setsockopt(zmq.SNDHWM, 0)  # else libzmq itself drops the excess subscriptions
    hog.connect(proxy.ready["xpub"])
    for i in range(200_000):
        hog.subscribe(b"TOPIC_%d" % i)
    deadline = time.monotonic() + 30
    while metric(proxy, "skillscale_proxy_dropped_total", reason="subscription_refused") < 99_000:
        assert time.monotonic() < deadline, "subscriptions were not processed"
        time.sleep(0.2)  # polling /metrics: there is no event to wait on from outside
    after = calls_per_second(proxy)
    subs = metric(proxy, "skillscale_proxy_subscriptions")
    print(f"HOSTILE 200k subscriptions: tracked {subs:.0f}; 200 sequential calls "
          f"{before:.0f}/s before, {after:.0f}/s after")  # fmt: skip
    assert subs <= 100_000  # the table's bound (open bus: no per-peer identity)


def huge_requests(
    ctx: zmq.Context[zmq.Socket[bytes]],
    proxy: RoleProcess,
    count: int = 8,
    after_each: Callable[[], None] = lambda: None,
) -> None:
    """``count`` requests of 100 MiB, each from a fresh publisher."""
    for _ in range(count):
        attacker = ctx.socket(zmq.PUB)
        attacker.setsockopt(zmq.LINGER, 0)
        attacker.connect(proxy.ready["xsub"])
        attacker.send_multipart([b"TOPIC_NOBODY", b"x" * (100 << 20)])
        after_each()
        attacker.close(0)


def test_7_huge_requests_are_refused_and_memory_stays_bounded(fabric, raw) -> None:
    proxy, _ = fabric
    client = ReferenceClient(proxy.ready["xsub"], proxy.ready["xpub"])
    try:
        rss_before = rss_mib(proxy.pid)
        # Over the 8 MiB request limit, under the 32 MiB hard cap: answered.
        payload = json.dumps(
            {"request_id": "big1", "reply_to": client.reply_topic, "intent": "x" * (10 << 20)}
        ).encode()
        client.send_raw([b"TOPIC_NOBODY", payload])
        reply = client.recv(timeout=10)
        assert reply["error_code"] == "payload_too_large"
        assert reply["request_id"] == "big1"
    finally:
        client.close()
    # Past the hard cap: the sender is disconnected; nothing is held.
    huge_requests(raw, proxy)
    still_answers(proxy)
    rss_after = rss_mib(proxy.pid)
    print(f"HOSTILE 100 MiB requests: proxy RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    assert rss_after < rss_before + 150


def test_6_a_foreign_replica_reply_or_return_is_dropped(fabric, raw) -> None:
    proxy, _ = fabric
    # An open bus trusts its peers to announce, but even there nobody may
    # answer or hand back a job it was not given.
    sock = dealer(raw, proxy, b"thief")
    sock.send_multipart([b"SSG1", b"REPLY", b"nosuch-1", b"AGENT_REPLY_victim", b"{}"])
    sock.send_multipart([b"SSG1", b"RETURN", b"nosuch-2"])
    # A reply into a request topic is never published.
    sock.send_multipart([b"SSG1", b"REPLY", b"nosuch-3", T.encode(), b"{}"])
    still_answers(proxy)
    assert metric(proxy, "skillscale_proxy_dropped_total", reason="bad_reply_to") >= 1


def test_11_ids_with_newlines_and_deep_intents_are_rejected_cleanly(fabric) -> None:
    proxy, _ = fabric
    client = ReferenceClient(proxy.ready["xsub"], proxy.ready["xpub"])
    try:
        client.send(T, "hi", request_id="abc\nFAKE 12:00 INFO granted")
        reply = client.recv(timeout=10)
        assert reply["error_code"] == "bad_request"
        deep = '{"skill":"echo","data":' + "[" * 50_000 + "]" * 50_000 + "}"
        client.send(T, deep, request_id="deep1")
        reply = client.recv(timeout=10)
        assert reply["request_id"] == "deep1"
        assert reply["status"] == "error"
    finally:
        client.close()
    still_answers(proxy)


def test_13_bare_proxy_binds_loopback() -> None:
    from skillscale.tools.cli import build_parser
    from skillscale.tools.cli.proxy import _proxy_config

    config = _proxy_config(build_parser().parse_args(["proxy"]))
    for endpoint in (config.xsub_bind, config.xpub_bind, config.router_bind):
        assert endpoint is not None and endpoint.startswith("tcp://127.0.0.1:")
    assert config.metrics_host == "127.0.0.1"
    wide = _proxy_config(build_parser().parse_args(["proxy", "--host", "0.0.0.0"]))
    assert wide.xsub_bind == "tcp://0.0.0.0:5444"


# -- under CURVE --------------------------------------------------------------


@pytest.fixture(scope="module")
def curve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("curve")
    for name in ("proxy", "server", "rogue", "alice", "mallory"):
        generate_keypair(root / "all", name)
    (root / "clients").mkdir()
    (root / "servers").mkdir()
    for name in ("alice", "mallory"):
        shutil.copy(root / "all" / f"{name}.key", root / "clients")
    for name in ("server", "rogue"):
        shutil.copy(root / "all" / f"{name}.key", root / "servers")
    rules = root / "topics.yaml"
    rules.write_text("server: [TOPIC_HOSTILE]\nrogue: [TOPIC_OTHER_*]\n")
    proxy = start_proxy(
        curve_secret=root / "all" / "proxy.key_secret",
        curve_clients=root / "clients",
        curve_servers=root / "servers",
        curve_server_topics=rules,
    )
    server = start_server(
        proxy, FIXTURE_SKILLS / "testing", T,
        curve_secret=root / "all" / "server.key_secret",
        curve_server_key=root / "all" / "proxy.key",
    )  # fmt: skip
    yield {"root": root, "proxy": proxy, "server": server}
    server.close()
    proxy.close()


def curve_socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, root: Path, name: str):  # type: ignore[no-untyped-def]
    public, secret = zmq.auth.load_certificate(str(root / "all" / f"{name}.key_secret"))
    server_key, _ = zmq.auth.load_certificate(str(root / "all" / "proxy.key"))
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_key
    return sock


def curve_call(ctx, root: Path, proxy: RoleProcess, data: str, name: str = "alice") -> dict:  # type: ignore[no-untyped-def]
    sub = curve_socket(ctx, zmq.SUB, root, name)
    pub = curve_socket(ctx, zmq.PUB, root, name)
    reply_to = "AGENT_REPLY_" + name + str(time.monotonic_ns())
    sub.subscribe(reply_to.encode())
    sub.connect(proxy.ready["xpub"])
    pub.connect(proxy.ready["xsub"])
    payload = json.dumps({"request_id": "c1", "reply_to": reply_to, "intent": echo(data)}).encode()
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            # The reply waits (held) at the proxy until our subscription lands.
            pub.send_multipart([T.encode(), payload])
            if sub.poll(2000):
                _, body = sub.recv_multipart()
                reply: dict[str, object] = json.loads(body)
                return reply
        raise TimeoutError("no reply under CURVE")
    finally:
        sub.close(0)
        pub.close(0)


def test_6_curve_replica_ids_are_bound_to_keys_and_topics_allow_listed(curve, raw) -> None:
    root, proxy = curve["root"], curve["proxy"]
    assert isinstance(root, Path) and isinstance(proxy, RoleProcess)
    reply = curve_call(raw, root, proxy, "first")
    victim_id = reply["server_id"]
    assert isinstance(victim_id, str)
    # A second server key takes over the victim's routing id: dropped.
    thief = curve_socket(raw, zmq.DEALER, root, "rogue")
    thief.setsockopt(zmq.ROUTING_ID, victim_id.encode())
    thief.connect(proxy.ready["router"])
    state = {"server_id": victim_id, "topics": [T], "slots": 1000}
    thief.send_multipart([b"SSG1", b"HB", json.dumps(state).encode()])
    # Under its own id, it may not announce a topic outside its allow-list.
    rogue = curve_socket(raw, zmq.DEALER, root, "rogue")
    rogue.setsockopt(zmq.ROUTING_ID, b"rogue-1")
    rogue.connect(proxy.ready["router"])
    state = {"server_id": "rogue-1", "topics": [T], "slots": 1000}
    for _ in range(3):
        rogue.send_multipart([b"SSG1", b"HB", json.dumps(state).encode()])
    deadline = time.monotonic() + 10
    while metric(proxy, "skillscale_proxy_dropped_total", reason="topic_not_allowed") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)  # polling /metrics: no event is visible from outside
    for i in range(10):
        reply = curve_call(raw, root, proxy, f"after{i}")
        assert reply["status"] == "success" and reply["server_id"] == victim_id
    while rogue.poll(0):  # heartbeats from the proxy, but never a request
        assert rogue.recv_multipart()[1] != b"REQ", "the rogue server was given work"


def test_10_forged_probe_replies_do_not_reach_reference_clients(curve, raw) -> None:
    root, proxy = curve["root"], curve["proxy"]
    assert isinstance(root, Path) and isinstance(proxy, RoleProcess)
    victim = curve_socket(raw, zmq.SUB, root, "alice")
    victim.subscribe(b"AGENT_REPLY_victim")
    victim.connect(proxy.ready["xpub"])
    forger = curve_socket(raw, zmq.PUB, root, "mallory")
    forger.connect(proxy.ready["xsub"])
    forged = json.dumps({"request_id": "r", "status": "success", "content": "FORGED"}).encode()
    before = metric(proxy, "skillscale_proxy_dropped_total", reason="forged_reply")
    deadline = time.monotonic() + 10
    while metric(proxy, "skillscale_proxy_dropped_total", reason="forged_reply") < before + 3:
        assert time.monotonic() < deadline
        for topic in (b"AGENT_REPLY_victim.probe", b"AGENT_REPLY_victim", b"_SKILLSCALE_TRACE"):
            forger.send_multipart([topic, forged])
        time.sleep(0.05)  # resend until the forger's connection is up
    assert not victim.poll(200)
    assert curve_call(raw, root, proxy, "still")["status"] == "success"


def test_13_up_with_curve(tmp_path: Path) -> None:
    up = RoleProcess(
        "up", "--xsub-port", "0", "--xpub-port", "0", "--router-port", "0",
        "--metrics-port", "-1", "--workers", "1", "--json", "--curve",
        "--curve-dir", str(tmp_path / "curve"), "--skills-dir", str(FIXTURE_SKILLS / "testing"),
    )  # fmt: skip
    try:
        env = up.ready["curve"]
        assert Path(env["SKILLSCALE_CURVE_SECRET"]).is_file()
        base = [
            sys.executable, "-m", "skillscale", "invoke", "--proxy-xsub", up.ready["xsub"],
            "--proxy-xpub", up.ready["xpub"], "TOPIC_TESTING", echo("secure"), "--timeout", "10",
        ]  # fmt: skip
        ok = subprocess.run(base, env=role_env(**env), capture_output=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert b"secure" in ok.stdout
        keyless = subprocess.run(base, env=role_env(), capture_output=True, timeout=60)
        assert keyless.returncode != 0
    finally:
        up.close()


def test_log_lines_cannot_be_forged() -> None:
    from skillscale.core.runtime import safe

    assert "\n" not in safe("abc\nFAKE LOG")
    assert re.fullmatch(r"[ -~]*", safe(b"\xff\x00\r\n\x1b[31m"))
