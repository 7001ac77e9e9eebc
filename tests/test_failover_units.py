"""The socket-free parts of "no single point of loss", each on its own.

Binary Star's state machine (``proxy/failover.py``), the proxy's recovery
window, the groups' hooks, the server's dedupe window and proxy links, the
client's endpoint ring and retransmission store; plus the server's dedupe
end to end over the in-memory bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from skillscale import Reply, Request
from skillscale.core.errors import ConfigError, ErrorCode
from skillscale.core.memory_bus import MemoryBus
from skillscale.core.replica_protocol import (
    MAX_HOLDING,
    ROLE_ACTIVE,
    ROLE_PASSIVE,
    ServerState,
    request_key,
)
from skillscale.core.transport import split_endpoints
from skillscale.proxy.failover import BinaryStar, Recovery, State
from skillscale.proxy.groups import Job, ReplicaGroups
from skillscale.sdk.failover import EndpointRing, Retransmissions
from skillscale.skill_server.dedupe import DedupeConfig, DedupeWindow, mark_deduplicated
from skillscale.skill_server.proxies import ProxyLinks
from skillscale.skill_server.server import ServerConfig, SkillServer
from tests.helpers import FIXTURE_SKILLS

if TYPE_CHECKING:
    from skillscale.core.security import ProxyCurve
    from skillscale.proxy import ProxyConfig

HB = 1.0


# -- Binary Star ---------------------------------------------------------------


def test_primary_and_backup_settle_active_and_passive() -> None:
    primary, backup = BinaryStar(True, HB), BinaryStar(False, HB)
    assert primary.on_peer(backup.wire_state(), 0.0)
    assert primary.state is State.ACTIVE
    assert backup.on_peer(primary.wire_state(), 0.0)
    assert backup.state is State.PASSIVE
    # Steady state: heartbeats change nothing.
    assert not primary.on_peer(backup.wire_state(), 1.0)
    assert not backup.on_peer(primary.wire_state(), 1.0)


def test_passive_takes_over_on_a_client_vote_only_after_the_peer_expired() -> None:
    backup = BinaryStar(False, HB)
    backup.on_peer(b"active", 10.0)
    assert backup.state is State.PASSIVE
    assert not backup.on_vote(11.9)  # the peer is still within 2 heartbeats
    assert backup.state is State.PASSIVE and backup.refused_votes == 1
    assert backup.on_vote(12.0)
    assert backup.active


def test_a_silent_peer_without_client_votes_changes_nothing() -> None:
    backup = BinaryStar(False, HB)
    backup.on_peer(b"active", 0.0)
    # No vote, no take-over: a split between the proxies alone makes no second active.
    assert backup.state is State.PASSIVE


def test_a_backup_alone_never_serves_and_a_primary_alone_does() -> None:
    backup, primary = BinaryStar(False, HB), BinaryStar(True, HB)
    assert not backup.on_vote(100.0)
    assert backup.state is State.BACKUP
    assert primary.on_vote(100.0) and primary.active


def test_a_backup_that_heard_its_primary_takes_over_once_the_primary_is_silent() -> None:
    # The primary went active on hearing us and died before its next state
    # message: the backup never saw "active", so it is still a backup.
    primary, backup = BinaryStar(True, HB), BinaryStar(False, HB)
    backup.on_peer(primary.wire_state(), 10.0)
    assert backup.state is State.BACKUP
    assert primary.on_peer(backup.wire_state(), 10.0) and primary.active
    assert not backup.on_vote(11.9)  # the primary may still speak
    assert backup.state is State.BACKUP and backup.refused_votes == 1
    assert backup.on_vote(12.0) and backup.active


def test_two_backups_by_mistake_still_never_serve() -> None:
    one, other = BinaryStar(False, HB), BinaryStar(False, HB)
    one.on_peer(other.wire_state(), 0.0)
    assert not one.on_vote(100.0) and one.state is State.BACKUP


def test_no_failback_a_restarted_primary_goes_passive() -> None:
    primary = BinaryStar(True, HB)
    assert primary.on_peer(b"active", 0.0)  # the backup took over meanwhile
    assert primary.state is State.PASSIVE
    assert not primary.on_vote(1.0)


def test_passive_becomes_active_when_its_peer_restarts() -> None:
    backup = BinaryStar(False, HB)
    backup.on_peer(b"active", 0.0)
    assert backup.on_peer(b"primary", 5.0)
    assert backup.active


def test_dual_active_the_backup_yields_and_conflicts_are_counted() -> None:
    primary, backup = BinaryStar(True, HB), BinaryStar(False, HB)
    primary.state = backup.state = State.ACTIVE
    assert not primary.on_peer(b"active", 0.0)
    assert primary.active and primary.conflicts == 1
    assert backup.on_peer(b"active", 0.0)
    assert backup.state is State.PASSIVE and backup.conflicts == 1


def test_dual_passive_is_counted_and_malformed_states_ignored() -> None:
    backup = BinaryStar(False, HB)
    backup.on_peer(b"active", 0.0)
    assert not backup.on_peer(b"passive", 1.0)
    assert backup.conflicts == 1
    assert not backup.on_peer(b"\xff\x00", 2.0)
    assert not backup.on_peer(b"leader", 2.0)
    assert backup.state is State.PASSIVE


# -- the proxy's recovery window ------------------------------------------------


def reply_bytes(request_id: str) -> bytes:
    return Reply(request_id=request_id, status="success", content="x").to_bytes()


def test_recovery_publishes_one_reply_per_caller_and_id_then_closes() -> None:
    recovery = Recovery(duration=10.0)
    recovery.begin(0.0)
    alice, bob = b"AGENT_REPLY_alice", b"AGENT_REPLY_bob"
    assert recovery.first_reply(alice, reply_bytes("r1"), 1.0)
    assert not recovery.first_reply(alice, reply_bytes("r1"), 2.0)
    # Scoped by the caller: bob's r1 is another request.
    assert recovery.first_reply(bob, reply_bytes("r1"), 2.0)
    assert recovery.duplicates == 1
    assert recovery.first_reply(alice, reply_bytes("r1"), 11.0)  # window over
    assert not recovery.open(11.0)


def test_recovery_reads_ids_past_the_head_and_tolerates_garbage() -> None:
    recovery = Recovery()
    recovery.begin(0.0)
    late = json.dumps({"content": "x" * 10_000, "status": "success", "request_id": "late"})
    assert recovery.first_reply(b"AGENT_REPLY_a", late.encode(), 1.0)
    assert not recovery.first_reply(b"AGENT_REPLY_a", late.encode(), 1.0)
    for junk in (b"", b"not json", b"[1,2]", b"{" * 5000 + b"x" * 5000):
        assert recovery.first_reply(b"AGENT_REPLY_a", junk, 1.0)


def test_recovery_names_the_holder_of_a_retransmitted_request() -> None:
    recovery = Recovery()
    request = Request(request_id="r7", reply_to="AGENT_REPLY_alice", intent="hi")
    recovery.begin(0.0)  # the window of the proxy's own start: it is passive, though
    recovery.note_holding(b"server-1", [request_key("AGENT_REPLY_alice", "r7")], serving=False)
    assert recovery.holder(request.to_bytes()) is None  # passive: not yet used
    recovery.begin(1.0)  # the take-over
    assert recovery.holder(request.to_bytes()) == b"server-1"
    other = Request(request_id="r7", reply_to="AGENT_REPLY_mallory", intent="hi")
    assert recovery.holder(other.to_bytes()) is None
    # After begin() (settling), heartbeats go straight to the holders.
    recovery.note_holding(b"server-2", [request_key("AGENT_REPLY_bob", "r8")], serving=True)
    bob = Request(request_id="r8", reply_to="AGENT_REPLY_bob", intent="hi")
    assert recovery.holder(bob.to_bytes()) == b"server-2"


class FakeIO:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, list[bytes]]] = []

    def send_to(self, identity: bytes, frames: list[bytes]) -> bool:
        self.sent.append((identity, frames))
        return True

    def publish(self, frames: list[bytes]) -> None:
        pass

    def reply_error(self, job: Job, code: ErrorCode, message: str) -> None:
        pass


def member_state(name: str, slots: int = 1) -> ServerState:
    return ServerState(server_id=name, topics=["T"], slots=slots)


def test_groups_steer_to_the_holder_and_hold_work_while_settling() -> None:
    io = FakeIO()
    groups = ReplicaGroups(io)
    groups.on_heartbeat(b"a", member_state("a"), 0.0)
    groups.on_heartbeat(b"b", member_state("b"), 0.0)
    groups.prefer = lambda payload: b"b" if payload == b"held" else None
    groups.settling = True
    assert groups.on_request(b"T", b"held", 0.1, plain_subscriber=False)
    assert groups.on_request(b"T", b"new", 0.1, plain_subscriber=False)
    assert [i for i, _ in io.sent] == [b"b"]  # the holder at once, the rest waits
    assert groups.queue_depth(b"T") == 1
    groups.settle(0.2)
    assert [i for i, _ in io.sent] == [b"b", b"a"]
    # A replica joining in a recovery window gets work from its second heartbeat.
    groups.admit_unsettled = True
    groups.on_heartbeat(b"c", member_state("c", slots=5), 0.25)
    assert groups.members[b"c"].free == 0
    groups.on_heartbeat(b"c", member_state("c", slots=5), 0.26)
    assert groups.members[b"c"].free == 5
    # A holder gets its request even with no free slot.
    assert groups.on_request(b"T", b"held", 0.3, plain_subscriber=False)
    assert io.sent[-1][0] == b"b"


# -- the server's side ----------------------------------------------------------


KEY = ("AGENT_REPLY_alice", "r1")


def test_window_answers_a_finished_duplicate_and_attaches_a_running_one() -> None:
    window: DedupeWindow[str] = DedupeWindow()
    assert window.lookup(KEY, "first", 0.0) is False
    window.start(KEY, 0.0)
    assert window.lookup(KEY, "second", 0.1) is True
    payload = reply_bytes("r1")
    assert window.finish(KEY, payload, 0.2) == ["second"]
    answer = window.lookup(KEY, "third", 0.3)
    assert isinstance(answer, bytes)
    reply = Reply.from_bytes(answer)
    assert reply.content == "x" and reply.trace is not None and reply.trace.deduplicated
    # Another caller with the same id is another request.
    assert window.lookup(("AGENT_REPLY_mallory", "r1"), "x", 0.3) is False
    assert window.hits == 2


def test_window_forgets_abandoned_work_with_its_waiters() -> None:
    window: DedupeWindow[str] = DedupeWindow()
    window.start(KEY, 0.0)
    window.lookup(KEY, "dup", 0.0)
    assert window.abandon(KEY) == ["dup"]
    assert window.lookup(KEY, "again", 0.1) is False
    assert window.abandon(("AGENT_REPLY_x", "none")) == []


def test_window_is_bounded_by_age_count_and_bytes_but_keeps_running_work() -> None:
    window: DedupeWindow[str] = DedupeWindow(
        DedupeConfig(max_entries=3, max_age=10.0, max_bytes=10_000)
    )
    running = ("AGENT_REPLY_r", "running")
    window.start(running, 0.0)
    for i in range(5):
        key = ("AGENT_REPLY_a", f"r{i}")
        window.start(key, 1.0)
        window.finish(key, reply_bytes(f"r{i}"), 1.0)
    assert len(window) == 4  # 3 answered + the running one
    assert window.lookup(("AGENT_REPLY_a", "r0"), "x", 1.0) is False  # evicted by count
    assert window.lookup(running, "dup", 20.0) is True  # never evicted while it runs
    assert window.lookup(("AGENT_REPLY_a", "r4"), "x", 20.0) is False  # evicted by age
    big: DedupeWindow[str] = DedupeWindow(DedupeConfig(max_bytes=100))
    big.start(KEY, 0.0)
    big.finish(KEY, reply_bytes("r1") + b" " * 200, 0.0)
    assert len(big) == 0  # evicted by bytes


def test_window_holding_lists_running_and_recent_hashes_bounded() -> None:
    window: DedupeWindow[str] = DedupeWindow(DedupeConfig(holding_age=5.0))
    window.start(("AGENT_REPLY_a", "old"), 0.0)
    window.finish(("AGENT_REPLY_a", "old"), reply_bytes("old"), 0.0)
    window.start(("AGENT_REPLY_a", "new"), 9.0)
    assert window.holding(10.0) == [request_key("AGENT_REPLY_a", "new")]
    many: DedupeWindow[str] = DedupeWindow()
    for i in range(MAX_HOLDING + 10):
        many.start(("AGENT_REPLY_a", f"r{i}"), 0.0)
    assert len(many.holding(0.0)) == MAX_HOLDING
    # A heartbeat carrying them stays within the proxy's bounds.
    ServerState.from_bytes(
        ServerState(server_id="s", topics=["T"], slots=1, holding=many.holding(0.0)).to_bytes()
    )


def test_mark_deduplicated_on_a_reply_without_trace() -> None:
    marked = Reply.from_bytes(mark_deduplicated(reply_bytes("r1")))
    assert marked.trace is not None and marked.trace.deduplicated is True


def test_links_send_replies_to_the_active_proxy_and_wait_in_a_take_over() -> None:
    links = ProxyLinks(2, timeout=3.0)
    assert links.target(0, 0.0) is None  # nobody heard yet
    assert not links.on_heartbeat(0, [ROLE_ACTIVE], 0.0)
    assert not links.on_heartbeat(1, [ROLE_PASSIVE], 0.0)
    assert links.target(1, 0.5) == 0 and links.passive(1, 0.5)
    assert links.on_heartbeat(1, [ROLE_ACTIVE], 1.0)  # a take-over
    assert links.target(0, 1.1) == 1  # the old active is no longer trusted
    assert links.target(1, 10.0) is None  # silent too long
    assert links.on_heartbeat(1, [ROLE_ACTIVE, b"epoch-1"], 1.2)  # first epoch heard
    assert not links.on_heartbeat(1, [ROLE_ACTIVE, b"epoch-1"], 1.3)
    assert links.on_heartbeat(1, [ROLE_ACTIVE, b"epoch-2"], 1.4)  # it restarted
    single = ProxyLinks(1)
    assert single.target(0, 99.0) == 0
    lone = ProxyLinks(2)
    lone.on_heartbeat(0, [], 0.0)  # a proxy without failover counts as active
    assert lone.target(1, 0.1) == 0


async def test_links_wait_change_has_a_deadline() -> None:
    links = ProxyLinks(2)
    started = time.monotonic()
    await links.wait_change(0.05)
    assert time.monotonic() - started < 1.0


# -- the client's side ----------------------------------------------------------


def test_endpoint_ring_round_robins_and_checks_pairs() -> None:
    ring = EndpointRing("tcp://a:1, tcp://b:1", ["tcp://a:2", "tcp://b:2"])
    assert len(ring) == 2 and ring.current.xpub == "tcp://a:2"
    assert ring.owns("tcp://b:1") and not ring.owns("tcp://a:1")
    assert ring.advance().xsub == "tcp://b:1"
    assert ring.advance().xsub == "tcp://a:1"
    with pytest.raises(ConfigError):
        EndpointRing("tcp://a:1,tcp://b:1", "tcp://a:2")
    with pytest.raises(ValueError):
        split_endpoints(" , ")


def test_retransmissions_are_bounded_and_only_for_older_connections() -> None:
    store = Retransmissions(max_requests=2, max_bytes=1_000)
    assert store.keep("r1", b"T", b"p1", deadline=100.0, generation=0)
    assert store.keep("r2", b"T", b"p2", deadline=5.0, generation=0)
    assert not store.keep("r3", b"T", b"p3", deadline=100.0, generation=0)
    assert store.not_kept == 1
    assert store.due(0, now=10.0) == []  # same connection: nothing to resend
    assert store.due(1, now=10.0) == [(b"T", b"p1")]  # r2's deadline passed
    assert store.due(1, now=10.0) == []  # already resent on this connection
    store.drop("r1")
    store.drop("r2")
    assert len(store) == 0
    assert not Retransmissions(max_requests=10, max_bytes=3).keep("r", b"T", b"ppp", 1.0, 0)


# -- the server's window end to end (in memory) ------------------------------------


async def send_three_copies(tmp_path: Path, recovery_window: float) -> tuple[list[Reply], str]:
    """One request id sent three times: twice while it runs, once after."""
    from skillscale.proxy import Proxy, ProxyConfig

    bus = MemoryBus()
    tally = tmp_path / "tally"
    config = ServerConfig(
        topics=["T"], skills_dirs=[FIXTURE_SKILLS / "failover"], workers=2, executor="cold"
    )
    request = Request(
        request_id="same-id",
        reply_to="AGENT_REPLY_alice",
        intent=json.dumps({"skill": "tally-slow", "data": f"{tally} once 0.3"}),
    )
    got: list[Reply] = []
    async with (
        Proxy(ProxyConfig(metrics_port=None, recovery_window=recovery_window), transport=bus),
        SkillServer(config, transport=bus),
    ):
        sub = bus.subscriber("memory://xpub", [request.reply_to.encode()], hwm=100)
        pub = bus.publisher("memory://xsub", hwm=100)
        try:

            async def collect(count: int, within: float) -> None:
                deadline = time.monotonic() + within
                while len(got) < count and (left := deadline - time.monotonic()) > 0:
                    if await sub.wait_readable(left):
                        got.extend(Reply.from_bytes(bytes(f[1])) for f in sub.drain(10))

            pub.send([b"T", request.to_bytes()])
            await asyncio.sleep(0.1)  # the first copy is running (0.3 s)
            pub.send([b"T", request.to_bytes()])
            await collect(2, 1.0)
            pub.send([b"T", request.to_bytes()])  # after it ran
            await collect(3, 0.5)
        finally:
            sub.close()
            pub.close()
    return got, tally.read_text()


async def test_a_duplicate_runs_once_attached_or_from_the_window(tmp_path: Path) -> None:
    replies, tally = await send_three_copies(tmp_path, recovery_window=0.001)
    assert tally.split() == ["once"], "one request id must run once"
    assert len(replies) == 3 and all(r.ok and r.content == "once" for r in replies)
    assert [bool(r.trace and r.trace.deduplicated) for r in replies] == [False, True, True]


async def test_in_its_recovery_window_the_proxy_sends_one_reply_per_id(tmp_path: Path) -> None:
    replies, tally = await send_three_copies(tmp_path, recovery_window=30.0)
    assert tally.split() == ["once"]
    assert len(replies) == 1 and replies[0].ok


# -- a pair in one process, under CURVE ------------------------------------------------


async def wait_state(proxy: object, state: State, timeout: float = 10.0) -> None:
    from skillscale.proxy import Proxy

    assert isinstance(proxy, Proxy) and proxy.bstar is not None
    deadline = time.monotonic() + timeout
    while proxy.bstar.state is not state:
        proxy.failover_changed.clear()
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"still {proxy.bstar.state}"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proxy.failover_changed.wait(), remaining)


def pair_config(
    ports: tuple[int, int], primary: bool, curve: ProxyCurve | None = None
) -> ProxyConfig:
    """One half of an in-process pair on loopback, peer ``ports`` (primary's first)."""
    from skillscale.proxy import ProxyConfig
    from skillscale.proxy.failover import FailoverConfig

    mine, theirs = ports if primary else ports[::-1]
    return ProxyConfig(
        xsub_bind="tcp://127.0.0.1:0", xpub_bind="tcp://127.0.0.1:0",
        router_bind="tcp://127.0.0.1:0", metrics_port=None, curve=curve,
        failover=FailoverConfig(primary, f"tcp://127.0.0.1:{mine}",
                                f"tcp://127.0.0.1:{theirs}", heartbeat=0.1),
    )  # fmt: skip


@pytest.mark.parametrize("admitted", [True, False])
async def test_a_curve_pair_settles_only_with_its_key_admitted(
    tmp_path: Path, admitted: bool
) -> None:
    import shutil

    from skillscale.core.security import ProxyCurve, generate_keypair
    from skillscale.proxy import Proxy
    from tests.helpers import free_port

    public, secret = generate_keypair(tmp_path / "keys", "proxy")
    (tmp_path / "clients").mkdir()
    (tmp_path / "servers").mkdir()
    if admitted:
        shutil.copy(public, tmp_path / "servers" / "proxy.key")
    curve = ProxyCurve(secret, tmp_path / "clients", tmp_path / "servers")
    ports = free_port(), free_port()

    async with (
        Proxy(pair_config(ports, True, curve)) as primary,
        Proxy(pair_config(ports, False, curve)) as backup,
    ):
        if admitted:
            await wait_state(primary, State.ACTIVE)
            await wait_state(backup, State.PASSIVE)
            gauge = "skillscale_proxy_serving"
            assert primary.metrics.registry.get_sample_value(gauge) == 1
            assert backup.metrics.registry.get_sample_value(gauge) == 0
        else:
            # Neither hears the other: the backup never serves, whatever the time.
            with pytest.raises(AssertionError):
                await wait_state(backup, State.PASSIVE, timeout=1.0)
            assert backup.bstar is not None and not backup.bstar.on_vote(time.monotonic())


def test_recovery_bounds_what_passive_heartbeats_may_make_it_hold() -> None:
    recovery = Recovery(max_keys=3)
    keys = [request_key("AGENT_REPLY_a", f"r{i}") for i in range(4)]
    recovery.note_holding(b"a", keys[:2], serving=False)
    recovery.note_holding(b"b", keys[2:], serving=False)  # over the bound: refused
    recovery.note_holding(b"a", keys[:1], serving=False)  # replaces a's list
    recovery.note_holding(b"c", keys[2:], serving=False)  # now it fits
    recovery.begin(0.0)
    owners = {
        recovery.holder(
            Request(request_id=f"r{i}", reply_to="AGENT_REPLY_a", intent="x").to_bytes()
        )
        for i in range(4)
    }
    assert owners == {b"a", b"c", None}


def test_a_marked_retransmission_waits_for_its_holder_after_a_start() -> None:
    from skillscale.sdk.failover import mark_retransmission

    request = Request(request_id="r1", reply_to="AGENT_REPLY_a", intent="hi").to_bytes()
    marked = mark_retransmission(request)
    assert Request.from_bytes(marked).model_extra == {"retransmit": True}
    assert mark_retransmission(marked) == marked
    recovery = Recovery()
    recovery.begin(0.0)
    assert not recovery.waits(request)  # a first send never waits
    assert recovery.waits(marked)  # nobody claimed it yet
    recovery.note_holding(b"s", [request_key("AGENT_REPLY_a", "r1")], serving=True)
    assert not recovery.waits(marked)
    io = FakeIO()
    groups = ReplicaGroups(io)
    groups.on_heartbeat(b"a", member_state("a"), 0.0)
    groups.defer = lambda payload: payload == b"wait"
    groups.on_request(b"T", b"wait", 0.1, plain_subscriber=False)
    assert io.sent == [] and groups.queue_depth(b"T") == 1
    groups.defer = None
    groups.pump_all(0.2)
    assert [i for i, _ in io.sent] == [b"a"]


async def test_a_passive_half_exports_no_load_even_what_it_kept_after_yielding() -> None:
    """KEDA sums both halves' gauges: a passive proxy must read 0, or the sum
    counts a queue twice (or counts work the passive half will never serve)."""
    from skillscale.proxy import Proxy, ProxyConfig
    from skillscale.proxy.failover import FailoverConfig
    from skillscale.proxy.groups import GroupsConfig
    from tests.helpers import free_port

    peer = FailoverConfig(True, f"tcp://127.0.0.1:{free_port()}",
                          f"tcp://127.0.0.1:{free_port()}", heartbeat=30.0)  # fmt: skip
    config = ProxyConfig(
        xsub_bind="tcp://127.0.0.1:0", xpub_bind="tcp://127.0.0.1:0",
        router_bind="tcp://127.0.0.1:0", metrics_port=None, failover=peer,
        groups=GroupsConfig(no_server_wait=60.0),
    )  # fmt: skip
    request = Request(request_id="r1", reply_to="AGENT_REPLY_a", intent="x").to_bytes()

    def load() -> tuple[float | None, ...]:
        proxy._update_gauges()
        return tuple(
            proxy.metrics.registry.get_sample_value(name, {"topic": "TOPIC_X"})
            for name in ("skillscale_topic_queue_depth", "skillscale_topic_replicas")
        )

    async with Proxy(config) as proxy:
        assert proxy.bstar is not None
        proxy.bstar.state = State.ACTIVE
        proxy.groups.on_request(b"TOPIC_X", request, time.monotonic(), plain_subscriber=False)
        assert proxy.groups.queue_depth(b"TOPIC_X") == 1
        assert load() == (1, 0)  # no replica: held, and counted (KEDA wakes the topic)
        proxy.bstar.state = State.PASSIVE  # the backup yielded after a dual-active split
        assert proxy.groups.queue_depth(b"TOPIC_X") == 1  # still kept inside...
        assert load() == (0, 0)  # ...but not exported


async def test_a_take_over_settles_only_on_heartbeats_sent_after_it() -> None:
    """A server's heartbeat sent before it heard of the take-over (in flight,
    or queued at the router) holds an old list: the dead proxy may have
    given it more since. Settling on it sent those retransmissions to
    another replica, which ran them a second time (a CI failure of
    ``test_sigkill_of_the_active_proxy...[pair-failover]``)."""
    import zmq.asyncio

    from skillscale.core.protocol import PROBE_TOPIC_PREFIX
    from skillscale.core.replica_protocol import HB, VERSION
    from skillscale.proxy import Proxy
    from tests.helpers import free_port

    ports = free_port(), free_port()

    ctx = zmq.asyncio.Context()
    dealer, pub = ctx.socket(zmq.DEALER), ctx.socket(zmq.PUB)
    for sock in (dealer, pub):
        sock.setsockopt(zmq.LINGER, 0)

    async def heartbeat(epoch: str) -> list[bytes]:
        state = ServerState(server_id="srv-a", topics=["T"], slots=1, epoch=epoch)
        await dealer.send_multipart([VERSION, HB, state.to_bytes()])
        return await asyncio.wait_for(dealer.recv_multipart(), 5)  # it answers each one

    try:
        backup = Proxy(pair_config(ports, False))
        async with backup:
            async with Proxy(pair_config(ports, True)) as primary:
                await wait_state(primary, State.ACTIVE)
                await wait_state(backup, State.PASSIVE)
                dealer.connect(backup.router_endpoint)
                before = await heartbeat("")
                assert before[2] == ROLE_PASSIVE
                old_epoch = before[3].decode()
                await heartbeat(old_epoch)
            # The primary is gone; a client's probe votes for the backup.
            pub.connect(backup.xsub_endpoint)
            deadline = time.monotonic() + 10
            while not (backup.bstar is not None and backup.bstar.active):
                assert time.monotonic() < deadline, "the backup never took over"
                await pub.send_multipart([f"{PROBE_TOPIC_PREFIX}x".encode(), b"probe"])
                with contextlib.suppress(asyncio.TimeoutError):
                    backup.failover_changed.clear()
                    await asyncio.wait_for(backup.failover_changed.wait(), 0.05)
            told = await asyncio.wait_for(dealer.recv_multipart(), 5)  # the take-over's HB
            assert told[2] == ROLE_ACTIVE and told[3].decode() != old_epoch
            assert backup.groups.settling
            await heartbeat(old_epoch)  # sent before we heard: not an answer
            assert backup.groups.settling
            await heartbeat(told[3].decode())
            assert not backup.groups.settling
    finally:
        dealer.close(0)
        pub.close(0)
        ctx.term()


async def test_a_server_echoes_each_proxys_epoch_with_its_holding_list_only() -> None:
    """The other half of the settling rule, against a real server process
    given two fake proxies, one passive and one active, that answer each
    heartbeat with the epoch the test sets."""
    import zmq.asyncio

    from skillscale.core.replica_protocol import HB, VERSION
    from tests.helpers import RoleProcess, free_port

    ctx = zmq.asyncio.Context()
    routers = [ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)]
    ports = []
    for router in routers:
        router.setsockopt(zmq.LINGER, 0)
        ports.append(router.bind_to_random_port("tcp://127.0.0.1"))
    roles = [ROLE_PASSIVE, ROLE_ACTIVE]
    told: list[list[bytes]] = [[], []]  # the epoch frame each sends (none while empty)
    seen: list[asyncio.Queue[ServerState]] = [asyncio.Queue(1000), asyncio.Queue(1000)]

    async def fake_proxy(link: int) -> None:
        while True:
            frames = await routers[link].recv_multipart()
            if frames[2] == HB:
                seen[link].put_nowait(ServerState.from_bytes(frames[3]))
                answer = [frames[0], VERSION, HB, roles[link], *told[link][-1:]]
                await routers[link].send_multipart(answer)

    async def heard(link: int, epoch: str) -> None:
        async def until() -> None:
            while (await seen[link].get()).epoch != epoch:
                pass

        await asyncio.wait_for(until(), 10)

    answering = [asyncio.ensure_future(fake_proxy(link)) for link in (0, 1)]
    server: RoleProcess | None = None
    try:
        unused = ",".join(f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
        args = ["server", "--skills-dir", str(FIXTURE_SKILLS / "failover"), "--topic", "T",
                "--proxy-xsub", unused, "--proxy-xpub", unused,
                "--proxy-router", ",".join(f"tcp://127.0.0.1:{p}" for p in ports)]  # fmt: skip
        server = await asyncio.get_running_loop().run_in_executor(None, RoleProcess, *args)
        told[0].append(b"0badc0de")
        told[1].append(b"cafe")
        # Both are new epochs, so both are answered at once with the list (and
        # the epoch); the server holds nothing here, so the list is empty.
        await heard(0, "0badc0de")
        await heard(1, "cafe")
        # After that the passive one hears the list, and its epoch, each
        # heartbeat; the active one neither (a plain heartbeat echoes nothing).
        for link in (0, 1):
            while not seen[link].empty():
                seen[link].get_nowait()
        await heard(0, "0badc0de")
        await heard(1, "")
        told[0].append(b"\xff" * 40)  # not an epoch: never echoed, never a crash
        await heard(0, "")
        told[0].append(b"feed")
        await heard(0, "feed")
        assert server.proc.poll() is None
    finally:
        for task in answering:
            task.cancel()
        await asyncio.gather(*answering, return_exceptions=True)
        if server is not None:
            server.close()
        for router in routers:
            router.close(0)
        ctx.term()
