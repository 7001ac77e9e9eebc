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
proxy→      (none)                     ``HB``: the proxy is alive
==========  =========================  ===========================================

Because every heartbeat carries the whole announcement, a restarted proxy
learns its servers back from their next heartbeat, with no handshake.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

VERSION = b"SSG1"
HB = b"HB"
REQ = b"REQ"
REPLY = b"REPLY"
RETURN = b"RETURN"
BYE = b"BYE"

DEFAULT_PROXY_ROUTER = "tcp://127.0.0.1:5566"
HEARTBEAT_INTERVAL = 1.0
"""Seconds between heartbeats, both ways."""
HEARTBEAT_TIMEOUT = 3.0
"""Seconds of silence after which a peer is taken for dead."""


@dataclass
class ServerState:
    """What a server announces in every heartbeat."""

    server_id: str
    topics: list[str]
    slots: int
    """Requests it will run at once (its workers)."""
    busy: int = 0
    digest: str = ""
    """Hash of its skill names and versions: replicas of a topic should agree."""
    draining: bool = False
    """True once it stopped taking work."""
    skills: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """The JSON frame."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ServerState:
        """Parse a state frame; raises ``ValueError`` when malformed."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("state must be a JSON object")
        topics = data.get("topics")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise ValueError("state.topics must be a list of strings")
        slots = data.get("slots")
        if not isinstance(slots, int) or slots < 1:
            raise ValueError("state.slots must be a positive integer")
        return cls(
            server_id=str(data.get("server_id", "")),
            topics=topics,
            slots=slots,
            busy=int(data.get("busy", 0)),
            digest=str(data.get("digest", "")),
            draining=bool(data.get("draining", False)),
            skills=[str(s) for s in data.get("skills", [])],
        )


def skills_digest(skills: Iterable[tuple[str, str | None]]) -> str:
    """A short stable hash of ``(name, version)`` pairs."""
    text = "\n".join(f"{name}@{version or ''}" for name, version in sorted(skills))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
