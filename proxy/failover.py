"""A failover pair of proxies: the ZeroMQ guide's Binary Star, free of sockets.

Two proxies run side by side, a *primary* and a *backup*
(https://zguide.zeromq.org/docs/chapter4/#High-Availability-Pair-Binary-Star-Pattern).
Each publishes its state to the other every ``heartbeat`` seconds over a
PUB/SUB pair; one is *active* (serves clients), the other *passive* (takes
servers' heartbeats, so its replica table is warm, but forwards and
dispatches nothing). The rules, as in the guide's ``bstar`` reactor:

==========  =======================  ===========================================
state       event                    becomes
==========  =======================  ===========================================
primary     peer is backup           active (the backup came up after us)
primary     peer is active           passive (the backup took over: no failback)
primary     client vote              active, if the peer has been silent for
                                     ``2 * heartbeat`` (else the vote is refused)
backup      peer is active           passive
backup      client vote              refused unless it heard its peer as a
                                     primary (a backup never starts active);
                                     then as passive
active      peer is active           conflict: the backup yields (the guide aborts)
passive     peer is primary/backup   active (the peer restarted: it goes passive)
passive     peer is passive          conflict, counted (nobody serves until a vote)
passive     client vote              active, if the peer has been silent for
                                     ``2 * heartbeat``; else refused
==========  =======================  ===========================================

A *client vote* is a client's request or path probe reaching the proxy: a
passive proxy takes over only when clients come to it *and* its peer is
silent, which is what keeps a network split between the two proxies alone
from making two actives. Clients reach one proxy at a time and move to the
next after a disconnect or an unanswered probe (``skillscale/sdk/failover.py``).

After a take-over (and after any start: a restart is a take-over from
oneself) the proxy runs a :class:`Recovery` window: clients retransmit
unanswered requests, servers deliver replies to requests the dead proxy
dispatched; the window makes sure a caller is sent one reply per request id
and that a retransmission goes to the replica that already has it.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

from skillscale.core.replica_protocol import request_key

log = logging.getLogger(__name__)

STATE_VERSION = b"SSBS1"
"""First frame of a state message between the two proxies."""


class State(enum.Enum):
    """A proxy's Binary Star state (the wire form is the name, lower case)."""

    PRIMARY = "primary"
    BACKUP = "backup"
    ACTIVE = "active"
    PASSIVE = "passive"


@dataclass
class FailoverConfig:
    """One half of a pair. Seconds."""

    primary: bool
    peer_bind: str
    """Where this proxy publishes its state (the peer's ``peer_connect``)."""
    peer_connect: str
    """Where the peer publishes its state."""
    heartbeat: float = 1.0
    """Seconds between state messages; the peer is dead after twice that."""


class BinaryStar:
    """The state machine of one proxy of the pair."""

    def __init__(self, primary: bool, heartbeat: float = 1.0) -> None:
        self.primary = primary
        self.heartbeat = heartbeat
        self.state = State.PRIMARY if primary else State.BACKUP
        self.peer_expiry = 0.0
        """Monotonic time after which the peer counts as dead (0: never heard)."""
        self.conflicts = 0
        """Dual actives or dual passives seen (each one is logged)."""
        self.refused_votes = 0
        self.heard_primary = False
        """A backup heard its peer as a primary (or active, or passive): a second
        backup does not count, so a pair of two backups by mistake still never
        serves."""

    @property
    def active(self) -> bool:
        """True while this proxy serves clients."""
        return self.state is State.ACTIVE

    def wire_state(self) -> bytes:
        """What this proxy tells its peer."""
        return self.state.value.encode()

    def on_peer(self, raw: bytes, now: float) -> bool:
        """A state message from the peer; True if our state changed."""
        try:
            peer = State(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            log.warning("ignoring a malformed state from the peer proxy")
            return False
        self.peer_expiry = now + 2 * self.heartbeat
        if peer is not State.BACKUP:
            self.heard_primary = True
        before = self.state
        if self.state is State.PRIMARY:
            if peer is State.BACKUP:
                self.state = State.ACTIVE
            elif peer is State.ACTIVE:
                self.state = State.PASSIVE
        elif self.state is State.BACKUP:
            if peer is State.ACTIVE:
                self.state = State.PASSIVE
        elif self.state is State.ACTIVE:
            if peer is State.ACTIVE:
                self.conflicts += 1
                if not self.primary:
                    self.state = State.PASSIVE
                log.error("both proxies of the pair are active; the backup yields")
        elif self.state is State.PASSIVE:
            if peer in (State.PRIMARY, State.BACKUP):
                self.state = State.ACTIVE
            elif peer is State.PASSIVE:
                self.conflicts += 1
                log.error("both proxies of the pair are passive; waiting for a client vote")
        return self.state is not before

    def on_vote(self, now: float) -> bool:
        """A client came to us; True if we serve it (we are, or just became, active)."""
        if self.state is State.ACTIVE:
            return True
        if self.state in (State.PRIMARY, State.PASSIVE) and now >= self.peer_expiry:
            self.state = State.ACTIVE
            return True
        if self.state is State.BACKUP and self.heard_primary and now >= self.peer_expiry:
            # The primary was up (we heard it), went active on hearing us, and
            # died before its next state message reached us: the guide's
            # backup would refuse every vote from now on, leaving the pair
            # with no server although its clients had one. Once it was heard,
            # a silent peer is what passive takes over from, with the same
            # guard (a client must come to us), so it is the same decision.
            self.state = State.ACTIVE
            return True
        self.refused_votes += 1
        return False


_REQUEST_ID = re.compile(rb'"request_id"\s*:\s*"([A-Za-z0-9_.:@\-]{1,128})"')
_REPLY_TO = re.compile(rb'"reply_to"\s*:\s*"(AGENT_REPLY_[A-Za-z0-9_.:/\-]{1,244})"')
_RETRANSMIT = re.compile(rb'"retransmit"\s*:\s*true')
_HEAD = 4096


def _field(pattern: re.Pattern[bytes], name: str, payload: bytes) -> str | None:
    """A string field of a JSON payload: searched in its head, else parsed.

    Our SDK and servers write ``request_id`` (and ``reply_to``) first, so the
    head nearly always has it; a match there cannot come from inside another
    string (its quotes would be escaped).
    """
    found = pattern.search(payload, 0, _HEAD)
    if found is not None:
        return found.group(1).decode()
    if len(payload) <= _HEAD:
        return None
    try:
        value = json.loads(payload).get(name)
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


class Recovery:
    """What a proxy does for a while after it starts or takes over.

    * *one reply per request id*: the first group reply per (``reply_to``,
      ``request_id``) is published, later ones are dropped (a reply from the
      dead proxy's dispatch and one from the retransmission's);
    * *affinity*: servers tell a passive proxy what they hold (running or
      answered lately, as :func:`request_key` hashes); a retransmitted
      request is dispatched to that replica, whose dedupe window answers it,
      instead of running again elsewhere.

    Bounded: ``max_keys`` replies remembered, ``max_keys`` held keys; both
    end with the window (``duration`` seconds).
    """

    def __init__(self, duration: float = 30.0, max_keys: int = 100_000) -> None:
        self.duration = duration
        self.max_keys = max_keys
        self.until = 0.0
        self._replied: OrderedDict[str, None] = OrderedDict()
        self._holders: dict[str, bytes] = {}
        self._held_by: dict[bytes, list[str]] = {}
        self._held_total = 0
        """Keys in ``_held_by``, over all replicas (bounded by ``max_keys``)."""
        self.duplicates = 0
        self.steered = 0

    def begin(self, now: float) -> None:
        """Open the window (start, take-over); what servers said they hold stays."""
        self.until = now + self.duration
        self._replied.clear()
        self._holders = {key: ident for ident, keys in self._held_by.items() for key in keys}
        self._held_by.clear()
        self._held_total = 0
        if self._holders:
            log.info("take-over: %d requests held by replicas", len(self._holders))

    def open(self, now: float) -> bool:
        """True while the window runs (ends it, and frees its memory, after)."""
        if self.until and now >= self.until:
            self.until = 0.0
            self._replied.clear()
            self._holders.clear()
        return self.until > 0.0

    def note_holding(self, identity: bytes, keys: list[str], *, serving: bool) -> None:
        """A server's heartbeat while we are passive, or settling after a take-over
        (``serving``): what it holds."""
        if serving:
            for key in keys[: self.max_keys]:  # after begin(): straight to the holders
                if len(self._holders) < self.max_keys:
                    self._holders[key] = identity
            return
        old = self._held_by.pop(identity, None)
        if old is not None:
            self._held_total -= len(old)
        if keys and self._held_total + len(keys) <= self.max_keys:
            self._held_by[identity] = keys
            self._held_total += len(keys)

    def first_reply(self, reply_to: bytes, payload: bytes, now: float) -> bool:
        """False if a reply for this caller's request id was already published."""
        if not self.open(now):
            return True
        request_id = _field(_REQUEST_ID, "request_id", payload)
        if request_id is None:
            return True
        key = request_key(reply_to.decode(errors="replace"), request_id)
        if key in self._replied:
            self.duplicates += 1
            return False
        self._replied[key] = None
        if len(self._replied) > self.max_keys:
            self._replied.popitem(last=False)
        return True

    def waits(self, payload: bytes) -> bool:
        """True for a retransmission whose holder has not said so (yet): it waits
        a moment after a proxy start for the holder to rejoin (see the proxy)."""
        if _RETRANSMIT.search(payload, max(0, len(payload) - 64)) is None:
            return False
        return self.holder(payload) is None

    def holder(self, payload: bytes) -> bytes | None:
        """The replica holding this (retransmitted) request, if one said so."""
        if not self._holders:
            return None
        request_id = _field(_REQUEST_ID, "request_id", payload)
        reply_to = _field(_REPLY_TO, "reply_to", payload)
        if request_id is None or reply_to is None:
            return None
        identity = self._holders.get(request_key(reply_to, request_id))
        if identity is not None:
            self.steered += 1
        return identity
