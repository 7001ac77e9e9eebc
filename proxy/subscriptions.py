"""The proxy's table of subscribed topic prefixes: bounded, and fast to match.

ZeroMQ matches subscriptions by prefix. Asking "does anyone subscribe to a
prefix of this topic?" with a scan over every subscription costs O(n) per
message, and one peer holding 200,000 prefixes slowed every request ~60x.
Here a lookup tries only the distinct prefix *lengths* present (each a set
membership test on a slice), so it costs O(distinct lengths) <= O(topic
length), and a topic is at most :data:`~skillscale.core.protocol.MAX_TOPIC_BYTES`
bytes long, so the cost is bounded whatever peers subscribe.

The table is bounded in all, and per peer where a peer has an identity:
its CURVE key when the bus is encrypted. On an open bus there is no
identity to charge (every local client shares the address 127.0.0.1, so a
per-address bound would let one process lock every other out); there only
the total bound applies, and everyone who can reach the ports is trusted.
XPUB reports only the first subscription of a topic and the last
unsubscription, so each topic remembers the peer that brought it in and is
charged to it until it goes.

A refused subscription still works inside libzmq (XPUB applies it before
we see it); the table only stops *tracking* it. Once anything was refused
the table is :attr:`Subscriptions.saturated`, and the proxy stops relying on
it to decide that a reply has no subscriber.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from skillscale.core.protocol import MAX_TOPIC_BYTES


class PrefixTable:
    """A set of byte prefixes answering "is some member a prefix of this topic?"."""

    def __init__(self) -> None:
        self._prefixes: set[bytes] = set()
        self._lengths: Counter[int] = Counter()
        self._sorted: list[int] = []

    def __len__(self) -> int:
        return len(self._prefixes)

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._prefixes

    def add(self, prefix: bytes) -> None:
        """Add ``prefix`` (idempotent)."""
        if prefix in self._prefixes:
            return
        self._prefixes.add(prefix)
        self._lengths[len(prefix)] += 1
        if self._lengths[len(prefix)] == 1:
            self._sorted = sorted(self._lengths)

    def discard(self, prefix: bytes) -> None:
        """Remove ``prefix`` if present."""
        if prefix not in self._prefixes:
            return
        self._prefixes.discard(prefix)
        self._lengths[len(prefix)] -= 1
        if not self._lengths[len(prefix)]:
            del self._lengths[len(prefix)]
            self._sorted = sorted(self._lengths)

    def matches(self, topic: bytes) -> bool:
        """True if any member is a prefix of ``topic`` (the empty prefix included)."""
        prefixes = self._prefixes
        if not prefixes:
            return False
        size = len(topic)
        for length in self._sorted:
            if length > size:
                return False
            if topic[:length] in prefixes:
                return True
        return False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._prefixes)


class Subscriptions:
    """Every subscribed prefix, with per-peer and total bounds."""

    def __init__(
        self, *, max_total: int, max_per_peer: int, server_filter: tuple[bytes, ...]
    ) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.all = PrefixTable()
        self.servers = PrefixTable()
        """Prefixes that may be plain (pub/sub) servers' topics, i.e. not reply,
        probe or internal topics (``server_filter`` is the tuple of those)."""
        self._not_servers = server_filter
        self._owner: dict[bytes, str] = {}
        self._per_peer: Counter[str] = Counter()
        self.refused = 0

    def __len__(self) -> int:
        return len(self.all)

    @property
    def saturated(self) -> bool:
        """True once any subscription was refused: libzmq still holds it, and
        XPUB never reports it again, so the table is incomplete for good."""
        return self.refused > 0

    def subscribe(self, prefix: bytes, peer: str | None) -> bool:
        """Record a subscription; False if refused (too long, or a bound is reached).

        ``peer`` is the subscriber's authenticated identity, None on an open bus.
        """
        if prefix in self.all:
            return True
        peer = peer or ""
        if (
            len(prefix) > MAX_TOPIC_BYTES
            or len(self.all) >= self.max_total
            or (peer and self._per_peer[peer] >= self.max_per_peer)
        ):
            self.refused += 1
            return False
        self.all.add(prefix)
        self._owner[prefix] = peer
        self._per_peer[peer] += 1
        if prefix and not prefix.startswith(self._not_servers):
            self.servers.add(prefix)
        return True

    def unsubscribe(self, prefix: bytes) -> bool:
        """Forget a subscription; False if it was not recorded."""
        if prefix not in self.all:
            return False
        self.all.discard(prefix)
        self.servers.discard(prefix)
        peer = self._owner.pop(prefix)
        self._per_peer[peer] -= 1
        if not self._per_peer[peer]:
            del self._per_peer[peer]
        return True
