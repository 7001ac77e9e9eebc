"""The replica-group protocol between skill servers (DEALER) and the proxy (ROUTER).

Clients keep the reference wire format (PUB/SUB, ``[topic, json]``); only
servers that support replica groups speak this second protocol, over a
DEALER socket whose routing id is the server id. Every message starts with
the version frame ``SSG1`` and a command frame:

==========  =========================  ===========================================
direction   frames after the command   meaning
==========  =========================  ===========================================
server→     ``state`` (JSON)           heartbeat, and the full announcement: topics,
                                       slots, busy, skills digest, draining
server→     ``id, reply_to, payload``  the one reply to dispatch ``id``
            [``inline``]               (empty ``reply_to``: nothing to publish;
                                       ``inline``: answered without a worker)
server→     ``id`` [``busy``]          ``RETURN``: hand ``id`` back unstarted or
                                       cancelled, for another replica (``busy``:
                                       a lane dispatch found every worker taken)
server→     (none)                     ``BYE``: leaving now
proxy→      ``id, topic, payload,``    ``REQ``: run this request (``attempt`` counts
            ``attempt, history``       deliveries, from 1; ``history`` lists, comma-
            [``mode``]                 separated, the servers that lost it before;
                                       ``mode``: empty, or ``lane`` for a dispatch
                                       beyond the worker slots)
proxy→      ``role, epoch``            ``HB``: the proxy is alive, ``active`` or
            [``batches``               ``passive``, and which start (or take-over) of it this is;
            [``traces``]]              ``batches``: the ``REPLY`` groups it takes
                                       in one message (ASCII digits); ``traces``:
                                       ``1`` if anyone subscribes to trace events,
                                       ``0`` if nobody does
==========  =========================  ===========================================

A server connected to a failover pair heartbeats to both proxies and sends
replies to the one that says ``active``. To the passive one its heartbeat
also lists ``holding``: hashes (:func:`request_key`) of the requests it is
running or answered lately, so that after a take-over a retransmitted
request goes to the replica that already has it (see ``proxy/failover.py``).
A heartbeat with a list also echoes, as ``epoch``, the epoch that proxy last
sent, so a proxy that has just taken over knows which lists were made
after the server heard of it.

Because every heartbeat carries the whole announcement, a restarted proxy
learns its servers back from their next heartbeat, with no handshake.

**The inline lane.** A server answers requests for instruction-only skills
(and answers that need no skill) in its receiving task, without a worker,
in microseconds; holding them to the worker slots makes proxy and server
play ping-pong, two requests at a time. So a server also announces
``inline_slots``, and the proxy learns how many of them to use from what
the server did: each reply marked ``inline`` lets one more dispatch beyond
the worker slots (up to ``inline_slots``); a lane dispatch that needed a
worker and found none is handed back ``busy`` (never queued there) and
takes the allowance back to zero. A request that needs a worker therefore
never waits inside a server while the proxy could give it to another
replica, and the proxy's queue stays the autoscaling signal. The optional
frames keep mixed versions working: a proxy that sends ``mode`` reads the
two optional server frames, and a server sends them only to such a proxy.

**Batches.** An instruction-only burst is many small messages each way, and
per message each end pays a ZeroMQ receive or send, its frames, and a wake-up
of the other's I/O thread. So several dispatches to one replica, made while
the proxy handles one batch of its sockets' messages, may travel as one
``REQ`` of groups of :data:`REQ_GROUP` frames (``mode`` always present),
and a server answering such a ``REQ`` without workers sends the answers as
one ``REPLY`` of groups of :data:`REPLY_GROUP` frames (the flag always
present: empty or ``inline``). Each end sends batches only to a peer that
announced it takes them: a server by ``batches`` in its state, a proxy by the
optional frame after its ``HB``'s epoch; neither is more than
:data:`MAX_BATCH`. One group is exactly one message of today's shape, so a
malformed group costs that group only.

**Trace events nobody takes.** The proxy's XSUB subscribes to everything,
so servers cannot filter on their side as a PUB connected to its
subscribers does, and every request's trace event would cost its server
and the proxy (about 40 µs of the ~210 of an instruction-only call) only
to be dropped at the XPUB. So each ``HB`` says whether any subscriber
takes trace events, and when that changes the proxy heartbeats every
replica at once; a dispatch sent after it travels behind it on the same
pipe, so a new subscriber misses no trace of a request the proxy routed
after its subscription. A server with any proxy wanting them (or not
saying) sends them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skillscale.core.protocol import ID_PATTERN, TOPIC_PATTERN

VERSION = b"SSG1"
HB = b"HB"
REQ = b"REQ"
REPLY = b"REPLY"
RETURN = b"RETURN"
BYE = b"BYE"
LANE = b"lane"
"""``REQ``'s ``mode`` frame for a dispatch beyond the worker slots."""
INLINE = b"inline"
"""``REPLY``'s optional last frame: answered without a worker."""
BUSY = b"busy"
"""``RETURN``'s optional last frame: a lane dispatch found every worker taken."""
MAX_BATCH = 64
"""Most groups one batched ``REQ`` or ``REPLY`` carries (see the module doc)."""
REQ_GROUP = 6
"""Frames per request in a batched ``REQ``: id, topic, payload, attempt, history, mode."""
REPLY_GROUP = 4
"""Frames per reply in a batched ``REPLY``: id, reply_to, payload, flag."""
MAX_BATCH_BYTES = 256 * 1024
"""A batch is closed once its payloads reach this (large answers travel alone)."""
TRACES_WANTED = b"1"
TRACES_UNWANTED = b"0"
"""``HB``'s ``traces`` frame: nobody subscribes to trace events, so a server
need not build or send them (a proxy that sends no such frame wants them)."""
ROLE_ACTIVE = b"active"
ROLE_PASSIVE = b"passive"
"""The optional frame after a proxy's ``HB``: which half of a failover pair it is."""

DEFAULT_PROXY_ROUTER = "tcp://127.0.0.1:5566"
HEARTBEAT_INTERVAL = 1.0
"""Seconds between heartbeats, both ways."""
HEARTBEAT_TIMEOUT = 3.0
"""Seconds of silence after which a peer is taken for dead."""


MAX_STATE_BYTES = 256 * 1024
"""Largest heartbeat frame the proxy parses; anything bigger is malformed."""
MAX_TOPICS_PER_SERVER = 64
MAX_SKILLS_PER_SERVER = 4096
MAX_SLOTS = 4096
MAX_HOLDING = 4096
"""Request keys one heartbeat may list as held (running or answered lately)."""
REQUEST_KEY_PATTERN = r"^[0-9a-f]{16}$"


class ServerState(BaseModel):
    """What a server announces in every heartbeat.

    This model *is* the proxy's boundary for heartbeats: every field is typed
    strictly and bounded (a ``null`` where a number belongs, an ``Infinity``,
    a 5 for a list or a deeply nested value is a :class:`ValueError`, never a
    ``TypeError`` deep inside the routing code).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    server_id: str = Field(pattern=ID_PATTERN)
    topics: list[Annotated[str, Field(pattern=TOPIC_PATTERN)]] = Field(
        max_length=MAX_TOPICS_PER_SERVER
    )
    slots: int = Field(ge=1, le=MAX_SLOTS)
    """Requests it will run at once (its workers)."""
    inline_slots: int = Field(default=0, ge=0, le=MAX_SLOTS)
    """Dispatches it takes beyond ``slots`` for requests it answers without a
    worker (the inline lane; see the module doc)."""
    batches: int = Field(default=1, ge=1, le=MAX_BATCH)
    """``REQ`` groups it takes in one message (1: one request per message)."""
    busy: int = Field(default=0, ge=0, le=1 << 30)
    digest: str = Field(default="", max_length=128)
    """Hash of its skill names and versions: replicas of a topic should agree."""
    draining: bool = False
    """True once it stopped taking work."""
    skills: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=MAX_SKILLS_PER_SERVER
    )
    holding: list[Annotated[str, Field(pattern=REQUEST_KEY_PATTERN)]] = Field(
        default_factory=list, max_length=MAX_HOLDING
    )
    """:func:`request_key` of requests running here or answered lately (sent
    to a passive proxy only, so that it can route retransmissions here)."""
    epoch: str = Field(default="", max_length=32, pattern=r"^[0-9a-f]*$")
    """In a heartbeat that carries ``holding`` (to a passive proxy, and the
    answer to a take-over or a start), the epoch of the proxy it goes to, as
    the server last heard it; "" otherwise. A proxy that has just taken over
    counts only heartbeats that echo its new epoch as having said what they
    hold: one sent before the server heard of the take-over may lack
    requests the dead proxy dispatched since (settling on it ran those
    twice), and one without a list says nothing about them."""

    def to_bytes(self) -> bytes:
        """The JSON frame."""
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ServerState:
        """Parse a state frame; raises ``ValueError`` when malformed."""
        if len(raw) > MAX_STATE_BYTES:
            raise ValueError(f"state frame of {len(raw)} bytes (limit {MAX_STATE_BYTES})")
        try:
            # JSON mode: strict typing still lets JSON arrays fill lists.
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ValueError(f"malformed state: {_first_error(exc)}") from None


def batch_frame(raw: bytes) -> int:
    """A proxy's ``batches`` frame as a count in 1..MAX_BATCH (1 when malformed)."""
    if not raw.isdigit() or len(raw) > 4:
        return 1
    return max(1, min(int(raw), MAX_BATCH))


def join_batch(messages: list[list[bytes]], group: int, limit: int) -> list[list[bytes]]:
    """``[VERSION, command, *group frames]`` messages joined into as few messages
    as ``limit`` groups and :data:`MAX_BATCH_BYTES` of payload allow.

    Every message must have exactly ``group`` frames after its command; the
    third frame of each group is its payload.
    """
    joined: list[list[bytes]] = []
    current: list[bytes] = []
    count = size = 0
    for message in messages:
        if current and (count >= limit or size + len(message[4]) > MAX_BATCH_BYTES):
            joined.append(current)
            current, count, size = [], 0, 0
        if not current:
            current = message[:2]
        current.extend(message[2 : 2 + group])
        count += 1
        size += len(message[4])
    if current:
        joined.append(current)
    return joined


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "frame"
    return f"{where}: {err['msg']}"


def skills_digest(skills: Iterable[tuple[str, str | None]]) -> str:
    """A short stable hash of ``(name, version)`` pairs."""
    text = "\n".join(f"{name}@{version or ''}" for name, version in sorted(skills))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def request_key(reply_to: str, request_id: str) -> str:
    """A short hash naming one caller's request: ``reply_to`` + ``request_id``.

    Scoped by the caller, so one caller's id never matches another's.
    """
    digest = hashlib.blake2b(f"{reply_to}\0{request_id}".encode(), digest_size=8)
    return digest.hexdigest()
