"""Fault injection with real processes on loopback.

Each scenario reports requests sent, replies received, executions performed
(the skills count their own runs), duplicates and losses, as one line
starting with ``FAULTS`` (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from skillscale import ErrorCode, Reply, SkillScaleClient, SkillScaleError
from tests.helpers import (
    FIXTURE_SKILLS,
    RoleProcess,
    free_port,
    rss_mib,
    start_proxy,
    start_server,
    wait_pid_gone,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
SKILLS = FIXTURE_SKILLS / "testing"


def report(scenario: str, **figures: object) -> None:
    print(f"FAULTS {scenario}: " + " ".join(f"{k}={v}" for k, v in figures.items()))


def intent(skill: str, data: object) -> str:
    return json.dumps({"skill": skill, "data": data if isinstance(data, str) else json.dumps(data)})


class Fifo:
    """A named pipe the ``announce`` skill writes ``tag server_id pid`` lines to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.lines: list[tuple[str, str, int]] = []
        self._cond = threading.Condition()
        # O_RDWR keeps the FIFO open for writers even between them.
        self._fd = os.open(path, os.O_RDWR)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                tag, server_id, pid = line.decode().split()
                with self._cond:
                    self.lines.append((tag, server_id, int(pid)))
                    self._cond.notify_all()

    def wait_for(self, predicate: object, timeout: float = 30) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.lines), timeout), self.lines  # type: ignore[operator]

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    f = Fifo(tmp_path / "announce.fifo")
    yield f
    f.close()


def client_for(proxy: RoleProcess, **kw: object) -> SkillScaleClient:
    return SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("replicas", [2, 3])
async def test_replicas_share_work_exactly_once(replicas: int, tmp_path: Path) -> None:
    proxy = start_proxy()
    servers = [start_server(proxy, SKILLS, "TOPIC_SPLIT", workers=2) for _ in range(replicas)]
    tally = tmp_path / "tally"
    sent = 1000
    try:
        async with client_for(proxy, timeout=60, max_in_flight=64) as client:
            replies: list[Reply] = await asyncio.gather(
                *(client.call("TOPIC_SPLIT", intent("tally", f"{tally} r{i}")) for i in range(sent))
            )
    finally:
        for server in servers:
            server.close()
        proxy.close()
    executions = tally.read_text().split()
    ok = [r for r in replies if r.ok]
    per_server = Counter(r.server_id for r in ok)
    duplicates = len(executions) - len(set(executions))
    report(
        f"{replicas}-replicas", sent=sent, replied=len(replies), succeeded=len(ok),
        executed=len(executions), duplicates=duplicates, lost=sent - len(replies),
        split=dict(per_server),
    )  # fmt: skip
    assert len(ok) == sent and len(executions) == sent and duplicates == 0
    assert sorted(r.content for r in ok) == sorted(f"r{i}" for i in range(sent))
    assert len(per_server) == replicas
    fair = sent / replicas
    assert min(per_server.values()) >= 0.5 * fair, per_server


async def test_sigkill_of_a_replica_mid_request_loses_nothing(fifo: Fifo) -> None:
    proxy = start_proxy(heartbeat_timeout=1.0)
    victim = start_server(proxy, SKILLS, "TOPIC_KILL", workers=2)
    victim_id = victim.ready["server_id"]
    survivor = start_server(proxy, SKILLS, "TOPIC_KILL", workers=2)
    sent = 8
    try:
        async with client_for(proxy, timeout=60) as client:
            calls = [
                asyncio.ensure_future(
                    client.call(
                        "TOPIC_KILL",
                        intent(
                            "announce", {"fifo": str(fifo.path), "tag": f"t{i}", "seconds": 1.5}
                        ),
                    )
                )
                for i in range(sent)
            ]
            await asyncio.get_running_loop().run_in_executor(
                None, fifo.wait_for, lambda lines: any(s == victim_id for _, s, _ in lines)
            )
            orphans = [pid for _, server_id, pid in fifo.lines if server_id == victim_id]
            victim.signal(signal.SIGKILL)
            replies: list[Reply] = await asyncio.gather(*calls)
    finally:
        victim.kill()
        survivor.close()
        proxy.close()
    tags = [r.content.strip() for r in replies if r.ok]
    redelivered = [r for r in replies if r.trace and (r.trace.attempt or 1) > 1]
    executions = len(fifo.lines)
    report(
        "sigkill-replica", sent=sent, replied=len(replies), succeeded=len(tags),
        executed=executions, duplicates=len(tags) - len(set(tags)), lost=sent - len(tags),
        redelivered=len(redelivered),
    )  # fmt: skip
    assert sorted(tags) == sorted(f"t{i}" for i in range(sent))
    assert redelivered, "the victim's requests should have been re-dispatched"
    for reply in redelivered:
        assert reply.trace is not None and reply.trace.redelivered_from
        assert victim.ready["server_id"] in reply.trace.redelivered_from
        assert reply.server_id == survivor.ready["server_id"]
    # The victim's skill processes died with it (no orphans keep running).
    for pid in orphans:
        assert wait_pid_gone(pid)


async def test_proxy_restart_mid_run_never_hangs() -> None:
    ports = (free_port(), free_port(), free_port())
    proxy = start_proxy(ports, heartbeat_timeout=2.0)
    servers = [start_server(proxy, SKILLS, "TOPIC_RESTART", workers=2) for _ in range(2)]
    sent, timeout, callers = 160, 6.0, 8
    outcomes: list[str] = []
    durations: list[float] = []
    remaining = sent
    try:
        async with client_for(proxy, timeout=timeout) as client:

            async def caller() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    started = time.monotonic()
                    try:
                        reply = await client.call("TOPIC_RESTART", intent("slow", "0.05"))
                        outcomes.append(reply.error_code.value if reply.error_code else "ok")
                    except SkillScaleError as exc:
                        outcomes.append(exc.code.value)
                    durations.append(time.monotonic() - started)

            tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
            while len(outcomes) < 30:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=0.05)
            proxy.signal(signal.SIGKILL)
            proxy.proc.wait(10)
            proxy = start_proxy(ports, heartbeat_timeout=2.0)
            await asyncio.gather(*tasks)
            # Servers and the client found the new proxy by themselves.
            after = await client.call("TOPIC_RESTART", intent("echo", "after"), timeout=20)
    finally:
        for server in servers:
            server.close()
        proxy.close()
    counts = Counter(outcomes)
    errors = {code: n for code, n in counts.items() if code != "ok"}
    report(
        "proxy-restart", sent=sent, replied=counts["ok"], errors=errors,
        lost_without_error=sent - len(outcomes), slowest_s=round(max(durations), 2),
    )  # fmt: skip
    assert len(outcomes) == sent  # every call ended: a reply or a clear error
    assert max(durations) <= timeout + 1.0  # none hung past its deadline
    assert set(counts) <= {"ok", "timeout", "no_server", "deadline_exceeded"}
    # Only what was inside the dead proxy at the kill can be lost: at most
    # one request per caller.
    assert sum(errors.values()) <= callers
    assert after.ok and after.content == "after"


async def test_flood_beyond_capacity_is_refused_and_recovers() -> None:
    proxy = start_proxy(max_queue=20)
    server = start_server(proxy, SKILLS, "TOPIC_FLOOD", workers=1)
    sent = 400
    try:
        before = rss_mib(proxy.pid), rss_mib(server.pid)
        async with client_for(proxy, timeout=60, max_in_flight=sent) as client:
            replies: list[Reply] = await asyncio.gather(
                *(client.call("TOPIC_FLOOD", intent("slow", "0.02")) for _ in range(sent))
            )
            after = rss_mib(proxy.pid), rss_mib(server.pid)
            recovered = await client.call("TOPIC_FLOOD", intent("echo", "calm"))
    finally:
        server.close()
        proxy.close()
    codes = Counter(r.error_code.value if r.error_code else "ok" for r in replies)
    report(
        "flood", sent=sent, replied=len(replies), ok=codes["ok"], overloaded=codes["overloaded"],
        proxy_rss_mib=f"{before[0]:.0f}->{after[0]:.0f}",
        server_rss_mib=f"{before[1]:.0f}->{after[1]:.0f}",
    )  # fmt: skip
    assert len(replies) == sent and set(codes) <= {"ok", "overloaded"}
    assert codes["overloaded"] > 0 and codes["ok"] >= 21
    assert after[0] - before[0] < 50 and after[1] - before[1] < 50
    assert recovered.ok and recovered.content == "calm"


async def test_requests_wait_for_a_first_server_then_no_server() -> None:
    proxy = start_proxy(no_server_wait=4.0)
    late: RoleProcess | None = None
    try:
        async with client_for(proxy, timeout=20) as client:
            early = asyncio.ensure_future(client.call("TOPIC_LATE", intent("echo", "waited")))
            started = time.monotonic()
            nobody = asyncio.ensure_future(client.call("TOPIC_NEVER", intent("echo", "x")))
            late = await asyncio.get_running_loop().run_in_executor(
                None, lambda: start_server(proxy, SKILLS, "TOPIC_LATE")
            )
            first = await early
            never = await nobody
            waited = time.monotonic() - started
    finally:
        if late is not None:
            late.close()
        proxy.close()
    report("no-server", sent=2, replied=2, late_server_ok=first.ok,
           no_server_after_s=round(waited, 2))  # fmt: skip
    assert first.ok and first.content == "waited"
    assert never.error_code is ErrorCode.NO_SERVER and "TOPIC_NEVER" in (never.error or "")
    assert 3.5 < waited < 8


async def test_sigterm_hands_unfinished_work_to_another_replica(fifo: Fifo) -> None:
    proxy = start_proxy()
    leaving = start_server(proxy, SKILLS, "TOPIC_HANDOFF", workers=1, grace=0.5)
    staying = start_server(proxy, SKILLS, "TOPIC_HANDOFF", workers=1)
    try:
        async with client_for(proxy, timeout=30) as client:
            calls = [
                asyncio.ensure_future(
                    client.call(
                        "TOPIC_HANDOFF",
                        intent(
                            "announce", {"fifo": str(fifo.path), "tag": f"h{i}", "seconds": 1.5}
                        ),
                    )
                )
                for i in range(2)
            ]
            await asyncio.get_running_loop().run_in_executor(
                None,
                fifo.wait_for,
                lambda lines: any(s == leaving.ready["server_id"] for _, s, _ in lines),
            )
            leaving.signal(signal.SIGTERM)
            replies: list[Reply] = await asyncio.gather(*calls)
            assert leaving.proc.wait(15) == 0
    finally:
        leaving.close()
        staying.close()
        proxy.close()
    report("sigterm-handoff", sent=2, replied=sum(r.ok for r in replies), executed=len(fifo.lines))
    assert all(r.ok for r in replies), [r.error for r in replies]
    handed = [r for r in replies if r.trace and (r.trace.attempt or 1) > 1]
    assert len(handed) == 1 and handed[0].server_id == staying.ready["server_id"]
    assert handed[0].trace is not None
    assert leaving.ready["server_id"] in (handed[0].trace.redelivered_from or [])
