"""Scale simulation: the ScaledObject's own query and threshold over a real proxy's /metrics.

A topic starts at zero replicas. A burst of requests arrives; the proxy holds
them (its per-topic no-server wait) and exports them as queue depth; KEDA's
documented rule (activation, then ``ceil(metric / threshold)`` clamped to
[min, max]) is applied to each scrape; a first server comes up (what KEDA's
activation does) and drains the queue; the desired count falls back to zero.
Nothing is lost on the way: every request is answered by a skill, none with
``no_server``. Run with ``-s`` to see the table.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from typing import Any

import pytest

from tests.deploy_checks import K8S, evaluate_query, keda_replicas, load_docs, scrape
from tests.helpers import FIXTURE_SKILLS, ReferenceClient, start_proxy, start_server

TOPIC = "TOPIC_DATA_PROCESSING"
BURST = 24
RUN_SECONDS = 0.3
"""Each request runs the fixture ``slow`` skill this long: a drain slow enough to watch."""


def scaled_object() -> dict[str, Any]:
    docs = load_docs(K8S / "topic-data-processing.yaml")
    (obj,) = [d for d in docs if d["kind"] == "ScaledObject"]
    return obj


def read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def test_keda_rule_clamps_and_activates() -> None:
    obj = scaled_object()
    assert obj["spec"]["minReplicaCount"] == 0
    high = obj["spec"]["maxReplicaCount"]
    assert keda_replicas(0, obj) == 0  # idle: back to zero
    assert keda_replicas(1, obj) == 1  # activation wakes the topic
    assert keda_replicas(10_000, obj) == high  # clamped


@pytest.mark.timeout(90)
def test_idle_burst_drain_scales_0_to_n_to_0_without_losing_a_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    obj = scaled_object()
    query = obj["spec"]["triggers"][0]["metadata"]["query"]
    threshold = float(obj["spec"]["triggers"][0]["metadata"]["threshold"])
    assert f'topic="{TOPIC}"' in query
    proxy = start_proxy(no_server_wait_topic=f"{TOPIC}=60")
    metrics = proxy.ready["metrics"]
    queues = metrics.replace("/metrics", f"/queues?topic={TOPIC}")
    client = ReferenceClient(proxy.ready["xsub"], proxy.ready["xpub"])
    rows: list[tuple[float, int, int, int, float, int]] = []
    started = time.monotonic()
    server = None

    def sample() -> int:
        samples = scrape(read(metrics))
        metric = evaluate_query(query, samples)
        desired = keda_replicas(metric, obj)
        waiting = int(samples.get(("skillscale_topic_queue_depth", TOPIC), 0))
        inflight = int(samples.get(("skillscale_topic_inflight", TOPIC), 0))
        live = int(samples.get(("skillscale_topic_replicas", TOPIC), 0))
        rows.append((time.monotonic() - started, waiting, inflight, live, metric, desired))
        return desired

    try:
        # Idle: the proxy has never seen the topic; the query reads 0, not "no data".
        assert sample() == 0
        intent = json.dumps({"skill": "slow", "data": str(RUN_SECONDS)})
        ids = {client.send(TOPIC, intent) for _ in range(BURST)}
        # Burst: every held request shows in the metric (gauges refresh every 0.5 s).
        deadline = time.monotonic() + 10
        while json.loads(read(queues))["load"] < BURST:
            assert time.monotonic() < deadline, read(queues)
            time.sleep(0.1)  # sampling the exported gauge, as Prometheus scrapes it
        desired = sample()
        assert rows[-1][1] == BURST and rows[-1][4] == BURST
        assert desired == min(obj["spec"]["maxReplicaCount"], -(-BURST // int(threshold)))
        # KEDA activates the topic: a first server starts (2 workers) and drains the queue.
        server = start_server(proxy, FIXTURE_SKILLS / "testing", TOPIC, workers=2,
                              reload_interval=0)  # fmt: skip
        replies: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        while len(replies) < BURST:
            assert time.monotonic() < deadline, f"{len(replies)} of {BURST} answered"
            try:
                reply = client.recv(timeout=0.25)  # the sampling period of the table
            except TimeoutError:
                pass
            else:
                replies[reply["request_id"]] = reply
            sample()
        # Drain: the gauges reach 0, and so does the desired count.
        deadline = time.monotonic() + 10
        while sample() != 0:
            assert time.monotonic() < deadline, rows[-1]
            time.sleep(0.1)
    finally:
        client.close()
        if server is not None:
            server.close()
        proxy.close()
    assert set(replies) == ids
    outcomes = {r["status"] for r in replies.values()} | {
        r.get("error_code") for r in replies.values()
    }
    assert outcomes == {"success", None}, [r for r in replies.values() if r["status"] != "success"]
    desired_series = [row[5] for row in rows]
    peak = desired_series.index(max(desired_series))
    assert desired_series[0] == 0 and desired_series[-1] == 0 and max(desired_series) >= 2
    drain = desired_series[peak:]
    assert all(a >= b for a, b in itertools.pairwise(drain)), desired_series  # monotone drain
    with capsys.disabled():
        print(f"\nscale simulation: {TOPIC}, burst {BURST} x {RUN_SECONDS} s skill, "
              f"threshold {threshold:g}, min {obj['spec']['minReplicaCount']}, "
              f"max {obj['spec']['maxReplicaCount']}")  # fmt: skip
        print(
            f"{'t (s)':>6} {'waiting':>8} {'inflight':>8} {'live':>5} {'metric':>7} {'desired':>8}"
        )
        shown = None
        for t, waiting, inflight, live, metric, want in rows:
            if (waiting, inflight, live, want) != shown:  # one line per change of state
                print(f"{t:6.2f} {waiting:8d} {inflight:8d} {live:5d} {metric:7g} {want:8d}")
                shown = (waiting, inflight, live, want)
