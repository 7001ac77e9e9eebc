"""A canary promotion and a canary rejection end to end: real proxy and server processes.

Two skills on one server. ``flaky`` fails in version 1 and its candidate works:
the candidate is promoted. ``steady`` works in version 1 and its candidate
fails: the candidate is rejected. Clients on both arms send a steady stream
of requests throughout; every request is answered, and after the promotion
(announced by a skills-changed event; the server's periodic rescan is set to
an hour, so the event is what reloads it) every caller gets version 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from skillscale import SkillScaleClient
from skillscale.core import rollout
from skillscale.core.events import (
    FEEDBACK_TOPIC,
    SKILLS_CHANGED_TOPIC,
    TRACE_TOPIC,
    caller_id,
)
from skillscale.core.protocol import Reply
from skillscale.core.transport import BusSocket, ZmqTransport, await_roundtrip
from skillscale.distiller.evolution import Evolution, EvolutionConfig
from tests.helpers import RoleProcess, start_proxy, start_server
from tests.test_rollout import write_skill

OK = "import sys\nsys.stdin.read()\nprint('fine')\n"
FAIL = "import sys\nsys.stdin.read()\nprint('broken input', file=sys.stderr)\nsys.exit(3)\n"
SHARE = 0.5
TOPIC = "TOPIC_EVO"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("evo")
    lib = base / "lib"
    write_skill(lib / "evo" / "flaky", "flaky", FAIL, "1")
    write_skill(lib / "evo" / "steady", "steady", OK, "1")
    for name, script in (("flaky", OK), ("steady", FAIL)):
        source = write_skill(base / "src" / name, name, script)
        assert rollout.propose_candidate(lib / "evo" / name, source, {"by": "test"},
                                         share=SHARE) == "2"  # fmt: skip
    return lib


@pytest.fixture(scope="module")
def fabric(library: Path) -> Iterator[tuple[RoleProcess, RoleProcess]]:
    proxy = start_proxy()
    server = start_server(proxy, library / "evo", reload_interval=3600, workers=2)
    yield proxy, server
    server.close()
    proxy.close()


@contextlib.asynccontextmanager
async def bus(proxy: RoleProcess) -> AsyncIterator[tuple[BusSocket, BusSocket]]:
    transport = ZmqTransport()
    probe = b"_SKILLSCALE_TEST_PROBE_evo"
    topics = [TRACE_TOPIC.encode(), FEEDBACK_TOPIC.encode(), SKILLS_CHANGED_TOPIC.encode(), probe]
    sub = transport.subscriber(proxy.ready["xpub"], topics, hwm=100_000)
    pub = transport.publisher(proxy.ready["xsub"], hwm=1000)
    try:
        await await_roundtrip(pub, sub, probe, timeout=10)
        yield pub, sub
    finally:
        sub.close()
        pub.close()
        transport.close()


async def clients_per_arm(proxy: RoleProcess) -> dict[tuple[str, bool], SkillScaleClient]:
    """One connected client per (skill, arm): routing is by the caller's reply topic."""
    found: dict[tuple[str, bool], SkillScaleClient] = {}
    spare: list[SkillScaleClient] = []
    for _ in range(40):
        client = SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], timeout=15)
        await client.connect()
        caller = caller_id(client.reply_topic)
        used = False
        for skill in ("flaky", "steady"):
            arm = rollout.in_canary(caller, skill, "2", SHARE)
            if (skill, arm) not in found:
                found[(skill, arm)] = client
                used = True
        if not used:
            spare.append(client)
        if len(found) == 4:
            break
    for client in spare:
        await client.close()
    assert len(found) == 4, "40 callers and no caller on one arm: the routing hash is broken"
    return found


@pytest.mark.timeout(90)
async def test_promotion_and_rejection_through_live_servers(
    fabric: tuple[RoleProcess, RoleProcess], library: Path
) -> None:
    proxy, _server = fabric
    # (the canaries run with the default test, alpha 0.04 / beta 0.15 / OR 2, set at proposal)
    config = EvolutionConfig(share=SHARE, feedback_window=0, min_failures=10_000)
    clients = await clients_per_arm(proxy)
    unique = list({id(c): c for c in clients.values()}.values())
    replies: list[tuple[str, bool, Reply]] = []
    changes: list[dict[str, Any]] = []
    traces: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    try:
        async with bus(proxy) as (pub, sub):
            publish = lambda topic, payload: pub.send([topic.encode(), payload])  # noqa: E731
            async with Evolution(library, config=config, publish=publish) as evo:

                async def forward() -> None:
                    for frames in sub.drain(10_000):
                        topic, event = bytes(frames[0]).decode(), json.loads(bytes(frames[1]))
                        if topic == SKILLS_CHANGED_TOPIC:
                            changes.append(event)
                            continue
                        (traces if topic == TRACE_TOPIC else feedback).append(event)
                        await evo.observe(event)

                deadline = time.monotonic() + 60
                promoted_at: int | None = None
                while time.monotonic() < deadline:
                    # The steady stream: every client, every skill it stands for, each round.
                    calls = [
                        (skill, arm, client.call(TOPIC, {"skill": skill, "data": "x"}))
                        for (skill, arm), client in clients.items()
                    ]
                    for skill, arm, call in calls:
                        replies.append((skill, arm, await call))  # raises if unanswered
                    await forward()
                    await evo.tick()
                    decided = {(c["skill"], c["change"]) for c in changes}
                    if ("flaky", "promoted") in decided and promoted_at is None:
                        promoted_at = len(replies)
                    flaky_now = [r for s, _a, r in replies[-4:] if s == "flaky"]
                    if (
                        ("steady", "rejected") in decided
                        and promoted_at is not None
                        and all(r.ok and r.skill_version == "2" for r in flaky_now)
                    ):
                        break
                last = replies[-1][2]
                unique[0].feedback(last.request_id, 1.0)
                end = time.monotonic() + 10

                def settled() -> bool:
                    # The feedback, and the trace of a post-decision flaky reply:
                    # trace events trail their replies (sent after, in batches).
                    after = any(t["skill"] == "flaky" and t["candidate"] is None for t in traces)
                    return bool(feedback) and after

                while not settled() and time.monotonic() < end:
                    await asyncio.wait_for(sub.wait_readable(), end - time.monotonic())
                    await forward()
    finally:
        for client in unique:
            await client.close()

    decided = [(c["skill"], c["change"], c["version"]) for c in changes]
    print(
        f"\n{len(replies)} requests, all answered; promotion seen on the bus after {promoted_at}:"
    )
    for c in changes:
        print(f"  {c['skill']} {c['change']} v{c['version']}: {c['reason']}")
    assert ("flaky", "promoted", "2") in decided, decided
    assert ("steady", "rejected", "2") in decided, decided
    assert promoted_at is not None
    # Before the decisions each arm got its own version, marked in the reply's _trace.
    first = {(s, a): r for s, a, r in reversed(replies)}
    for skill in ("flaky", "steady"):
        on_candidate, on_active = first[(skill, True)], first[(skill, False)]
        assert on_candidate.skill_version == "2" and on_candidate.trace is not None
        assert on_candidate.trace.candidate is True
        assert on_active.skill_version == "1" and on_active.trace is not None
        assert on_active.trace.candidate is False
    assert first[("flaky", True)].ok and not first[("flaky", False)].ok
    assert first[("steady", False)].ok and not first[("steady", True)].ok
    # The trace events carried the arm and, for failures, the stderr to cluster.
    failed = [t for t in traces if t["outcome"] == "exec_failed"]
    assert failed and all("broken input" in (t.get("stderr") or "") for t in failed)
    # (None once no canary runs)
    assert {t["candidate"] for t in traces if t["skill"] == "flaky"} == {True, False, None}
    # After: everyone gets flaky v2 and steady v1; no request went unanswered.
    tail = [(s, r) for s, _a, r in replies[-4:]]
    assert all(r.ok for _s, r in tail)
    assert {(s, r.skill_version) for s, r in tail} == {("flaky", "2"), ("steady", "1")}
    assert all(r.request_id for _s, _a, r in replies)
    assert feedback and feedback[0]["request_id"] == last.request_id
    assert (library / "evo" / "flaky" / "scripts" / "run.py").read_text() == OK
    state = rollout.read_rollout(library / "evo" / "steady")
    assert state is not None and state.active == "1" and state.versions["2"].state == "retired"
