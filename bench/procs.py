"""The process side of issue 14 in one run: ``run.sh`` throughput and idle memory.

    python bench/procs.py [--rounds 3] [--requests 400] [--server-arg=--waiting-children=2]

* ``run.sh`` (``cat``) at 20 in flight on the current path against the same
  script with ``metadata.warm: false`` (the path every ``run.sh`` took before
  issue 14), alternated round by round in one fabric, plus the trivial Python
  skill at 20 in flight for reference;
* the server's memory with 8 workers (server, fork server and whatever
  children wait), as RSS summed over the processes (shared pages counted once
  per process, as the issue states it) and as PSS: right after start, just
  after traffic, and after the waiting children's idle period.

``bench/speed.py`` prints every target of the issue; this script is the quick
A/B for the executor and fork server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import speed
from warm_vs_cold import rss_mib

from skillscale.tools.bench import BenchConfig, run_bench


def memory(pids: list[int]) -> str:
    rss = sum(map(rss_mib, pids))
    pss = sum(map(speed.pss_mib, pids))
    return f"{rss:6.0f} MiB RSS, {pss:5.0f} MiB PSS over {len(pids)} processes"


async def idle_memory(skills: Path, idle: float) -> None:
    async with speed.Fabric(speed.fabric_config(skills, workers=8)) as fabric:
        info = fabric.endpoints()
        server = info["servers"][0]["pid"]
        await asyncio.sleep(1.0)
        print(f"  8 workers, after start      {memory(speed.tree_pids(server))}", flush=True)
        await speed.load(info, "trivial", 50, 4)
        print(f"  8 workers, after traffic    {memory(speed.tree_pids(server))}", flush=True)
        if idle > 0:
            await asyncio.sleep(idle)
            print(f"  8 workers, {idle:.0f} s idle after  {memory(speed.tree_pids(server))}")
            # The price of the ondemand policy: the first run after an idle
            # period forks its own child on its path.
            first = await one_call(info)
            after = statistics.median([await one_call(info) for _ in range(20)])
            print(f"  first call after idle {first:.2f} ms, next calls p50 {after:.2f} ms")


async def one_call(info: dict[str, Any]) -> float:
    bench = BenchConfig(
        topic=speed.TOPIC, intent=json.dumps({"skill": "trivial", "data": "x"}), requests=1,
        concurrency=1, warmup=0, timeout=60, proxy_xsub=info["xsub"], proxy_xpub=info["xpub"],
        progress=False,
    )  # fmt: skip
    result = await run_bench(bench)
    return float(result.latency_ms["p50"])


async def main(args: argparse.Namespace) -> None:
    speed.WAITING[:] = args.server_arg
    print(f"load average at start: {speed.uptime()} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        skills = speed.write_skills(Path(tmp))
        if not args.skip_memory:
            print("memory", flush=True)
            await idle_memory(skills, args.idle)
        figures: dict[str, list[float]] = {"cat-sh": [], "cat-sh-old": [], "trivial": []}
        async with speed.Fabric(speed.fabric_config(skills)) as fabric:
            info = fabric.endpoints()
            for i in range(args.rounds):
                for skill in figures:
                    n = args.requests if skill == "cat-sh-old" else args.requests * 2
                    res = await speed.load(info, skill, n, 20)
                    figures[skill].append(res.throughput_rps)
                last = ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in figures.items())
                print(f"round {i + 1}/{args.rounds}, load {speed.uptime()}: {last}", flush=True)
        ratios = [n / o for n, o in zip(figures["cat-sh"], figures["cat-sh-old"], strict=True)]
        new, old = (statistics.median(figures[k]) for k in ("cat-sh", "cat-sh-old"))
        print(f"run.sh cat @20: {new:.0f} req/s vs old path {old:.0f} req/s: "
              f"x{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]; "
              f"trivial py @20 {statistics.median(figures['trivial']):.0f} req/s")  # fmt: skip
    print(f"load average at end: {speed.uptime()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--idle", type=float, default=0.0, help="seconds idle, then memory again")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--server-arg", action="append", default=[], help="extra server flag")
    asyncio.run(main(parser.parse_args()))
