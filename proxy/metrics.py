"""Prometheus metrics of the proxy, served over HTTP at ``/metrics``.

Counting is per *message* (not per frame). The forwarding loop accumulates
counts per batch in plain dicts and flushes them once per batch, so the cost
of a labelled Prometheus child lookup is paid per topic per batch, not per
message.

The same port serves the proxy's health (``/healthz``, ``/readyz``, see
:mod:`skillscale.core.health`) and ``/queues``, a small JSON view of the
per-topic gauges for KEDA's ``metrics-api`` scaler where no Prometheus runs:
``/queues?topic=T`` answers ``{"topic": T, "queue_depth", "inflight",
"replicas", "load"}`` (``load`` = waiting + in flight, exactly the sum the
Prometheus trigger computes; all 0 for a topic the proxy has not seen, so a
scaled-to-zero topic reads 0, not an error); without ``topic`` it lists all.

``/replicas`` is the JSON view of every replica in the groups (the console's
"up, draining, slots" per replica): ``{"replicas": [{"server_id", "topics",
"state", "slots", "inflight", "busy", "last_seen_s"}], "truncated",
"timestamp"}``, with ``state`` one of ``up``, ``draining``, ``joining``
(not settled after a proxy take-over) and ``unreachable``; ``inflight`` is
what the proxy has dispatched to it, ``busy`` what it last reported. Replicas
come and go, so they are not Prometheus labels (a label lives forever): the
per-topic sums are, as ``skillscale_topic_slots`` and
``skillscale_topic_replicas_draining``. Every string in a row passed the
heartbeat's own patterns (``ServerState``), and at most
:data:`MAX_REPLICA_ROWS` rows are listed.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app
from prometheus_client import Counter as PromCounter

from skillscale.core.health import HealthServer, RoleHealth
from skillscale.core.protocol import MAX_TOPIC_BYTES, PROBE_TOPIC_PREFIX, REPLY_TOPIC_PREFIX
from skillscale.core.replica_protocol import ServerState

MAX_TOPIC_LABELS = 500
"""Distinct topic label values kept before new ones fold into ``_other``."""

_FOLDED_PREFIXES = (REPLY_TOPIC_PREFIX.encode(), PROBE_TOPIC_PREFIX.encode())

METRICS_PATH = "/metrics"
QUEUES_PATH = "/queues"
"""JSON per-topic load for KEDA's ``metrics-api`` trigger."""
REPLICAS_PATH = "/replicas"
"""JSON per-replica state (see the module doc)."""
MAX_REPLICA_ROWS = 1000
QUEUE_DEPTH_METRIC = "skillscale_topic_queue_depth"
INFLIGHT_METRIC = "skillscale_topic_inflight"
"""The two gauges whose sum per topic is the autoscaling input."""

TopicLoad = tuple[int, int, int]
"""(waiting, in flight, live replicas) of one topic."""


class Replica(Protocol):
    """What :meth:`ProxyMetrics.set_replicas` reads of a group member."""

    @property
    def state(self) -> ServerState:
        """Its last heartbeat."""

    @property
    def inflight(self) -> Mapping[bytes, object]:
        """Requests dispatched to it and not answered."""

    @property
    def last_seen(self) -> float:
        """Monotonic time of its last message."""

    @property
    def unreachable(self) -> bool:
        """A send to it failed."""

    @property
    def settled(self) -> bool:
        """It has said what it holds (always, but after a proxy take-over)."""


DOWNSTREAM = "downstream"
"""Messages from publishers to subscribers (requests, replies)."""
UPSTREAM = "upstream"
"""Subscription messages from subscribers towards publishers."""


class ProxyMetrics:
    """The proxy's counters and gauges on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = PromCounter(
            "skillscale_proxy_messages",
            "Messages forwarded by the proxy, by topic and direction.",
            ["topic", "direction"],
            registry=self.registry,
        )
        self.bytes = PromCounter(
            "skillscale_proxy_bytes",
            "Payload bytes forwarded by the proxy, by topic and direction.",
            ["topic", "direction"],
            registry=self.registry,
        )
        self.dropped = PromCounter(
            "skillscale_proxy_dropped",
            "Messages the proxy could not deliver, by topic and reason.",
            ["topic", "reason"],
            registry=self.registry,
        )
        self.subscriptions = Gauge(
            "skillscale_proxy_subscriptions",
            "Distinct topic prefixes currently subscribed at the proxy.",
            registry=self.registry,
        )
        # (Prometheus declarations: one per metric, alike in shape only.)
        self.queue_depth = Gauge(
            QUEUE_DEPTH_METRIC,
            "Requests of a topic waiting for a free replica slot or for a first replica "
            "(autoscaling input).",
            ["topic"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            INFLIGHT_METRIC,
            "Requests of a topic dispatched to a replica and not yet answered.",
            ["topic"],
            registry=self.registry,
        )
        self.replicas = Gauge(
            "skillscale_topic_replicas",
            "Live replicas (skill servers) of a topic.",
            ["topic"],
            registry=self.registry,
        )
        self.slots = Gauge(
            "skillscale_topic_slots",
            "Requests a topic's live replicas run at once (their summed slots).",
            ["topic"],
            registry=self.registry,
        )
        self.draining = Gauge(
            "skillscale_topic_replicas_draining",
            "Replicas of a topic that stopped taking work (draining).",
            ["topic"],
            registry=self.registry,
        )
        self.error_replies = PromCounter(
            "skillscale_proxy_error_replies",
            "Error replies the proxy itself sent (no_server, overloaded, ...), by code.",
            ["code"],
            registry=self.registry,
        )
        self.redelivered = PromCounter(
            "skillscale_proxy_redelivered",
            "Requests re-dispatched after their replica was lost or handed them back.",
            registry=self.registry,
        )
        self.lane_bounced = PromCounter(
            "skillscale_proxy_lane_bounced",
            "Inline-lane dispatches a replica handed back because every worker was "
            "taken (each went back to its place in the queue).",
            registry=self.registry,
        )
        self.batched = PromCounter(
            "skillscale_proxy_batched",
            "Dispatches sent to replicas, and replies received from them, several "
            "to a message (batched REQ and REPLY; see the replica protocol).",
            ["kind"],
            registry=self.registry,
        )
        self.duplicates = PromCounter(
            "skillscale_proxy_duplicate_replies_dropped",
            "Replies dropped because an earlier attempt of the request already answered.",
            registry=self.registry,
        )
        self.serving = Gauge(
            "skillscale_proxy_serving",
            "1 while this proxy serves clients; 0 while it is the passive half of a "
            "failover pair (docs/failover.md).",
            registry=self.registry,
        )
        self.serving.set(1)
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._http: HealthServer | None = None
        self._loads: dict[str, TopicLoad] = {}
        """Replaced whole on each refresh (read by the HTTP thread)."""
        self._replicas: tuple[list[dict[str, object]], bool] = ([], False)
        """(rows, truncated), replaced whole on each refresh."""
        self._capacity: set[str] = set()
        """Topic labels the slot and draining gauges were last set for."""

    def topic_label(self, topic: bytes) -> str:
        """A bounded-cardinality label for a topic frame."""
        for prefix in _FOLDED_PREFIXES:
            if topic.startswith(prefix):
                # One label for each family of per-peer topics (replies, probes).
                return prefix.decode() + "*"
        if len(topic) > MAX_TOPIC_BYTES:
            return "_invalid"  # a label is kept forever: never store a huge one
        try:
            label = topic.decode("utf-8")
        except UnicodeDecodeError:
            return "_invalid"
        if label in self._known:
            return label
        with self._lock:
            if len(self._known) >= MAX_TOPIC_LABELS:
                return "_other"
            self._known.add(label)
        return label

    def flush(self, direction: str, messages: Counter[bytes], sizes: Counter[bytes]) -> None:
        """Add one batch's per-topic counts."""
        for topic, count in messages.items():
            label = self.topic_label(topic)
            self.messages.labels(label, direction).inc(count)
            self.bytes.labels(label, direction).inc(sizes[topic])

    def drop(self, topic: bytes, reason: str) -> None:
        """Record one undeliverable message."""
        self.dropped.labels(self.topic_label(topic), reason).inc()

    def set_topics(self, loads: dict[str, TopicLoad]) -> None:
        """Refresh the per-topic gauges and the ``/queues`` view (label -> load)."""
        for label, (waiting, inflight, replicas) in loads.items():
            self.queue_depth.labels(label).set(waiting)
            self.inflight.labels(label).set(inflight)
            self.replicas.labels(label).set(replicas)
        self._loads = {**self._loads, **loads}

    def set_replicas(self, members: Iterable[Replica]) -> None:
        """Refresh ``/replicas`` and the per-topic slot and draining gauges."""
        now = time.monotonic()
        rows: list[dict[str, object]] = []
        slots: Counter[str] = Counter()
        draining: Counter[str] = Counter()
        count = 0
        for member in members:
            count += 1
            state = member.state
            for topic in state.topics:
                label = self.topic_label(topic.encode())
                if state.draining:
                    draining[label] += 1
                elif not member.unreachable:
                    slots[label] += state.slots
            if len(rows) >= MAX_REPLICA_ROWS:
                continue
            rows.append({
                "server_id": state.server_id,
                "topics": list(itertools.islice(state.topics, 64)),
                "state": "unreachable" if member.unreachable
                else "draining" if state.draining
                else "joining" if not member.settled else "up",
                "slots": state.slots,
                "inflight": len(member.inflight),
                "busy": state.busy,
                "last_seen_s": round(max(0.0, now - member.last_seen), 3),
            })  # fmt: skip
        labels = set(slots) | set(draining)
        for label in labels | self._capacity:
            self.slots.labels(label).set(slots.get(label, 0))
            self.draining.labels(label).set(draining.get(label, 0))
        self._capacity = labels
        rows.sort(key=lambda r: str(r["server_id"]))
        self._replicas = (rows, count > len(rows))

    def replica_rows(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """The ``/replicas`` route (see the module doc)."""
        rows, truncated = self._replicas
        doc = {"replicas": rows, "truncated": truncated, "timestamp": time.time()}
        return 200, "application/json", (json.dumps(doc) + "\n").encode()

    def queues(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """The ``/queues`` route (see the module doc)."""
        loads = self._loads

        def one(topic: str) -> dict[str, object]:
            waiting, inflight, replicas = loads.get(topic, (0, 0, 0))
            return {"topic": topic, "queue_depth": waiting, "inflight": inflight,
                    "replicas": replicas, "load": waiting + inflight}  # fmt: skip

        topics = query.get("topic")
        if topics:
            doc: dict[str, object] = one(topics[0][:MAX_TOPIC_BYTES])
        else:
            doc = {"topics": {t: one(t) for t in sorted(loads)}}
        doc["timestamp"] = time.time()
        return 200, "application/json", (json.dumps(doc) + "\n").encode()

    def serve(self, host: str, port: int, health: RoleHealth) -> int:
        """Serve ``/metrics``, health and ``/queues`` on ``host:port`` (0 = any free)."""
        self._http = HealthServer(
            health,
            routes={QUEUES_PATH: self.queues, REPLICAS_PATH: self.replica_rows},
            mounts={METRICS_PATH: make_wsgi_app(self.registry)},
        )
        return self._http.serve(host, port)

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._http is not None:
            self._http.close()
            self._http = None
