"""CURVE on every bus socket: allow-listed peers work, others get nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from skillscale import SkillScaleClient, UnavailableError
from skillscale.core.security import CurveKeys, generate_keypair
from tests.helpers import FIXTURE_SKILLS, RoleProcess, start_proxy, start_server

pytestmark = pytest.mark.integration
T = "TOPIC_SECURE"


@dataclass
class Keys:
    root: Path

    def secret(self, name: str) -> Path:
        return self.root / "all" / f"{name}.key_secret"

    def public(self, name: str) -> Path:
        return self.root / "all" / f"{name}.key"

    def peer(self, name: str) -> CurveKeys:
        return CurveKeys(self.secret(name), self.public("proxy"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    for name in ("proxy", "server", "alice", "carol", "mallory"):
        generate_keypair(root / "all", name)
    (root / "clients").mkdir()
    (root / "servers").mkdir()
    for name in ("alice", "carol"):
        shutil.copy(root / "all" / f"{name}.key", root / "clients")
    shutil.copy(root / "all" / "server.key", root / "servers")
    return Keys(root)


@pytest.fixture(scope="module")
def secure(keys: Keys) -> Iterator[tuple[RoleProcess, RoleProcess]]:
    proxy = start_proxy(
        curve_secret=keys.secret("proxy"),
        curve_clients=keys.root / "clients",
        curve_servers=keys.root / "servers",
    )
    server = start_server(
        proxy, FIXTURE_SKILLS / "testing", T,
        curve_secret=keys.secret("server"), curve_server_key=keys.public("proxy"),
    )  # fmt: skip
    yield proxy, server
    server.close()
    proxy.close()


def client(proxy: RoleProcess, curve: CurveKeys | None, **kw: object) -> SkillScaleClient:
    return SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], curve=curve, **kw)  # type: ignore[arg-type]


def await_auth_failure(sock: zmq.Socket[bytes], timeout_ms: int = 10_000) -> int:
    """Block on the socket's monitor until the handshake is refused; return the event."""
    monitor = sock.get_monitor_socket()
    try:
        while monitor.poll(timeout_ms):
            event = parse_monitor_message(monitor.recv_multipart())["event"]
            if event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                return int(event)
        raise TimeoutError("no handshake failure seen")
    finally:
        sock.disable_monitor()
        monitor.close(0)


async def test_listed_client_works(keys: Keys, secure: tuple[RoleProcess, RoleProcess]) -> None:
    proxy, server = secure
    async with client(proxy, keys.peer("alice")) as alice:
        reply = await alice.call(T, json.dumps({"skill": "echo", "data": "sealed"}))
    assert reply.ok and reply.content == "sealed"
    assert reply.server_id == server.ready["server_id"]


@pytest.mark.parametrize("who", ["mallory", None])
async def test_unlisted_or_keyless_client_cannot_connect(
    keys: Keys, secure: tuple[RoleProcess, RoleProcess], who: str | None
) -> None:
    proxy, _ = secure
    curve = keys.peer(who) if who else None
    with pytest.raises(UnavailableError):
        async with client(proxy, curve, connect_timeout=1.0):
            pass


def test_unlisted_publisher_and_subscriber_are_refused_at_the_handshake(
    keys: Keys, secure: tuple[RoleProcess, RoleProcess]
) -> None:
    proxy, _ = secure
    ctx = zmq.Context()
    try:
        for kind, endpoint in (
            (zmq.PUB, proxy.ready["xsub"]),
            (zmq.SUB, proxy.ready["xpub"]),
        ):
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            keys.peer("mallory").apply(sock)
            sock.connect(endpoint)
            assert await_auth_failure(sock) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            sock.close(0)
    finally:
        ctx.term()


def test_a_client_key_cannot_join_as_a_server(
    keys: Keys, secure: tuple[RoleProcess, RoleProcess]
) -> None:
    proxy, _ = secure
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        keys.peer("alice").apply(dealer)
        dealer.connect(proxy.ready["router"])
        assert await_auth_failure(dealer) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        dealer.close(0)
    finally:
        ctx.term()


async def test_listed_client_cannot_forge_replies(
    keys: Keys, secure: tuple[RoleProcess, RoleProcess]
) -> None:
    proxy, _ = secure

    async def forged_drops() -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(proxy.ready["metrics"], timeout=5)).text
        for line in text.splitlines():
            if (
                line.startswith("skillscale_proxy_dropped_total")
                and 'reason="forged_reply"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = await forged_drops()
    async with (
        client(proxy, keys.peer("carol")) as carol,
        client(proxy, keys.peer("alice")) as alice,
    ):
        forged = {"request_id": "x", "status": "success", "content": "forged"}
        assert alice._pub is not None
        alice._pub.send([carol.reply_topic.encode(), json.dumps(forged).encode()])
        # Alice's own request travels the same connection after the forgery, so
        # once it is answered the proxy has judged the forged message too.
        assert (await alice.call(T, json.dumps({"skill": "echo", "data": "a"}))).ok
        reply = await carol.call(T, json.dumps({"skill": "echo", "data": "genuine"}))
    assert reply.ok and reply.content == "genuine"
    assert await forged_drops() == before + 1
