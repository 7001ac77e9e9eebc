"""Which proxy a group server talks to, when it is given a failover pair.

A server keeps one DEALER per proxy endpoint and heartbeats to every one,
so a passive proxy already knows every replica when it takes over. Each
proxy's heartbeat answer says ``active`` or ``passive`` (a proxy without
failover says nothing: it counts as active). Replies go to a live active
proxy, preferably the one that dispatched the request; while none is known
(a take-over in progress) they wait for one. Free of sockets.
"""

from __future__ import annotations

import asyncio
import contextlib

from skillscale.core.replica_protocol import (
    HEARTBEAT_TIMEOUT,
    ROLE_ACTIVE,
    ROLE_PASSIVE,
    TRACES_UNWANTED,
    batch_frame,
)
from skillscale.core.runtime import within


class ProxyLinks:
    """The state of each proxy link, as its heartbeats tell it."""

    def __init__(self, count: int, *, timeout: float = HEARTBEAT_TIMEOUT) -> None:
        self.count = count
        self.timeout = timeout
        self.roles: list[bytes | None] = [None] * count
        self.seen: list[float] = [0.0] * count
        self.epochs: list[bytes | None] = [None] * count
        """Each proxy's epoch, when it sends one: a new one is a new start or a
        take-over (either way, it wants to hear what we hold)."""
        self.batches: list[int] = [1] * count
        """``REPLY`` groups each proxy takes in one message (1: it takes no batches)."""
        self.traces: list[bool] = [True] * count
        """Whether each proxy has a subscriber to trace events (True until it says not)."""
        self.changed = asyncio.Event()
        """Set when a link's role changes (replies waiting for an active proxy)."""

    def on_heartbeat(self, link: int, args: list[bytes], now: float) -> bool:
        """A heartbeat from proxy ``link`` (``args``: the frames after ``HB``).

        True if that proxy has just taken over (became active) or (re)started:
        it wants to hear at once what this server holds.
        """
        role = ROLE_PASSIVE if args and args[0] == ROLE_PASSIVE else ROLE_ACTIVE
        self.seen[link] = now
        self.batches[link] = batch_frame(args[2]) if len(args) > 2 else 1
        self.traces[link] = not (len(args) > 3 and args[3] == TRACES_UNWANTED)
        restarted = len(args) > 1 and args[1] != self.epochs[link]
        if restarted:
            self.epochs[link] = args[1]
        if self.roles[link] != role:
            if role == ROLE_ACTIVE:
                # One of a pair is active at a time: a proxy that becomes
                # active took over from the other, which is gone or yielding.
                for other in range(self.count):
                    if other != link and self.roles[other] == ROLE_ACTIVE:
                        self.roles[other] = None
            taken_over = role == ROLE_ACTIVE and self.roles[link] is not None
            self.roles[link] = role
            self.changed.set()
            return taken_over or restarted
        return restarted

    @property
    def traces_wanted(self) -> bool:
        """True unless every proxy said nobody subscribes to trace events."""
        return any(self.traces)

    def passive(self, link: int, now: float) -> bool:
        """True if ``link`` is a live passive proxy (it wants to hear what we hold)."""
        return self.roles[link] == ROLE_PASSIVE and now - self.seen[link] <= self.timeout

    def target(self, origin: int, now: float) -> int | None:
        """Where a reply to a request from ``origin`` goes; None: no active proxy now."""
        if self.count == 1:
            return 0  # nowhere else to go: ZeroMQ queues it across a restart
        live = [
            i
            for i in range(self.count)
            if self.roles[i] == ROLE_ACTIVE and now - self.seen[i] <= self.timeout
        ]
        if origin in live:
            return origin
        return live[0] if live else None

    async def wait_change(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a role change."""
        self.changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await within(self.changed.wait(), timeout)
