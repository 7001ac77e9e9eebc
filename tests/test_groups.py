"""Replica-group routing rules, driven without sockets."""

from __future__ import annotations

import json
from collections import Counter

from skillscale.core.errors import ErrorCode
from skillscale.core.replica_protocol import REQ, VERSION, ServerState
from skillscale.proxy.groups import GroupsConfig, Job, ReplicaGroups

T = b"TOPIC_X"


class FakeIO:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, list[bytes]]] = []
        self.published: list[list[bytes]] = []
        self.errors: list[tuple[Job, ErrorCode, str]] = []
        self.unreachable: set[bytes] = set()

    def send_to(self, identity: bytes, frames: list[bytes]) -> bool:
        if identity in self.unreachable:
            return False
        self.sent.append((identity, frames))
        return True

    def publish(self, frames: list[bytes]) -> None:
        self.published.append(frames)

    def reply_error(self, job: Job, code: ErrorCode, message: str) -> None:
        self.errors.append((job, code, message))

    def dispatched_to(self) -> list[bytes]:
        return [identity for identity, _ in self.sent]


def state(
    name: str, slots: int = 2, topics: tuple[str, ...] = ("TOPIC_X",), **kw: object
) -> ServerState:
    return ServerState(server_id=name, topics=list(topics), slots=slots, **kw)  # type: ignore[arg-type]


def payload(rid: str = "r", deadline: float | None = None) -> bytes:
    body: dict[str, object] = {"request_id": rid, "reply_to": "AGENT_REPLY_c", "intent": "x"}
    if deadline is not None:
        body["deadline"] = deadline
    return json.dumps(body).encode()


def make(**config: object) -> tuple[ReplicaGroups, FakeIO]:
    io = FakeIO()
    return ReplicaGroups(io, GroupsConfig(**config)), io  # type: ignore[arg-type]


def test_requests_spread_by_free_capacity() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=2), 0)
    groups.on_heartbeat(b"b", state("b", slots=2), 0)
    for i in range(4):
        assert groups.on_request(T, payload(str(i)), 0, plain_subscriber=False)
    assert Counter(io.dispatched_to()) == {b"a": 2, b"b": 2}
    frames = io.sent[0][1]
    assert frames[:2] == [VERSION, REQ] and frames[3] == T and frames[5] == b"1"


def test_waiting_work_goes_out_as_slots_free() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=1), 0)
    groups.on_request(T, payload("1"), 0, plain_subscriber=False)
    groups.on_request(T, payload("2"), 0, plain_subscriber=False)
    assert len(io.sent) == 1 and groups.queue_depth(T) == 1 and groups.inflight_count(T) == 1
    first_id = io.sent[0][1][2]
    groups.on_reply(b"a", first_id, b"AGENT_REPLY_c", b"{}", 0.1)
    assert io.published == [[b"AGENT_REPLY_c", b"{}"]]
    assert len(io.sent) == 2 and groups.queue_depth(T) == 0 and groups.inflight_count(T) == 1


def test_full_queue_answers_overloaded() -> None:
    groups, io = make(max_queue=2)
    groups.on_heartbeat(b"a", state("a", slots=1), 0)
    for i in range(4):
        groups.on_request(T, payload(str(i)), 0, plain_subscriber=False)
    assert [code for _, code, _ in io.errors] == [ErrorCode.OVERLOADED]
    assert groups.queue_depth(T) == 2


def test_total_waiting_work_is_bounded_across_topics() -> None:
    groups, io = make(max_queued_total=5, no_server_wait=1.0)
    for i in range(8):
        groups.on_request(f"TOPIC_{i}".encode(), payload(str(i)), 0, plain_subscriber=False)
    assert groups.queued == 5 and len(io.errors) == 3
    groups.tick(2.0)  # all five answered no_server; nothing is left behind
    assert groups.queued == 0 and groups.queues == {}
    assert [c for _, c, _ in io.errors].count(ErrorCode.NO_SERVER) == 5


def test_plain_subscribers_keep_pub_sub() -> None:
    groups, io = make()
    assert not groups.on_request(T, payload(), 0, plain_subscriber=True)
    assert groups.queue_depth(T) == 0 and not io.errors


def test_no_server_after_the_wait_and_late_joiner_within_it() -> None:
    groups, io = make(no_server_wait=1.0)
    groups.on_request(T, payload("early"), 0, plain_subscriber=False)
    groups.tick(0.5)
    assert not io.errors
    groups.on_heartbeat(b"a", state("a"), 0.6)
    assert len(io.sent) == 1  # the server that arrived within the wait got it
    groups.on_request(b"TOPIC_NONE", payload("lost"), 1.0, plain_subscriber=False)
    groups.tick(1.9)
    assert not io.errors
    groups.tick(2.1)
    assert [code for _, code, _ in io.errors] == [ErrorCode.NO_SERVER]
    assert "TOPIC_NONE" in io.errors[0][2]


def test_dead_replica_work_is_redelivered_once_and_duplicates_dropped() -> None:
    groups, io = make(heartbeat_timeout=3.0)
    groups.on_heartbeat(b"a", state("a", slots=1), 0)
    groups.on_heartbeat(b"b", state("b", slots=1), 0)
    groups.on_request(T, payload("1"), 0, plain_subscriber=False)
    victim, frames = io.sent[0]
    survivor = b"b" if victim == b"a" else b"a"
    dispatch_id = frames[2]
    groups.on_heartbeat(survivor, state(survivor.decode(), slots=1), 2.5)
    groups.tick(3.5)  # the victim has been silent for 3.5 s
    assert groups.replica_count(T) == 1 and groups.redelivered == 1
    redelivered_to, frames = io.sent[1]
    assert redelivered_to == survivor and frames[2] == dispatch_id and frames[5] == b"2"
    groups.on_reply(survivor, dispatch_id, b"AGENT_REPLY_c", b"first", 4)
    groups.on_reply(victim, dispatch_id, b"AGENT_REPLY_c", b"late", 4)
    assert io.published == [[b"AGENT_REPLY_c", b"first"]]
    assert groups.duplicates_dropped == 1
    assert groups.inflight_count(T) == 0 and groups.inflight == {}


def test_attempts_are_bounded() -> None:
    groups, io = make(max_attempts=2, heartbeat_timeout=1.0)
    groups.on_heartbeat(b"a", state("a", slots=1), 0)
    groups.on_request(T, payload(), 0, plain_subscriber=False)
    groups.tick(2)  # a dies: back in the queue, parked for a new replica
    groups.on_heartbeat(b"b", state("b", slots=1), 2)
    groups.tick(4)  # b dies too
    assert [code for _, code, _ in io.errors] == [ErrorCode.EXEC_FAILED]
    assert "2 deliveries" in io.errors[0][2] and "a, b" in io.errors[0][2]


def test_handed_back_work_goes_to_another_replica() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=1), 0)
    groups.on_request(T, payload(), 0, plain_subscriber=False)
    dispatch_id = io.sent[0][1][2]
    groups.on_heartbeat(b"a", state("a", slots=1, draining=True), 1)
    groups.on_return(b"a", dispatch_id, 1)
    assert len(io.sent) == 1 and groups.queue_depth(T) == 1  # a is draining
    groups.on_heartbeat(b"b", state("b", slots=1), 1)
    assert io.sent[1][0] == b"b" and io.sent[1][1][2] == dispatch_id


def test_expired_deadlines_are_never_dispatched() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=1), 0)
    groups.on_request(T, payload("1"), 0, plain_subscriber=False)
    groups.on_request(T, payload("2", deadline=5.0), 0, plain_subscriber=False)
    groups.on_heartbeat(b"a", state("a", slots=1), 5.5)
    groups.tick(6)
    assert [code for _, code, _ in io.errors] == [ErrorCode.DEADLINE_EXCEEDED]
    assert groups.queue_depth(T) == 0


def test_unreachable_replica_is_dropped_and_work_rerouted() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=1), 0)
    groups.on_heartbeat(b"b", state("b", slots=1), 0)
    io.unreachable.add(b"a")
    io.unreachable.add(b"b")
    groups.on_request(T, payload(), 0, plain_subscriber=False)
    assert groups.replica_count(T) == 0 and groups.queue_depth(T) == 1


def test_bye_and_topic_changes() -> None:
    groups, _ = make()
    groups.on_heartbeat(b"a", state("a", topics=("TOPIC_X", "TOPIC_Y")), 0)
    assert groups.serves(b"TOPIC_Y")
    groups.on_heartbeat(b"a", state("a", topics=("TOPIC_X",)), 1)
    assert not groups.serves(b"TOPIC_Y")
    groups.on_bye(b"a", 2)
    assert not groups.serves(T) and groups.members == {}


def test_replies_from_before_a_proxy_restart_are_still_published() -> None:
    groups, io = make()
    groups.on_reply(b"a", b"olderepoch-7", b"AGENT_REPLY_c", b"{}", 0)
    assert io.published == [[b"AGENT_REPLY_c", b"{}"]]


# -- hostile input and failure cascades (issue 8) ---------------------------------


def test_deadlines_that_break_parsing_mean_no_deadline() -> None:
    from skillscale.proxy.groups import job_deadline

    nested = b'{"deadline":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    for raw in (b'{"deadline":' + b"1" * 400 + b"}", nested, b'{"deadline":NaN}',
                b'{"deadline":true}', b"[1]", b"\xff", b'{"deadline":-1e999}'):  # fmt: skip
        assert job_deadline(raw) is None
    assert job_deadline(b'{"deadline": 12.5}') == 12.5


def test_a_whole_node_failing_does_not_recurse() -> None:
    groups, io = make(max_attempts=1000)
    for i in range(450):
        name = f"r{i}".encode()
        groups.on_heartbeat(name, state(f"r{i}", slots=2), 0)
    for i in range(450):
        groups.on_request(T, payload(f"q{i}"), 0, plain_subscriber=False)
    assert len(groups.inflight) == 450
    # Every replica is gone: each removal re-dispatches work to the next,
    # whose send fails too (the chain that used to recurse 450 deep).
    io.unreachable = {f"r{i}".encode() for i in range(450)}
    # Each has a free slot: every removal re-dispatches its job to another
    # replica, whose send fails, which removes it, and so on.
    groups.on_bye(b"r0", 1)
    assert not groups.members
    assert groups.queued == 450 and not groups.inflight


def test_only_the_owner_may_answer_or_hand_back() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=1), 0)
    groups.on_heartbeat(b"b", state("b", slots=1), 0)
    groups.on_request(T, payload("q"), 0, plain_subscriber=False)
    owner = io.dispatched_to()[0]
    other = b"b" if owner == b"a" else b"a"
    dispatch_id = io.sent[0][1][2]
    groups.on_return(other, dispatch_id, 1)
    groups.on_reply(other, dispatch_id, b"AGENT_REPLY_c", b"forged", 1)
    assert io.published == [] and groups.foreign_dropped == 2
    assert groups.members[owner].free == 0  # the owner's slot is still counted, once
    groups.on_reply(owner, dispatch_id, b"AGENT_REPLY_c", b"real", 1)
    assert io.published == [[b"AGENT_REPLY_c", b"real"]]
    assert groups.members[owner].free == 1


def test_waiting_bytes_are_capped() -> None:
    groups, io = make(max_queued_bytes=1000)
    big = b"x" * 600
    assert groups.on_request(T, big, 0, plain_subscriber=False)
    assert groups.on_request(T, big, 0, plain_subscriber=False)
    assert groups.queued == 1 and groups.queued_bytes == 600
    assert [code for _, code, _ in io.errors] == [ErrorCode.OVERLOADED]


def test_heartbeat_boundary_rejects_what_would_break_routing() -> None:
    import pytest

    bad = [
        b'{"server_id":"a","topics":[],"slots":1,"busy":null}',
        b'{"server_id":"a","topics":["T"],"slots":1,"skills":5}',
        b'{"server_id":"a","topics":["T"],"slots":Infinity}',
        b'{"server_id":"a","topics":["T"],"slots":true}',
        b'{"server_id":"a\\nb","topics":["T"],"slots":1}',
        b'{"server_id":"a","topics":' + json.dumps(["T"] * 65).encode() + b',"slots":1}',
        b'{"server_id":"a","topics":' + b"[" * 100_000 + b"]" * 100_000 + b',"slots":1}',
        b"x" * 300_000,
    ]
    for raw in bad:
        with pytest.raises(ValueError):
            ServerState.from_bytes(raw)
    ok = ServerState.from_bytes(b'{"server_id":"a","topics":["TOPIC_X"],"slots":2,"extra":1}')
    assert ok.slots == 2


def test_subscription_table_is_bounded_and_matches_prefixes() -> None:
    from skillscale.proxy.subscriptions import Subscriptions

    subs = Subscriptions(max_total=5, max_per_peer=2, server_filter=(b"AGENT_REPLY_",))
    assert subs.subscribe(b"TOPIC_A", "key1") and subs.subscribe(b"TOPIC_B", "key1")
    assert not subs.subscribe(b"TOPIC_C", "key1")  # per authenticated peer
    assert subs.subscribe(b"AGENT_REPLY_x", None) and subs.subscribe(b"", None)
    assert subs.subscribe(b"TOPIC_D", None)
    assert not subs.subscribe(b"TOPIC_E", None)  # in all
    assert not subs.subscribe(b"T" * 300, None)
    assert subs.all.matches(b"anything")  # the empty prefix
    assert subs.servers.matches(b"TOPIC_A_V2") and not subs.servers.matches(b"AGENT_REPLY_x")
    assert subs.unsubscribe(b"TOPIC_A") and subs.subscribe(b"TOPIC_C", "key1")
    assert subs.saturated


def test_no_server_suggests_the_served_topic_a_typo_meant() -> None:
    groups, io = make(no_server_wait=1.0)
    groups.on_heartbeat(b"a", state("a", topics=("TOPIC_DATA_PROCESSING",)), 0)
    groups.on_request(b"TOPIC_DATA_PROCESING", payload("typo"), 0, plain_subscriber=False)
    groups.on_request(b"TOPIC_WEATHER", payload("other"), 0, plain_subscriber=False)
    groups.on_heartbeat(b"a", state("a", topics=("TOPIC_DATA_PROCESSING",)), 1.5)
    groups.tick(1.5)
    messages = sorted(message for _, code, message in io.errors if code is ErrorCode.NO_SERVER)
    assert len(messages) == 2
    assert "did you mean TOPIC_DATA_PROCESSING?" in messages[0]
    assert "served topics: TOPIC_DATA_PROCESSING" in messages[1]


# -- the inline lane ------------------------------------------------------------


def modes(io: FakeIO) -> list[bytes]:
    return [frames[7] for _, frames in io.sent]


def test_the_lane_opens_one_inline_reply_at_a_time_up_to_what_was_announced() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=1, inline_slots=2), 0)
    for i in range(6):
        groups.on_request(T, payload(f"r{i}"), 0, plain_subscriber=False)
    assert modes(io) == [b""], "closed until the replica shows it answers inline"
    ids = [frames[2] for _, frames in io.sent]
    groups.on_reply(b"a", ids[0], b"AGENT_REPLY_c", b"{}", 1, inline=True)
    assert modes(io) == [b"", b"", b"lane"]  # its slot again, and one more on the lane
    groups.on_reply(b"a", io.sent[1][1][2], b"AGENT_REPLY_c", b"{}", 1, inline=True)
    assert groups.members[b"a"].lane == 2
    # r2, still out, now counts in the one worker slot: both new ones ride the lane.
    assert modes(io)[3:] == [b"lane", b"lane"]
    groups.on_reply(b"a", io.sent[2][1][2], b"AGENT_REPLY_c", b"{}", 1, inline=True)
    assert groups.members[b"a"].lane == 2, "never past the announced inline_slots"
    assert len(groups.members[b"a"].inflight) == 3  # 1 worker slot + 2 on the lane
    # A worker's reply (not inline) frees its slot and leaves the lane as it is.
    groups.on_reply(b"a", io.sent[3][1][2], b"AGENT_REPLY_c", b"{}", 1)
    assert groups.members[b"a"].lane == 2 and len(groups.members[b"a"].inflight) == 2
    assert len(io.sent) == 6 and not groups.queues[T]


def test_a_busy_hand_back_is_no_delivery_and_goes_back_to_its_place() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=1, inline_slots=4), 0)
    groups.members[b"a"].lane = 4
    for i in range(5):
        groups.on_request(T, payload(f"r{i}"), 0, plain_subscriber=False)
    groups.on_request(T, payload("late1"), 0, plain_subscriber=False)  # waits: no room
    groups.on_request(T, payload("late2"), 0, plain_subscriber=False)
    assert modes(io) == [b"", b"lane", b"lane", b"lane", b"lane"]
    lane_ids = [frames[2] for _, frames in io.sent[1:]]
    for did in lane_ids[:3]:  # handed back in the order they went out
        groups.on_return(b"a", did, 1, busy=True)
    member = groups.members[b"a"]
    assert member.lane == 0 and groups.bounced == 3 and groups.redelivered == 0
    waiting = [json.loads(job.payload)["request_id"] for job in groups.queues[T]]
    assert waiting == ["r1", "r2", "r3", "late1", "late2"], "arrival order kept"
    assert all(job.attempt == 0 and job.history == [] for job in groups.queues[T])
    # The lane is shut: only its worker slot takes work again, once r0 and r4
    # (still out) have answered.
    sent = len(io.sent)
    groups.on_reply(b"a", io.sent[0][1][2], b"AGENT_REPLY_c", b"{}", 2)
    assert len(io.sent) == sent
    groups.on_reply(b"a", io.sent[4][1][2], b"AGENT_REPLY_c", b"{}", 2)
    assert len(io.sent) == sent + 1
    assert io.sent[-1][1][5] == b"1" and io.sent[-1][1][7] == b"", "first delivery, no lane"
    assert json.loads(io.sent[-1][1][4])["request_id"] == "r1"


def test_a_free_worker_slot_wins_over_a_wider_lane() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=2, inline_slots=32), 0)
    groups.on_heartbeat(b"b", state("b", slots=2, inline_slots=32), 0)
    groups.members[b"a"].lane = 32
    for i in range(2):  # a's worker slots fill first: it has the most room
        groups.on_request(T, payload(f"r{i}"), 0, plain_subscriber=False)
    assert io.dispatched_to() == [b"a", b"a"]
    groups.on_request(T, payload("r2"), 0, plain_subscriber=False)
    assert io.dispatched_to()[-1] == b"b", "b has a free worker; a only its lane"
    assert modes(io) == [b"", b"", b""]


def test_a_retransmission_sent_to_its_holder_never_rides_the_lane() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=1, inline_slots=4), 0)
    groups.members[b"a"].lane = 4
    groups.on_request(T, payload("r0"), 0, plain_subscriber=False)
    groups.prefer = lambda _payload: b"a"
    groups.on_request(T, payload("held"), 0, plain_subscriber=False)
    assert modes(io) == [b"", b""], "sent to its holder beyond the slots: no lane"


def test_servers_without_the_lane_keep_their_slots() -> None:
    groups, io = make()
    groups.on_heartbeat(b"a", state("a", slots=2), 0)  # an older server: no inline_slots
    for i in range(4):
        groups.on_request(T, payload(f"r{i}"), 0, plain_subscriber=False)
    groups.on_reply(b"a", io.sent[0][1][2], b"AGENT_REPLY_c", b"{}", 1, inline=True)
    assert len(groups.members[b"a"].inflight) == 2 and modes(io) == [b"", b"", b""]
