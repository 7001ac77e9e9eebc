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

import asyncio
import itertools
import json
import math
import re
import signal
import time
import urllib.request
from typing import Any

import pytest

from skillscale import SkillScaleClient
from tests.deploy_checks import K8S, evaluate_query, keda_replicas, load_docs, scrape
from tests.helpers import (
    FIXTURE_SKILLS,
    ReferenceClient,
    RoleProcess,
    dump_stacks,
    free_port,
    start_proxy,
    start_server,
)

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


# -- the same over the Kubernetes pair: the active proxy dies in the middle of the burst --------


def proxy_args(name: str) -> list[str]:
    """The args of one half of the pair in ``k8s/proxy.yaml``."""
    docs = load_docs(K8S / "proxy.yaml")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def summed(scrapes: list[dict[tuple[str, str], float]]) -> dict[tuple[str, str], float]:
    """What PromQL's ``sum`` over the proxies' series sees (a dead target has no series)."""
    total: dict[tuple[str, str], float] = {}
    for samples in scrapes:
        for key, value in samples.items():
            total[key] = total.get(key, 0.0) + value
    return total


def serving(samples: dict[tuple[str, str], float], text: str) -> int:
    match = re.search(r"^skillscale_proxy_serving (\S+)$", text, re.M)
    assert match, "the proxy exports no skillscale_proxy_serving gauge"
    return int(float(match[1]))


@pytest.mark.timeout(120)
async def test_the_pair_scales_on_the_sum_and_the_passive_half_reads_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Idle -> burst held at the active proxy -> SIGKILL it -> the backup takes
    over and holds the retransmitted burst -> a server drains it -> 0.

    The ScaledObject's query is evaluated over the *sum* of both proxies'
    scrapes, as Prometheus sums both pods' series. While both run, the
    passive half must read 0 (else the sum would count the burst twice).
    """
    obj = scaled_object()
    query = obj["spec"]["triggers"][0]["metadata"]["query"]
    threshold = float(obj["spec"]["triggers"][0]["metadata"]["threshold"])
    # The pair as k8s/proxy.yaml runs it: roles, peer wiring, this topic's wait.
    primary_args, backup_args = proxy_args("skillscale-proxy-a"), proxy_args("skillscale-proxy-b")
    assert primary_args[primary_args.index("--failover") + 1] == "primary"
    assert backup_args[backup_args.index("--failover") + 1] == "backup"
    assert f"{TOPIC}=60" in primary_args and f"{TOPIC}=60" in backup_args
    peer_a, peer_b = free_port(), free_port()
    common = {
        "peer_heartbeat": 0.25,
        "heartbeat_timeout": 1.5,
        "no_server_wait_topic": f"{TOPIC}=60",
    }
    proxies = {
        "a": start_proxy(failover="primary", peer_bind=f"tcp://127.0.0.1:{peer_a}",
                         peer_connect=f"tcp://127.0.0.1:{peer_b}", **common),
        "b": start_proxy(failover="backup", peer_bind=f"tcp://127.0.0.1:{peer_b}",
                         peer_connect=f"tcp://127.0.0.1:{peer_a}", **common),
    }  # fmt: skip
    alive = dict(proxies)
    rows: list[tuple[float, str, float, float, float, int]] = []
    started = time.monotonic()
    server = None

    def one(name: str) -> tuple[dict[tuple[str, str], float], int] | None:
        try:
            text = read(proxies[name].ready["metrics"])
        except OSError:
            return None  # a dead target: Prometheus marks its series stale
        samples = scrape(text)
        return samples, serving(samples, text)

    def load_of(samples: dict[tuple[str, str], float]) -> float:
        return evaluate_query(query, samples)

    def sample(phase: str) -> tuple[float, float, int]:
        per = {name: one(name) for name in alive}
        live = {name: got for name, got in per.items() if got is not None}
        metric = evaluate_query(query, summed([s for s, _ in live.values()]))
        desired = keda_replicas(metric, obj)
        a = load_of(live["a"][0]) if "a" in live else float("nan")
        b = load_of(live["b"][0]) if "b" in live else float("nan")
        active = "".join(name for name, (_, on) in sorted(live.items()) if on) or "-"
        rows.append((time.monotonic() - started, f"{phase}/{active}", a, b, metric, desired))
        return a, b, desired

    async def until(phase: str, predicate: Any, timeout: float) -> tuple[float, float, int]:
        deadline = time.monotonic() + timeout
        while True:
            got = await asyncio.to_thread(sample, phase)
            if predicate(*got):
                return got
            assert time.monotonic() < deadline, (phase, rows[-3:])
            await asyncio.sleep(0.1)  # the scrape interval of the simulation

    endpoints = {k: [p.ready[k] for p in proxies.values()] for k in ("xsub", "xpub", "router")}
    try:
        # The pair settles: the primary serves, the backup is passive.
        await until("settle", lambda a, b, d: rows[-1][1] == "settle/a", 10)
        assert (await asyncio.to_thread(sample, "idle"))[2] == 0
        async with SkillScaleClient(endpoints["xsub"], endpoints["xpub"], timeout=60,
                                    failover_timeout=1.5) as client:  # fmt: skip
            intent = json.dumps({"skill": "slow", "data": str(RUN_SECONDS)})
            calls = [asyncio.ensure_future(client.call(TOPIC, intent)) for _ in range(BURST)]
            # Burst, held at the active half; the passive half reads 0.
            a, b, desired = await until("burst", lambda a, b, d: a == BURST, 15)
            assert b == 0, f"the passive proxy exports load {b}: the sum would count it twice"
            assert desired == min(obj["spec"]["maxReplicaCount"], math.ceil(BURST / threshold))
            # The active half dies; clients fail over and retransmit to the backup,
            # which takes over and now holds the burst (scraped alone).
            proxies["a"].signal(signal.SIGKILL)
            await asyncio.to_thread(proxies["a"].proc.wait, 10)
            _, b, desired = await until("failover", lambda a, b, d: b == BURST, 30)
            assert rows[-1][1] == "failover/b"
            assert desired == min(obj["spec"]["maxReplicaCount"], math.ceil(BURST / threshold))
            # KEDA wakes the topic: a server given both proxies drains the queue.
            server = RoleProcess(
                "server", "--skills-dir", str(FIXTURE_SKILLS / "testing"), "--topic", TOPIC,
                "--workers", "2", "--reload-interval", "0",
                "--proxy-xsub", ",".join(endpoints["xsub"]),
                "--proxy-xpub", ",".join(endpoints["xpub"]),
                "--proxy-router", ",".join(endpoints["router"]),
            )  # fmt: skip
            while not all(c.done() for c in calls):
                await asyncio.wait(calls, timeout=0.25)  # the table's sampling period
                await asyncio.to_thread(sample, "drain")
            replies = [c.result() for c in calls]
            await until("drain", lambda a, b, d: d == 0, 10)
    except BaseException:
        dump_stacks(*proxies.values(), *([server] if server is not None else []))
        raise
    finally:
        if server is not None:
            server.close()
        for proxy in proxies.values():
            proxy.kill()
            proxy.close()
    assert all(r.ok for r in replies), [r for r in replies if not r.ok]
    desired_series = [row[5] for row in rows]
    last_peak = len(desired_series) - 1 - desired_series[::-1].index(max(desired_series))
    assert desired_series[-1] == 0 and max(desired_series) >= 2
    drain = desired_series[last_peak:]
    assert all(x >= y for x, y in itertools.pairwise(drain)), desired_series
    with capsys.disabled():
        print(f"\nscale simulation over the pair: {TOPIC}, burst {BURST} x {RUN_SECONDS} s, "
              f"threshold {threshold:g}; load = the query on one proxy's scrape, "
              "metric = on the sum of both (phase/active half)")  # fmt: skip
        print(f"{'t (s)':>6} {'phase/active':>14} {'load a':>7} {'load b':>7} "
              f"{'metric':>7} {'desired':>8}")  # fmt: skip
        shown = None
        for t, phase, a, b, metric, want in rows:
            line = f"{phase:>14} {a:7g} {b:7g} {metric:7g} {want:8d}"  # nan != nan: compare text
            if line != shown:
                print(f"{t:6.2f} {line}")
                shown = line
