"""``skillscale bench``: load a running fabric and report throughput and latency.

The reference's stress tool, done right: a fixed number of requests with a
fixed number in flight, every request timed individually (no coordinated
omission inside a worker: a worker sends its next request as soon as the
previous one is answered), failures counted by error code with samples, and
a machine-readable summary.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from skillscale.core.errors import SkillScaleError
from skillscale.core.security import CurveKeys
from skillscale.sdk.client import SkillScaleClient


@dataclass
class BenchConfig:
    """What to send, how much, how concurrently. Durations in seconds."""

    topic: str
    intent: str
    requests: int = 200
    concurrency: int = 20
    timeout: float = 60.0
    warmup: int = 0
    proxy_xsub: str | None = None
    proxy_xpub: str | None = None
    progress: bool = True
    curve: CurveKeys | None = None


@dataclass
class BenchResult:
    """Figures of one run; latencies in milliseconds."""

    requests: int
    concurrency: int
    duration_s: float
    throughput_rps: float
    succeeded: int
    failed: int
    success_rate: float
    latency_ms: dict[str, float]
    failures_by_code: dict[str, int] = field(default_factory=dict)
    failure_samples: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The summary as JSON."""
        return json.dumps(asdict(self), indent=2)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(
    latencies: list[float],
    failures: list[tuple[str, str]],
    duration: float,
    config: BenchConfig,
) -> BenchResult:
    """Turn raw per-request observations into the report."""
    ordered = sorted(latencies)
    total = len(latencies)
    stats = {
        "min": ordered[0] if ordered else math.nan,
        "mean": sum(ordered) / total if total else math.nan,
        **{f"p{q}": percentile(ordered, q) for q in (50, 90, 95, 99)},
        "max": ordered[-1] if ordered else math.nan,
    }
    return BenchResult(
        requests=total,
        concurrency=config.concurrency,
        duration_s=round(duration, 4),
        throughput_rps=round(total / duration, 2) if duration > 0 else math.nan,
        succeeded=total - len(failures),
        failed=len(failures),
        success_rate=round((total - len(failures)) / total, 4) if total else 0.0,
        latency_ms={k: round(v, 3) for k, v in stats.items()},
        failures_by_code=dict(Counter(code for code, _ in failures)),
        failure_samples=[f"[{c}] {m}" for c, m in failures[:5]],
    )


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.done = 0
        self._last = 0.0

    def tick(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.enabled and (now - self._last >= 0.2 or self.done == self.total):
            self._last = now
            width = 30
            filled = width * self.done // max(1, self.total)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
            )
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


async def run_bench(config: BenchConfig, stream: TextIO = sys.stderr) -> BenchResult:
    """Run the benchmark against a live proxy."""
    if config.requests < 1 or config.concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    async with SkillScaleClient(
        config.proxy_xsub,
        config.proxy_xpub,
        timeout=config.timeout,
        max_in_flight=max(config.concurrency, 1),
        curve=config.curve,
    ) as client:
        for _ in range(config.warmup):
            await client.call(config.topic, config.intent)
        latencies: list[float] = []
        failures: list[tuple[str, str]] = []
        remaining = config.requests
        progress = _Progress(config.requests, stream, config.progress and config.requests >= 500)

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    reply = await client.call(config.topic, config.intent)
                except SkillScaleError as exc:
                    failures.append((exc.code.value, exc.message))
                else:
                    if not reply.ok:
                        code = reply.error_code.value if reply.error_code else "error"
                        failures.append((code, reply.error or ""))
                latencies.append((time.perf_counter() - started) * 1000)
                progress.tick()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(config.concurrency, config.requests))))
        duration = time.perf_counter() - started
    return summarize(latencies, failures, duration, config)


def http_body(intent: str) -> dict[str, Any]:
    """The gateway body for a bench intent (the form :func:`bench_intent` makes)."""
    try:
        parsed = json.loads(intent)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and ("skill" in parsed or "data" in parsed):
        return {k: parsed[k] for k in ("skill", "data", "task") if k in parsed}
    return {"task": intent}


async def run_http_bench(
    config: BenchConfig, url: str, *, token: str | None = None, stream: TextIO = sys.stderr
) -> BenchResult:
    """The same run as :func:`run_bench`, through the HTTP gateway at ``url``.

    Each request in flight has its own keep-alive connection (an aiohttp
    session of one connection per worker), the topic's invoke endpoint, the
    body serialised once, each request timed from send to parsed answer.
    aiohttp, not httpx: httpx's pure-Python request path cost ~1.2 ms a call
    more than aiohttp's (``bench/gateway_overhead.py``, both against one
    gateway), time that would be counted as the gateway's.
    ``--warmup`` requests are spread over the workers, so each connection is
    open before the timed run.
    """
    import aiohttp  # only this mode needs it; the bus bench starts without it

    if config.requests < 1 or config.concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    endpoint = url.rstrip("/") + f"/v1/topics/{config.topic}/invoke"
    payload = json.dumps({**http_body(config.intent), "timeout": config.timeout}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=config.timeout + 5)
    workers = min(config.concurrency, config.requests)
    latencies: list[float] = []
    failures: list[tuple[str, str]] = []
    remaining = config.requests
    progress = _Progress(config.requests, stream, config.progress and config.requests >= 500)

    async def one(http: aiohttp.ClientSession) -> tuple[str, str] | None:
        try:
            async with http.post(endpoint, data=payload) as response:
                text = await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return "http_error", f"{type(exc).__name__}: {exc}"
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict) and answer.get("status") == "success":
            return None
        try:
            error = answer["error"]
            return str(error["code"]), str(error["message"])
        except (KeyError, TypeError):
            return f"http_{status}", text[:200].decode("utf-8", "replace")

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            failure = await one(session)
            latencies.append((time.perf_counter() - started) * 1000)
            if failure is not None:
                failures.append(failure)
            progress.tick()

    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=config.timeout + 5),
            headers=headers,
            timeout=timeout,
            auto_decompress=False,
        )
        for _ in range(workers)
    ]
    try:
        for i in range(config.warmup):
            await one(sessions[i % workers])
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for session in sessions))
        duration = time.perf_counter() - started
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    return summarize(latencies, failures, duration, config)


def format_report(result: BenchResult, config: BenchConfig) -> str:
    """A human-readable report."""
    lat = result.latency_ms
    lines = [
        f"topic {config.topic}: {result.requests} requests, {result.concurrency} in flight",
        f"duration      {result.duration_s:.3f} s",
        f"throughput    {result.throughput_rps:.1f} req/s",
        f"success       {result.succeeded}/{result.requests} ({result.success_rate:.2%})",
        "latency ms    "
        + "  ".join(
            f"{k} {lat[k]:.2f}" for k in ("min", "mean", "p50", "p90", "p95", "p99", "max")
        ),
    ]
    if result.failed:
        lines.append(
            "failures      " + ", ".join(f"{c}: {n}" for c, n in result.failures_by_code.items())
        )
        lines += [f"  e.g. {s}" for s in result.failure_samples]
    return "\n".join(lines)


def bench_intent(text: str | None, skill: str | None, data: str | None) -> str:
    """The intent the CLI's options describe."""
    if skill:
        return json.dumps({"skill": skill, "data": data if data is not None else (text or "")})
    if data is not None:
        return json.dumps({"task": text or "", "data": data})
    return text or ""


# -- --compare-cold: the same skill spawned cold, in the same run (issue 14) ----


@dataclass
class ColdBaseline:
    """A skill's entry point started as a fresh process per input, serially."""

    skill: str
    argv: list[str]
    runs: int
    median_ms: float
    p99_ms: float
    serial_rps: float
    """Spawns per second one after another (what a caller without the fabric gets)."""

    def to_dict(self) -> dict[str, object]:
        """The figures for the JSON summary."""
        return asdict(self)


def cold_argv(entrypoint: Path, python: str | None = None) -> list[str]:
    """How a user would start the entry point by hand: ``python run.py`` / ``bash run.sh``."""
    if entrypoint.suffix == ".py":
        return [python or sys.executable, str(entrypoint)]
    return [shutil.which("bash") or "/bin/sh", str(entrypoint)]


def cold_baseline(
    skill: str, entrypoint: Path, data: bytes, runs: int, timeout: float = 60.0
) -> ColdBaseline:
    """Spawn the entry point ``runs`` times, input on stdin, in its folder (blocking)."""
    argv = cold_argv(entrypoint)
    times: list[float] = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        subprocess.run(
            argv, input=data, capture_output=True, cwd=entrypoint.parent.parent,
            timeout=timeout, check=False,
        )  # fmt: skip
        times.append((time.perf_counter() - started) * 1000)
    ordered = sorted(times)
    return ColdBaseline(
        skill=skill,
        argv=argv,
        runs=len(times),
        median_ms=round(statistics.median(ordered), 3),
        p99_ms=round(percentile(ordered, 99), 3),
        serial_rps=round(1000 / statistics.mean(ordered), 2),
    )


def format_cold(result: BenchResult, cold: ColdBaseline) -> str:
    """The cold baseline and the fabric's figures as ratios of it."""
    p50 = result.latency_ms["p50"]
    return "\n".join(
        [
            f"cold spawn    {' '.join(Path(a).name for a in cold.argv)}: {cold.runs} serial runs, "
            f"median {cold.median_ms:.2f} ms, p99 {cold.p99_ms:.2f} ms, "
            f"{cold.serial_rps:.1f} runs/s",
            f"vs cold       p50 x{p50 / cold.median_ms:.3f} of the cold median, "
            f"throughput x{result.throughput_rps / cold.serial_rps:.2f} the serial cold rate",
        ]
    )
