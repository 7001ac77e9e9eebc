"""``skillscale skills promote|canary|reject|rollback`` announce their change on the bus.

* Through a live proxy and server whose periodic rescan is an hour, so only
  the event can reload it: ``skills promote`` (a real CLI process, reaching the
  proxy from ``SKILLSCALE_PROXY_X*``) makes the server serve the new version,
  ``skills rollback`` the old one again, while a caller keeps sending and
  every request is answered. The event on the bus is the versioned
  ``SkillsChangedEvent``.
* With no fabric the file change still happens, one info line says servers
  pick it up on their next rescan, and the exit status is 0; with
  ``SKILLSCALE_NO_ANNOUNCE=1`` nothing is attempted and nothing is said.
* Under CURVE the ``SKILLSCALE_CURVE_*`` keys carry the announcement; without
  them the info line names the refused handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from skillscale import SkillScaleClient
from skillscale.core import rollout, skill_history
from skillscale.core.events import SKILLS_CHANGED_TOPIC, SkillsChangedEvent
from skillscale.core.protocol import Reply
from skillscale.core.transport import BusSocket, ZmqTransport, await_roundtrip
from tests.helpers import ROOT, RoleProcess, free_port, role_env, start_server
from tests.test_rollout import write_skill

TOPIC = "TOPIC_ANNOUNCED"


def library(base: Path) -> Path:
    """``lib/announced/echo`` at version 1 (prints v1, committed to its history) with a
    draft version 2 (prints v2)."""
    lib = base / "lib"
    write_skill(lib / "announced" / "echo", "echo", "print('v1')\n", "1")
    assert skill_history.commit(lib / "announced" / "echo", "version 1") is not None
    source = write_skill(base / "src" / "echo", "echo", "print('v2')\n")
    assert rollout.propose_candidate(lib / "announced" / "echo", source, {"by": "test"},
                                     start_canary=False) == "2"  # fmt: skip
    return lib


async def cli(*args: str, **env: str) -> tuple[int, str, str, float]:
    """``python -m skillscale ARGS`` as its own process: exit status, stdout, stderr, seconds."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "skillscale", *args, cwd=ROOT, env=role_env(**env),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


@contextlib.asynccontextmanager
async def changes(proxy: RoleProcess) -> AsyncIterator[BusSocket]:
    """A subscriber to skills-changed events, proven connected."""
    transport = ZmqTransport()
    probe = b"_SKILLSCALE_TEST_PROBE_announce"
    sub = transport.subscriber(proxy.ready["xpub"], [SKILLS_CHANGED_TOPIC.encode(), probe],
                               hwm=10_000)  # fmt: skip
    pub = transport.publisher(proxy.ready["xsub"], hwm=100)
    try:
        await await_roundtrip(pub, sub, probe, timeout=10)
        yield sub
    finally:
        sub.close()
        pub.close()
        transport.close()


async def next_change(sub: BusSocket, timeout: float = 10.0) -> SkillsChangedEvent:
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        assert left > 0, "no skills-changed event on the bus"
        if not await sub.wait_readable(left):
            continue
        for frames in sub.drain(100):
            if bytes(frames[0]) == SKILLS_CHANGED_TOPIC.encode():
                return SkillsChangedEvent.model_validate_json(bytes(frames[1]))


async def served(client: SkillScaleClient, version: str, timeout: float = 10.0) -> Reply:
    """Call until the server answers with ``version`` (its rescan is an hour away)."""
    end = time.monotonic() + timeout
    while True:
        reply = await client.call(TOPIC, {"skill": "echo", "data": "x"})
        assert reply.ok, reply.error
        if reply.skill_version == version:
            return reply
        assert time.monotonic() < end, f"still version {reply.skill_version}, not {version}"
        # The next call is the wait: it is answered when the server is free.


@pytest.mark.timeout(90)
async def test_promote_and_rollback_reach_a_live_server_without_a_rescan(
    proxy: RoleProcess, tmp_path: Path
) -> None:
    lib = library(tmp_path)
    server = start_server(proxy, lib / "announced", reload_interval=3600)
    env = {"SKILLSCALE_PROXY_XSUB": proxy.ready["xsub"],
           "SKILLSCALE_PROXY_XPUB": proxy.ready["xpub"]}  # fmt: skip
    replies: list[Reply] = []
    stop = asyncio.Event()

    async def keep_calling(client: SkillScaleClient) -> None:
        while not stop.is_set():
            replies.append(await client.call(TOPIC, {"skill": "echo", "data": "x"}))

    try:
        async with (
            changes(proxy) as sub,
            SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], timeout=15) as client,
            SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], timeout=15) as caller,
        ):
            first = await served(client, "1")
            assert first.content == "v1\n"
            background = asyncio.create_task(keep_calling(caller))
            try:
                code, out, err, _ = await cli("skills", "promote", "echo", "--reason", "by hand",
                                              "--skills-dir", str(lib), **env)  # fmt: skip
                assert code == 0, err
                assert "echo version 2 is active (announced to the servers)" in out
                assert "info:" not in err
                event = await next_change(sub)
                promoted = ("promoted", "echo", "2", "2")
                assert (event.change, event.skill, event.version, event.active) == promoted
                assert event.schema_version == 1 and event.reason == "by hand"
                assert event.path == str(lib / "announced" / "echo")
                assert (await served(client, "2")).content == "v2\n"

                code, out, err, _ = await cli("skills", "rollback", "echo", "--to", "HEAD~1",
                                              "--skills-dir", str(lib), **env)  # fmt: skip
                assert code == 0, err
                assert "(announced to the servers)" in out, out + err
                event = await next_change(sub)
                assert (event.change, event.version) == ("rolled_back", "1")
                assert (await served(client, "1")).content == "v1\n"
            finally:
                stop.set()
                await background
    finally:
        server.close()
    # Every request sent across both reloads was answered, by one version or the other.
    assert replies and all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert {r.content for r in replies} <= {"v1\n", "v2\n"}


@pytest.mark.timeout(60)
async def test_with_no_fabric_the_change_is_made_and_one_info_line_says_so(
    tmp_path: Path,
) -> None:
    lib = library(tmp_path)
    folder = lib / "announced" / "echo"
    nowhere = {"SKILLSCALE_PROXY_XSUB": f"tcp://127.0.0.1:{free_port()}",
               "SKILLSCALE_PROXY_XPUB": f"tcp://127.0.0.1:{free_port()}"}  # fmt: skip
    # Opted out: the file change only, and not a word about announcing.
    code, out, err, _ = await cli("skills", "canary", "echo", "--skills-dir", str(lib),
                                  SKILLSCALE_NO_ANNOUNCE="1", **nowhere)  # fmt: skip
    assert code == 0, err
    assert out.strip() == "echo version 2 is in canary on 20% of callers" and err == ""
    state = rollout.read_rollout(folder)
    assert state is not None and state.canary is not None and state.canary.version == "2"
    # Nobody listening: the change is made, one info line, exit 0, within the deadline.
    code, out, err, took = await cli("skills", "promote", "echo", "--skills-dir", str(lib),
                                     "--json", **nowhere)  # fmt: skip
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    assert report["active"] == "2" and report["state"] == "active"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("info: not announced (") and lines[0].endswith(
        "servers pick the change up on their next rescan"
    )
    assert took < 15, f"the announcement's 3 s deadline took {took:.1f} s"
    state = rollout.read_rollout(folder)
    assert state is not None and state.active == "2"


@pytest.fixture(scope="module")
def curve_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RoleProcess]]:
    """A proxy that admits only the listed CURVE client key ``announcer``."""
    from skillscale.core.security import generate_keypair

    root = tmp_path_factory.mktemp("curve")
    for name in ("proxy", "announcer"):
        generate_keypair(root, name)
    (root / "clients").mkdir()
    (root / "servers").mkdir()  # no server needed: the probe behind the event is the proof
    (root / "clients" / "announcer.key").write_bytes((root / "announcer.key").read_bytes())
    proc = RoleProcess(
        "proxy", "--xsub-bind", "tcp://127.0.0.1:0", "--xpub-bind", "tcp://127.0.0.1:0",
        "--router-bind", "tcp://127.0.0.1:0", "--metrics-port", "-1",
        "--curve-secret", str(root / "proxy.key_secret"), "--curve-clients", str(root / "clients"),
        "--curve-servers", str(root / "servers"),
    )  # fmt: skip
    yield root, proc
    proc.close()


@pytest.mark.timeout(60)
async def test_under_curve_the_keys_from_the_environment_carry_the_announcement(
    curve_proxy: tuple[Path, RoleProcess], tmp_path: Path
) -> None:
    root, proxy = curve_proxy
    lib = library(tmp_path)
    env = {"SKILLSCALE_PROXY_XSUB": proxy.ready["xsub"],
           "SKILLSCALE_PROXY_XPUB": proxy.ready["xpub"]}  # fmt: skip
    # Without keys the proxy refuses the handshake: the change is still made,
    # and the info line names the cause.
    code, out, err, _ = await cli("skills", "canary", "echo", "--skills-dir", str(lib), **env)
    assert code == 0, err
    assert "announced" not in out and err.startswith("info: not announced ("), err
    assert "requires CURVE keys" in err and len(err.strip().splitlines()) == 1, err
    # With the listed key (SKILLSCALE_CURVE_*), the probe behind the event comes back.
    keys = {"SKILLSCALE_CURVE_SECRET": str(root / "announcer.key_secret"),
            "SKILLSCALE_CURVE_SERVER_KEY": str(root / "proxy.key")}  # fmt: skip
    code, out, err, _ = await cli("skills", "reject", "echo", "--skills-dir", str(lib),
                                  **env, **keys)  # fmt: skip
    assert code == 0, err
    assert out.strip() == "echo version 2 is retired (announced to the servers)", out + err
    state = rollout.read_rollout(lib / "announced" / "echo")
    assert state is not None and state.canary is None and state.versions["2"].state == "retired"
