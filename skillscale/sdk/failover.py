"""The client's side of "no single point of loss": endpoints and retransmission.

* :class:`EndpointRing`: the proxies a client may use, in order (one, or a
  Binary Star pair: ``proxy/failover.py``). The client talks to one at a
  time and moves to the next when its connection drops or a probe goes
  unanswered (a passive proxy does not answer until it takes over), as the
  guide's Binary Star client does.
* :class:`Retransmissions`: requests sent but not yet answered, kept (within
  a bound of count and bytes) so that after a reconnect or a failover they
  are sent again, with the same ``request_id`` and deadline, until that
  deadline. Servers' dedupe windows make sure a retransmission never runs
  twice (``skill_server/dedupe.py``).

Free of sockets; :class:`~skillscale.sdk.client.SkillScaleClient` uses both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from skillscale.core.errors import ConfigError
from skillscale.core.transport import split_endpoints

MiB = 1024 * 1024
RETRANSMIT_MARK = b',"retransmit":true}'
"""Appended to a retransmitted request (an optional field old peers ignore):
a proxy that just restarted holds such a request a moment for the replica
that has it (``proxy/failover.py``)."""


def mark_retransmission(payload: bytes) -> bytes:
    """The request JSON with ``"retransmit": true`` (our own serialisation: one object)."""
    if payload.endswith(RETRANSMIT_MARK) or not payload.endswith(b"}"):
        return payload
    return payload[:-1] + RETRANSMIT_MARK


@dataclass(frozen=True)
class Endpoints:
    """One proxy as a client sees it."""

    xsub: str
    xpub: str


class EndpointRing:
    """The proxies to use, the current one first; :meth:`advance` moves on."""

    def __init__(self, xsubs: str | Sequence[str], xpubs: str | Sequence[str]) -> None:
        subs, pubs = split_endpoints(xsubs), split_endpoints(xpubs)
        if len(subs) != len(pubs):
            raise ConfigError(
                f"{len(subs)} XSUB endpoints but {len(pubs)} XPUB endpoints: give one of "
                "each per proxy, in the same order"
            )
        self.all = [Endpoints(s, p) for s, p in zip(subs, pubs, strict=True)]
        self.index = 0

    def __len__(self) -> int:
        return len(self.all)

    @property
    def current(self) -> Endpoints:
        """The proxy in use."""
        return self.all[self.index]

    def advance(self) -> Endpoints:
        """Move to the next proxy (round robin) and return it."""
        self.index = (self.index + 1) % len(self.all)
        return self.current

    def owns(self, endpoint: str) -> bool:
        """True if ``endpoint`` is one of ours but not the current one (a stale event)."""
        return any(e.xsub == endpoint for e in self.all) and endpoint != self.current.xsub


@dataclass
class _Kept:
    topic: bytes
    payload: bytes
    deadline: float
    generation: int


class Retransmissions:
    """Unanswered requests, bounded by count and bytes."""

    def __init__(self, max_requests: int = 10_000, max_bytes: int = 64 * MiB) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._kept: dict[str, _Kept] = {}
        self._bytes = 0
        self.not_kept = 0
        """Requests past the bound: sent once, never retransmitted."""
        self.retransmitted = 0

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, request_id: str, topic: bytes, payload: bytes, deadline: float,
             generation: int) -> bool:  # fmt: skip
        """Remember a request just sent on connection ``generation``; False past the bound."""
        size = len(topic) + len(payload)
        if len(self._kept) >= self.max_requests or self._bytes + size > self.max_bytes:
            self.not_kept += 1
            return False
        self._kept[request_id] = _Kept(topic, payload, deadline, generation)
        self._bytes += size
        return True

    def drop(self, request_id: str) -> None:
        """Answered, or its caller stopped waiting."""
        kept = self._kept.pop(request_id, None)
        if kept is not None:
            self._bytes -= len(kept.topic) + len(kept.payload)

    def due(self, generation: int, now: float | None = None) -> list[tuple[bytes, bytes]]:
        """Requests sent on an earlier connection and still within their deadline.

        They are marked as sent on ``generation`` (the one they go out on now).
        """
        wall = time.time() if now is None else now
        out: list[tuple[bytes, bytes]] = []
        for kept in self._kept.values():
            if kept.generation < generation and kept.deadline > wall:
                kept.generation = generation
                out.append((kept.topic, mark_retransmission(kept.payload)))
        self.retransmitted += len(out)
        return out
