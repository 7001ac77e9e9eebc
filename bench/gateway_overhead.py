"""Issue 15's gateway overhead: HTTP gateway against the SDK, interleaved A/B.

    python bench/gateway_overhead.py [--rounds 60] [--per-round 20] [--json FILE]

Starts one ``skillscale up`` (proxy, one server with the trivial ``echo``
skill, the gateway), then, in one process and one event loop, alternates
round by round between the two doors to the same skill at 1 in flight:

* ``bus``: the SDK client (:class:`~skillscale.sdk.client.SkillScaleClient`,
  one long-lived client) calling ``TOPIC_TESTING`` ``echo``;
* ``http``: ``POST /v1/topics/TOPIC_TESTING/invoke`` over one keep-alive
  connection with a minimal HTTP/1.1 client (raw asyncio streams), so that
  the figure is the gateway's cost, not an HTTP client library's;
* ``aiohttp``: the same request through one ``aiohttp.ClientSession`` of one
  keep-alive connection, as ``skillscale bench --mode http`` sends it;
* ``httpx``: the same request through ``httpx.AsyncClient`` (what the HTTP
  bench used before; shown apart: its own cost is the difference).

Each round runs ``--per-round`` calls of each arm, in an order that alternates
(A B C, then C B A, ...), and keeps each arm's median. The overhead is the
median over rounds of the per-round difference (http minus bus), with a
distribution-free 95 % confidence interval for that median (binomial order
statistics), so load from other processes on a shared machine, which shifts
both arms of a round alike, falls out of the difference. The load average
before and after is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import httpx

from skillscale.sdk.client import SkillScaleClient

TOPIC = "TOPIC_TESTING"
ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "tests" / "fixtures" / "skills" / "testing" / "echo"
DATA = "hi"
READY_TIMEOUT = 60.0


def loadavg() -> str:
    """The first three fields of /proc/loadavg."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def child_pid(parent: int, word: str) -> int | None:
    """The child of ``parent`` whose command line contains ``word`` (read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and word in cmdline:
            return int(entry.name)
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_fabric(
    skills: Path, checkout: Path = ROOT
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``skillscale up`` on free ports with the echo skill; its ready line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKILLSCALE_", "OPENAI_"))}
    env.update(SKILLSCALE_CONFIG="/nonexistent", SKILLSCALE_NO_DISTILL="1",
               SKILLSCALE_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "skillscale", "up", "--skills-dir", str(skills),
         "--xsub-port", "0", "--xpub-port", "0", "--router-port", "0", "--metrics-port", "0",
         "--gateway-port", "0", "--json"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=checkout,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "ready":
            return proc, event
    proc.kill()
    raise SystemExit("skillscale up did not report ready")


class RawHTTP:
    """One keep-alive HTTP/1.1 connection: a request, its whole answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median (order statistics)."""
    ordered = sorted(values)
    n = len(ordered)
    # Largest k with P(Binomial(n, 1/2) < k) <= (1 - level) / 2.
    tail = (1 - level) / 2
    cumulative, k = 0.0, 0
    for i in range(n + 1):
        p = math.comb(n, i) / 2**n
        if cumulative + p > tail:
            k = i
            break
        cumulative += p
    if k == 0:
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


async def measure(
    ready: dict[str, Any], rounds: int, per_round: int, gateway_pid: int | None
) -> dict[str, Any]:
    gateway = httpx.URL(ready["gateway"])
    path = f"/v1/topics/{TOPIC}/invoke"
    body = json.dumps({"skill": "echo", "data": DATA}).encode()
    raw = RawHTTP(gateway.host, gateway.port or 80)
    await raw.open()
    samples: dict[str, list[float]] = {"bus": [], "http": [], "aiohttp": [], "httpx": []}
    per_round_medians: dict[str, list[float]] = {name: [] for name in samples}
    gateway_ms: list[float] = []
    async with (
        SkillScaleClient(ready["xsub"], ready["xpub"], timeout=10) as client,
        httpx.AsyncClient(base_url=str(gateway), timeout=10) as http,
        aiohttp.ClientSession(
            str(gateway), connector=aiohttp.TCPConnector(limit=1),
            headers={"Content-Type": "application/json"}, auto_decompress=False,
        ) as session,
    ):  # fmt: skip

        async def bus() -> None:
            reply = await client.call(TOPIC, {"skill": "echo", "data": DATA})
            assert reply.ok and reply.content == DATA, reply

        async def raw_http() -> None:
            status, answer = await raw.post(path, body)
            assert status == 200, answer
            gateway_ms.append(json.loads(answer)["timing"]["gateway_ms"])

        async def via_httpx() -> None:
            response = await http.post(path, content=body,
                                       headers={"content-type": "application/json"})  # fmt: skip
            assert response.status_code == 200, response.text

        async def via_aiohttp() -> None:
            async with session.post(path, data=body) as response:
                answer = await response.read()
                assert response.status == 200, answer
            json.loads(answer)

        arms = {"bus": bus, "http": raw_http, "aiohttp": via_aiohttp, "httpx": via_httpx}
        for _ in range(20):  # warm every path (imports, pools, the fork server)
            for call in arms.values():
                await call()
        gateway_ms.clear()
        cpu_before = cpu_seconds(gateway_pid)
        failures: dict[str, list[str]] = {}
        order = list(arms)
        for r in range(rounds):
            names = order if r % 2 == 0 else order[::-1]
            times: dict[str, list[float]] = {name: [] for name in names}
            # Calls of the arms alternate within the round too, not in blocks.
            for _ in range(per_round):
                for name in names:
                    started = time.perf_counter()
                    try:
                        await arms[name]()
                    except AssertionError as exc:
                        # A failed call (the skill's run, not the door) is counted,
                        # not timed: one flake must not void a long run.
                        failures.setdefault(name, []).append(str(exc)[:300])
                        continue
                    times[name].append((time.perf_counter() - started) * 1000)
            for name, values in times.items():
                samples[name] += values
                per_round_medians[name].append(statistics.median(values))
        cpu = cpu_seconds(gateway_pid) - cpu_before
    await raw.close()
    out: dict[str, Any] = {"rounds": rounds, "per_round": per_round}
    out["failed_calls"] = {name: {"count": len(f), "first": f[0]} for name, f in failures.items()}
    # CPU is far less disturbed by load than latency: the gateway's CPU per HTTP call
    # (an upper bound: it also reads the trace events of the SDK's calls).
    http_calls = len(samples["http"]) + len(samples["aiohttp"]) + len(samples["httpx"])
    out["gateway_cpu_ms_per_http_call"] = round(cpu * 1000 / http_calls, 3) if cpu else None
    for name, values in samples.items():
        out[f"{name}_p50_ms"] = round(statistics.median(values), 3)
    for name in ("http", "aiohttp", "httpx"):
        bus_medians = per_round_medians["bus"]
        diffs = [a - b for a, b in zip(per_round_medians[name], bus_medians, strict=True)]
        low, high = median_ci(diffs)
        out[f"{name}_overhead_ms"] = {
            "median": round(statistics.median(diffs), 3), "ci95": [round(low, 3), round(high, 3)],
            "rounds_positive": sum(d > 0 for d in diffs),
        }  # fmt: skip
    out["gateway_inside_ms_p50"] = round(statistics.median(gateway_ms), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--checkout", type=Path, default=ROOT,
                        help="run the fabric (and its gateway) from this checkout's code, "
                        "e.g. another branch's, to compare gateways")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        skills = Path(tmp) / "skills"
        shutil.copytree(ECHO, skills / "testing" / "echo")
        proc, ready = start_fabric(skills, args.checkout.resolve())
        try:
            before = loadavg()
            started = time.time()
            gateway_pid = child_pid(proc.pid, "gateway")
            result = asyncio.run(measure(ready, args.rounds, args.per_round, gateway_pid))
            result["seconds"] = round(time.time() - started, 1)
            result["loadavg_before"], result["loadavg_after"] = before, loadavg()
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    result["checkout"] = str(args.checkout.resolve())
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
