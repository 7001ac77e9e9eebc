"""Replica groups: which server of a topic runs each request, and what if it dies.

A pure state machine, free of sockets: the proxy feeds it events (a request
arrived, a heartbeat, a reply, a hand-back, a clock tick) and it answers
through a small :class:`GroupIO` (send frames to a server, publish a reply,
answer a request with an error). That keeps every routing rule unit-testable.

Rules:

* A request for a topic with live replicas goes to a replica with a free
  worker slot if there is one, else to one with room in its inline lane; among
  those, to the one with the most room (ties: the one used least recently).
  With no room anywhere it waits in the topic's bounded queue; a full queue
  answers ``overloaded``.
* The inline lane (see ``skillscale.core.replica_protocol``): each reply a
  replica marks ``inline`` lets one more dispatch beyond its worker slots, up
  to the ``inline_slots`` it announced; a lane dispatch it hands back ``busy``
  takes that allowance back to zero and returns to its place in the queue,
  not counted as a delivery.
* A request for a topic with no replica and no plain subscriber is parked for
  ``no_server_wait`` seconds (per topic: ``no_server_wait_topics``, e.g. long
  enough for an autoscaler to start a first pod); a replica announcing the
  topic in that time gets it, otherwise the caller gets ``no_server``. Parked
  requests count in the topic's queue depth, which is what wakes a topic
  scaled to zero.
* A replica silent for ``heartbeat_timeout`` seconds is dead: its in-flight
  requests go back to the front of their queues, up to ``max_attempts``
  deliveries each; the first reply for a dispatch wins and later ones are
  dropped, so a caller gets exactly one reply.
* Work whose caller's deadline passed is never dispatched; the caller (if
  still listening) is told ``deadline_exceeded``.
* Only the replica a job was dispatched to may answer it or hand it back;
  a reply or ``RETURN`` from any other peer is dropped and counted.
* Everything is bounded: members, topics, waiting jobs per topic and in all,
  and the bytes of waiting payloads.

Removing a replica may re-dispatch its work to another replica whose send
fails, which removes that one too, and so on (a whole node failing). That
chain is walked with a work list, never by recursion.
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import math
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from skillscale.core.errors import ErrorCode
from skillscale.core.replica_protocol import LANE, REQ, VERSION, ServerState

log = logging.getLogger(__name__)


@dataclass
class GroupsConfig:
    """Durations in seconds."""

    heartbeat_timeout: float = 3.0
    no_server_wait: float = 5.0
    no_server_wait_topics: dict[str, float] = field(default_factory=dict)
    """Per-topic ``no_server_wait`` (topic name -> seconds), overriding the default."""
    max_queue: int = 1000
    """Waiting requests per topic before ``overloaded``."""
    max_queued_total: int = 20_000
    """Waiting requests over all topics (many topics with no server, say)."""
    max_queued_bytes: int = 64 * 1024 * 1024
    """Payload bytes of waiting requests over all topics before ``overloaded``."""
    max_attempts: int = 3
    """Deliveries of one request before giving up on it."""
    max_members: int = 10_000
    max_topics: int = 1_000
    """Distinct topics with replicas or waiting work; more are refused."""


@dataclass
class Job:
    """One request routed through a replica group."""

    # (Plain typed fields, like the event models': alike in shape only.)
    dispatch_id: bytes
    topic: bytes
    payload: bytes
    arrived: float
    deadline: float | None = None
    parked_until: float | None = None
    """Set while no replica serves the topic: when to answer ``no_server``."""
    attempt: int = 0
    seq: int = 0
    """Arrival order at this proxy (a lane dispatch handed back ``busy`` goes
    back to its place by it)."""
    member: bytes | None = None
    history: list[str] = field(default_factory=list)
    """Server ids that were given this job and lost it."""


@dataclass
class Member:
    """A live replica."""

    identity: bytes
    state: ServerState
    last_seen: float
    inflight: dict[bytes, Job] = field(default_factory=dict)
    last_used: int = 0
    unreachable: bool = False
    """A send to it failed: it gets no more work and is removed shortly."""
    settled: bool = True
    """False from its first heartbeat to its second when it joined while
    :attr:`ReplicaGroups.admit_unsettled`: it has not said what it holds yet."""
    lane: int = 0
    """Dispatches allowed beyond its worker slots, learned from its replies
    marked ``inline`` (at most ``state.inline_slots``)."""

    @property
    def free(self) -> int:
        """Dispatches the proxy may still send it: worker slots and lane."""
        if self.state.draining or self.unreachable or not self.settled:
            return 0
        return self.state.slots + min(self.lane, self.state.inline_slots) - len(self.inflight)

    @property
    def workers_free(self) -> bool:
        """A dispatch now would be within its worker slots."""
        return len(self.inflight) < self.state.slots


class GroupIO(Protocol):
    """What the state machine needs from the proxy."""

    def send_to(self, identity: bytes, frames: list[bytes]) -> bool:
        """Send to a replica; False if it is unreachable."""

    def publish(self, frames: list[bytes]) -> None:
        """Publish a reply onto the bus (XPUB)."""

    def reply_error(self, job: Job, code: ErrorCode, message: str) -> None:
        """Answer the job's caller with an error."""


def job_deadline(payload: bytes) -> float | None:
    """The caller's ``deadline`` from a request payload, if present and valid.

    Untrusted bytes: any JSON at all may arrive here (a 400-digit number
    overflows ``float``, a deeply nested value exhausts the recursion limit),
    so every failure means "no deadline", never an exception.
    """
    try:
        data = json.loads(payload)
        value = data.get("deadline") if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        deadline = float(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    return deadline if math.isfinite(deadline) else None


class ReplicaGroups:
    """Members, per-topic queues and in-flight dispatches."""

    def __init__(self, io: GroupIO, config: GroupsConfig | None = None) -> None:
        self.io = io
        self.config = config or GroupsConfig()
        self.members: dict[bytes, Member] = {}
        self.by_topic: dict[bytes, set[bytes]] = {}
        self.queues: dict[bytes, deque[Job]] = {}
        self.inflight: dict[bytes, Job] = {}
        self._epoch = secrets.token_hex(4).encode()
        self._ids = itertools.count(1)
        self._uses = itertools.count(1)
        self.duplicates_dropped = 0
        self.foreign_dropped = 0
        """Replies and hand-backs from a peer that does not own the job."""
        self.queued = 0
        """Requests waiting over all topics."""
        self.queued_bytes = 0
        """Payload bytes of the requests waiting over all topics."""
        self._unreachable: list[bytes] = []
        # Gauges read these every tick: kept as counts, not recounted.
        self._inflight_by_topic: Counter[bytes] = Counter()
        self.redelivered = 0
        self.bounced = 0
        """Lane dispatches handed back ``busy``."""
        self.admit_unsettled = False
        """Set by a proxy in its recovery window: a replica joining now gets work
        from its second heartbeat on (the first answer asks what it holds)."""
        self.settling = False
        """Set for a moment after a proxy take-over: requests wait (unless
        :attr:`prefer` names their replica) until every replica has said
        what it holds, then :meth:`settle` dispatches them."""
        self.defer: Callable[[bytes], bool] | None = None
        """Set for a moment after a proxy start: True for a request that must
        wait for its replica to rejoin (a retransmission nobody holds yet)."""
        self.prefer: Callable[[bytes], bytes | None] | None = None
        """Set after a proxy take-over: the replica already holding a request
        (payload -> identity), which gets it whatever its free slots."""

    # -- queries ---------------------------------------------------------------

    def no_server_wait(self, topic: bytes) -> float:
        """Seconds a request of ``topic`` waits for a first replica."""
        waits = self.config.no_server_wait_topics
        if waits:
            wait = waits.get(topic.decode(errors="replace"))
            if wait is not None:
                return wait
        return self.config.no_server_wait

    def serves(self, topic: bytes) -> bool:
        """True if a live replica announced ``topic``."""
        return bool(self.by_topic.get(topic))

    def queue_depth(self, topic: bytes) -> int:
        """Requests of ``topic`` waiting for a slot (or for a first replica)."""
        queue = self.queues.get(topic)
        return len(queue) if queue else 0

    def inflight_count(self, topic: bytes) -> int:
        """Requests of ``topic`` dispatched and not yet answered."""
        return self._inflight_by_topic.get(topic, 0)

    def replica_count(self, topic: bytes) -> int:
        """Live replicas of ``topic``."""
        return len(self.by_topic.get(topic, ()))

    def topics(self) -> set[bytes]:
        """Every topic with replicas, waiting work or work in flight."""
        return (
            set(self.by_topic)
            | {t for t, q in self.queues.items() if q}
            | set(self._inflight_by_topic)
        )

    # -- events ----------------------------------------------------------------

    def on_request(
        self, topic: bytes, payload: bytes, now: float, *, plain_subscriber: bool
    ) -> bool:
        """Route a request; False if it is left to plain pub/sub subscribers."""
        if not self.serves(topic) and plain_subscriber:
            return False
        seq = next(self._ids)
        job = Job(self._epoch + b"-" + str(seq).encode(), topic, payload, now, seq=seq)
        if self.serves(topic):
            member, lane = self._choose(topic, payload)
            if member is not None:
                self._dispatch(job, member, lane=lane)
                self._reap(now)
                return True
        cfg = self.config
        queue = self.queues.get(topic)
        depth = len(queue) if queue else 0
        if queue is None and len(self.queues) >= cfg.max_topics:
            reason = f"{len(self.queues)} topics already have waiting requests"
        elif depth >= cfg.max_queue or self.queued >= cfg.max_queued_total:
            reason = f"{depth} requests waiting ({self.queued} on all topics)"
        elif self.queued_bytes + len(payload) > cfg.max_queued_bytes:
            reason = f"{self.queued_bytes} bytes of requests waiting"
        else:
            # Only waiting work pays for parsing its deadline.
            job.deadline = job_deadline(payload)
            self._enqueue(job, now)
            return True
        self.io.reply_error(
            job,
            ErrorCode.OVERLOADED,
            f"{topic.decode(errors='replace')}: {reason}; retry later",
        )
        return True

    def on_heartbeat(self, identity: bytes, state: ServerState, now: float) -> None:
        """A replica is alive; (re)register it and give it waiting work."""
        member = self.members.get(identity)
        if member is None:
            if len(self.members) >= self.config.max_members:
                log.warning("ignoring replica %r: %d members already", identity, len(self.members))
                return
            member = Member(identity, state, now, settled=not self.admit_unsettled)
            self.members[identity] = member
            log.info("replica %s joined for %s", state.server_id, ", ".join(state.topics))
        else:
            for topic in set(member.state.topics) - set(state.topics):
                self._leave_topic(topic.encode(), identity, now)
            member.last_seen = now
            member.settled = True
        topics = []
        for name in state.topics:
            key = name.encode()
            if key not in self.by_topic and len(self.by_topic) >= self.config.max_topics:
                log.warning("replica %s: topic %s refused: %d topics served already",
                            state.server_id, name, len(self.by_topic))  # fmt: skip
                continue
            self.by_topic.setdefault(key, set()).add(identity)
            topics.append(name)
        # The member's state lists only the topics it was admitted to.
        member.state = (
            state
            if len(topics) == len(state.topics)
            else state.model_copy(update={"topics": topics})
        )
        for name in topics:
            self._pump(name.encode(), now)
        self._reap(now)

    def on_reply(self, identity: bytes, dispatch_id: bytes, reply_to: bytes, payload: bytes,
                 now: float, *, inline: bool = False) -> None:  # fmt: skip
        """The one reply for a dispatch: publish it unless it is a duplicate.

        ``reply_to`` must already be checked by the caller to be a reply topic.
        ``inline``: the replica answered it without a worker (its lane grows).
        """
        job = self.inflight.get(dispatch_id)
        if job is None:
            if dispatch_id.startswith(self._epoch + b"-"):
                self.duplicates_dropped += 1  # an earlier attempt already answered
                return
            # Dispatched by a proxy before a restart: nobody else will answer it.
            # (Its server may not have sent this proxy a heartbeat yet; under
            # CURVE only server keys reach this socket at all.)
            if reply_to:
                self.io.publish([reply_to, payload])
            return
        if job.member != identity:
            self.foreign_dropped += 1
            log.warning("dropped a reply for %s from %r, which does not own it",
                        dispatch_id.decode(errors="replace"), identity)  # fmt: skip
            return
        self._pop_inflight(dispatch_id)
        member = self.members.get(identity)
        if member is not None:
            member.inflight.pop(dispatch_id, None)
            if inline and member.lane < member.state.inline_slots:
                member.lane += 1
        if reply_to:
            self.io.publish([reply_to, payload])
        if member is not None:
            member.last_seen = now
            for topic in member.state.topics:
                self._pump(topic.encode(), now)
        self._reap(now)

    def on_return(self, identity: bytes, dispatch_id: bytes, now: float, *,
                  busy: bool = False) -> None:  # fmt: skip
        """A replica hands a job back: queue it for another.

        ``busy``: a lane dispatch that found every worker taken. It was never
        started, so it is no delivery: it goes back to its place in the queue,
        and the replica's lane closes until its inline replies open it again.
        """
        job = self.inflight.get(dispatch_id)
        if job is None:
            return
        if job.member != identity:
            self.foreign_dropped += 1
            return
        self._pop_inflight(dispatch_id)
        member = self.members.get(identity)
        server_id = identity.decode(errors="replace")
        if member is not None:
            member.inflight.pop(dispatch_id, None)
            server_id = member.state.server_id
            if busy:
                member.lane = 0
        if busy:
            self.bounced += 1
            job.attempt -= 1
            job.member = None
            self._reinsert(job, now)
        else:
            self._requeue(job, server_id, now, reason="handed back")
        self._pump(job.topic, now)
        self._reap(now)

    def lost(self, identity: bytes, now: float) -> None:
        """A send the proxy made later (a batch) found ``identity`` unreachable:
        it is removed, and its work goes elsewhere."""
        member = self.members.get(identity)
        if member is not None:
            self._mark_unreachable(member)
        self._reap(now)

    def on_bye(self, identity: bytes, now: float) -> None:
        """A replica leaves at once."""
        self._remove(identity, "left", now)
        self._reap(now)

    def tick(self, now: float) -> None:
        """Housekeeping: dead replicas, ``no_server`` and passed deadlines."""
        timeout = self.config.heartbeat_timeout
        for identity in [i for i, m in self.members.items() if now - m.last_seen > timeout]:
            self._remove(identity, f"silent for more than {timeout:g} s", now)
        for topic, queue in list(self.queues.items()):
            if not queue:
                del self.queues[topic]
                continue
            keep: deque[Job] = deque()
            for job in queue:
                if job.deadline is not None and job.deadline <= now:
                    self.io.reply_error(
                        job, ErrorCode.DEADLINE_EXCEEDED,
                        "the caller's deadline passed while the request waited for a replica",
                    )  # fmt: skip
                elif job.parked_until is not None and job.parked_until <= now:
                    self.io.reply_error(
                        job,
                        ErrorCode.NO_SERVER,
                        f"no skill server serves {topic.decode(errors='replace')} "
                        f"(waited {self.no_server_wait(topic):g} s){self._suggest(topic)}",
                    )
                else:
                    keep.append(job)
                    continue
                self.queued -= 1
                self.queued_bytes -= len(job.payload)
            if keep:
                self.queues[topic] = keep
            else:
                del self.queues[topic]  # topics with nothing waiting cost nothing
        self._reap(now)

    # -- internals -------------------------------------------------------------

    def _suggest(self, topic: bytes) -> str:
        """ "; did you mean X?" for a topic close to one that is served (a typo)."""
        served = [t.decode(errors="replace") for t in self.by_topic]
        close = difflib.get_close_matches(topic.decode(errors="replace"), served, n=1)
        if close:
            return f"; did you mean {close[0]}?"
        if served:
            return "; served topics: " + ", ".join(sorted(served)[:10])
        return ""

    def _enqueue(self, job: Job, now: float, *, front: bool = False) -> None:
        if job.parked_until is None and not self.serves(job.topic):
            job.parked_until = now + self.no_server_wait(job.topic)
        queue = self.queues.setdefault(job.topic, deque())
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)
        self.queued += 1
        self.queued_bytes += len(job.payload)

    def _reinsert(self, job: Job, now: float) -> None:
        """Back into the queue at its arrival place (before later arrivals)."""
        if job.deadline is None:
            job.deadline = job_deadline(job.payload)
        self._enqueue(job, now, front=True)
        queue = self.queues[job.topic]
        # Lane dispatches come back in the order they went out, each put in
        # front: walk it back past the earlier arrivals bounced before it.
        i = 0
        while i + 1 < len(queue) and queue[i + 1].seq < job.seq:
            queue[i], queue[i + 1] = queue[i + 1], queue[i]
            i += 1

    def _leave_topic(self, topic: bytes, identity: bytes, now: float) -> None:
        members = self.by_topic.get(topic)
        if members is not None:
            members.discard(identity)
            if not members:
                del self.by_topic[topic]
                # Everything still waiting for a slot now waits for a first
                # replica, with the same no_server deadline as new requests.
                parked_until = now + self.no_server_wait(topic)
                for job in self.queues.get(topic, ()):
                    if job.parked_until is None:
                        job.parked_until = parked_until

    def _pop_inflight(self, dispatch_id: bytes) -> Job | None:
        job = self.inflight.pop(dispatch_id, None)
        if job is not None:
            self._inflight_by_topic[job.topic] -= 1
            if not self._inflight_by_topic[job.topic]:
                del self._inflight_by_topic[job.topic]
        return job

    def _choose(self, topic: bytes, payload: bytes) -> tuple[Member | None, bool]:
        """The replica for a request now (None: it waits), and whether it may
        ride the lane (not when sent to the replica holding it)."""
        member = self._preferred(topic, payload) if self.prefer is not None else None
        if member is not None:
            return member, False
        if self.defer is not None and self.defer(payload):
            return None, True
        return self._pick(topic), True

    def _preferred(self, topic: bytes, payload: bytes) -> Member | None:
        """The replica that holds this retransmitted request, if live and serving it."""
        assert self.prefer is not None
        identity = self.prefer(payload)
        member = self.members.get(identity) if identity is not None else None
        if member is None or member.unreachable or identity not in self.by_topic.get(topic, ()):
            return None
        return member

    def settle(self, now: float) -> None:
        """End :attr:`settling`: dispatch what waited."""
        self.settling = False
        self.pump_all(now)

    def pump_all(self, now: float) -> None:
        """Dispatch what waits on every topic, as far as slots allow."""
        for topic in list(self.queues):
            self._pump(topic, now)
        self._reap(now)

    def _pick(self, topic: bytes) -> Member | None:
        if self.settling:
            return None
        best: Member | None = None
        best_key = (False, 0, 0)
        for identity in self.by_topic.get(topic, ()):
            member = self.members[identity]
            free = member.free
            if free <= 0:
                continue
            # A free worker slot first: a lane dispatch may come back busy.
            key = (member.workers_free, free, -member.last_used)
            if best is None or key > best_key:
                best, best_key = member, key
        return best

    def _dispatch(self, job: Job, member: Member, *, lane: bool = True) -> None:
        """Send ``job`` to ``member``; ``lane=False`` (a retransmission sent to
        the replica holding it, whatever its room) never rides the lane, which
        could hand it back ``busy`` to be sent there again."""
        job.attempt += 1
        job.member = member.identity
        job.parked_until = None
        member.inflight[job.dispatch_id] = job
        member.last_used = next(self._uses)
        self.inflight[job.dispatch_id] = job
        self._inflight_by_topic[job.topic] += 1
        # The job counts in the member's inflight already: beyond its worker
        # slots, it rides the lane.
        frames = [
            VERSION,
            REQ,
            job.dispatch_id,
            job.topic,
            job.payload,
            str(job.attempt).encode(),
            ",".join(job.history).encode(),
            LANE if lane and len(member.inflight) > member.state.slots else b"",
        ]
        if not self.io.send_to(member.identity, frames):
            self._mark_unreachable(member)

    def _mark_unreachable(self, member: Member) -> None:
        """A send to it failed: no more work for it; :meth:`_reap` removes it,
        outside the call chain that found it (see the module doc)."""
        if not member.unreachable:
            member.unreachable = True
            self._unreachable.append(member.identity)

    def _reap(self, now: float) -> None:
        """Remove replicas found unreachable; their work may find others so."""
        while self._unreachable:
            self._remove(self._unreachable.pop(), "unreachable", now)

    def _pump(self, topic: bytes, now: float) -> None:
        queue = self.queues.get(topic)
        while queue:
            member, lane = self._choose(topic, queue[0].payload)
            if member is None:
                return
            job = queue.popleft()
            self.queued -= 1
            self.queued_bytes -= len(job.payload)
            if job.deadline is not None and job.deadline <= now:
                self.io.reply_error(
                    job, ErrorCode.DEADLINE_EXCEEDED,
                    "the caller's deadline passed while the request waited for a replica",
                )  # fmt: skip
                continue
            self._dispatch(job, member, lane=lane)

    def _requeue(self, job: Job, lost_by: str, now: float, *, reason: str) -> None:
        job.history.append(lost_by)
        job.member = None
        if job.attempt >= self.config.max_attempts:
            self.io.reply_error(
                job,
                ErrorCode.EXEC_FAILED,
                f"gave up after {job.attempt} deliveries: replicas "
                f"{', '.join(job.history)} were lost while running it ({reason})",
            )
            return
        if job.deadline is None:
            job.deadline = job_deadline(job.payload)
        self.redelivered += 1
        self._enqueue(job, now, front=True)

    def _remove(self, identity: bytes, reason: str, now: float) -> None:
        member = self.members.pop(identity, None)
        if member is None:
            return
        level = logging.INFO if reason == "left" else logging.WARNING
        log.log(level, "replica %s removed: %s", member.state.server_id, reason)
        for topic in member.state.topics:
            self._leave_topic(topic.encode(), identity, now)
        lost = list(member.inflight.values())
        member.inflight.clear()
        for job in lost:
            self._pop_inflight(job.dispatch_id)
            self._requeue(job, member.state.server_id, now, reason=reason)
        for lost_topic in {job.topic for job in lost}:
            self._pump(lost_topic, now)
