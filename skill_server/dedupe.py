"""The server's dedupe window: a retransmitted request never runs twice.

Clients retransmit unanswered requests under the same ``request_id`` after
they reconnect or fail over to another proxy (see ``docs/failover.md``). A
server therefore remembers the requests it is running and the replies it
sent lately, keyed by the caller *and* the id (``reply_to``, ``request_id``):
a caller guessing another caller's id finds nothing.

* a duplicate of a request that already ran is answered from the window
  with the same reply, marked ``_trace.deduplicated``;
* a duplicate of a request still running waits for it and gets its reply;
* a request handed back unstarted or cancelled is forgotten, with anything
  waiting on it handed back too.

Bounded in entries, bytes of stored replies and age; running entries are
never evicted (the server's capacity bounds them). A reply evicted early
(the byte bound under very large replies) makes a later duplicate run again. Free of sockets, like
the proxy's replica groups, so every rule is unit-tested.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from skillscale.core.protocol import Reply, Trace
from skillscale.core.replica_protocol import MAX_HOLDING, request_key

J = TypeVar("J")
Key = tuple[str, str]
"""(``reply_to``, ``request_id``)."""

MiB = 1024 * 1024


@dataclass
class DedupeConfig:
    """Bounds of the window. Seconds and bytes."""

    max_entries: int = 10_000
    max_age: float = 300.0
    """Seconds a sent reply stays answerable: longer than any caller's
    retransmission (a caller retransmits only until its deadline)."""
    max_bytes: int = 64 * MiB
    """Bytes of stored replies; past it the oldest answered entries go."""
    holding_age: float = 30.0
    """Answered requests younger than this are announced as held to a
    passive proxy (a take-over happens within seconds)."""


@dataclass
class _Entry(Generic[J]):
    started: float
    key: Key
    reply: bytes | None = None
    finished: float = 0.0
    waiting: list[J] = field(default_factory=list)
    _hash: str | None = None

    @property
    def hash(self) -> str:
        """The request's short hash, computed when a heartbeat first announces it."""
        if self._hash is None:
            self._hash = request_key(*self.key)
        return self._hash


class DedupeWindow(Generic[J]):
    """Running and recently answered requests; ``J`` is the server's job type."""

    def __init__(self, config: DedupeConfig | None = None) -> None:
        self.config = config or DedupeConfig()
        self._running: dict[Key, _Entry[J]] = {}
        self._answered: OrderedDict[Key, _Entry[J]] = OrderedDict()
        """In answer order, so eviction only ever looks at the front."""
        self._bytes = 0
        self.hits = 0
        """Duplicates answered from the window or attached to a running request."""

    def __len__(self) -> int:
        return len(self._running) + len(self._answered)

    def lookup(self, key: Key, job: J, now: float) -> bytes | bool:
        """A duplicate's answer: the stored reply (marked), True if ``job`` now
        waits for the running original, False if ``key`` is new."""
        running = self._running.get(key)
        if running is not None:
            self.hits += 1
            running.waiting.append(job)
            return True
        # Eviction runs as replies are stored (finish); here only the entry
        # found is checked for age, which keeps the lookup of every request
        # (nearly always a miss) to two dict probes.
        answered = self._answered.get(key)
        if answered is None or answered.reply is None:
            return False
        if answered.finished < now - self.config.max_age:
            self._evict(now)
            return False
        self.hits += 1
        return mark_deduplicated(answered.reply)

    def start(self, key: Key, now: float) -> None:
        """``key`` begins to run here."""
        self._running[key] = _Entry(now, key)

    def finish(self, key: Key, payload: bytes, now: float) -> list[J]:
        """``key`` was answered with ``payload``; the jobs that waited for it."""
        entry = self._running.pop(key, None)
        if entry is None:
            return []
        waiting, entry.waiting = entry.waiting, []
        entry.reply, entry.finished = payload, now
        self._answered[key] = entry
        self._bytes += len(payload)
        self._evict(now)
        return waiting

    def abandon(self, key: Key) -> list[J]:
        """``key`` will not be answered here (handed back, cancelled): forget it."""
        entry = self._running.pop(key, None)
        return entry.waiting if entry is not None else []

    def holding(self, now: float) -> list[str]:
        """Hashes of what runs here or was answered within ``holding_age``."""
        out = [entry.hash for entry in self._running.values()][:MAX_HOLDING]
        horizon = now - self.config.holding_age
        for entry in reversed(self._answered.values()):  # newest first
            if entry.finished < horizon or len(out) >= MAX_HOLDING:
                break
            out.append(entry.hash)
        return out

    def _evict(self, now: float) -> None:
        cfg = self.config
        horizon = now - cfg.max_age
        answered = self._answered
        while answered:
            key, entry = next(iter(answered.items()))
            over = len(answered) > cfg.max_entries or self._bytes > cfg.max_bytes
            if entry.finished >= horizon and not over:
                return
            del answered[key]
            self._bytes -= len(entry.reply or b"")


def mark_deduplicated(payload: bytes) -> bytes:
    """The same reply, with ``_trace.deduplicated`` set."""
    reply = Reply.from_bytes(payload)
    trace = reply.trace.model_copy() if reply.trace is not None else None
    if trace is None:
        trace = Trace()
    trace.deduplicated = True
    reply.trace = trace
    return reply.to_bytes()
