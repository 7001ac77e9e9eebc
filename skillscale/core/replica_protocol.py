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
                                       (empty ``reply_to``: nothing to publish)
server→     ``id``                     ``RETURN``: hand ``id`` back unstarted or
                                       cancelled, for another replica
server→     (none)                     ``BYE``: leaving now
proxy→      ``id, topic, payload,``    ``REQ``: run this request (``attempt`` counts
            ``attempt, history``       deliveries, from 1; ``history`` lists, comma-
                                       separated, the servers that lost it before)
proxy→      (none) or ``role``         ``HB``: the proxy is alive; a proxy of a
                                       failover pair adds ``active`` or ``passive``
==========  =========================  ===========================================

A server connected to a failover pair heartbeats to both proxies and sends
replies to the one that says ``active``. To the passive one its heartbeat
also lists ``holding``: hashes (:func:`request_key`) of the requests it is
running or answered lately, so that after a take-over a retransmitted
request goes to the replica that already has it (see ``proxy/failover.py``).

Because every heartbeat carries the whole announcement, a restarted proxy
learns its servers back from their next heartbeat, with no handshake.
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
