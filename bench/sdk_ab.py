"""The SDK client's CPU per request: this checkout's client against another revision's, A/B.

    python bench/sdk_ab.py [--rounds 6] [--requests 4000] [--baseline-rev main]

One fabric (``skillscale proxy`` + ``skillscale server``) serves the
instruction-only skill of ``bench/speed.py``. In each round both clients, the
baseline's ``skillscale/sdk/client.py`` (from ``git show REV:...``, loaded as a
module of its own beside this checkout's ``skillscale``) and this checkout's,
run the same load at 1 and at 20 requests in flight, in alternating order
(A B, then B A). Each load is timed with ``time.process_time()`` of this
process (all its threads, ZeroMQ's I/O thread included) around the calls
only, after a warm-up on a connected client; the figure is CPU µs per
request, the median over rounds with its spread, and req/s beside it. The
machine's load average is printed at the start and the end: on a shared
machine compare the two columns of one run, never runs with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speed import TOPIC, fabric_config, uptime, write_skills

from skillscale.core.runtime import run
from skillscale.sdk import client as new_client
from skillscale.tools.supervisor import Fabric

INTENT = '{"skill": "instructions", "data": "x"}'
ROOT = Path(__file__).resolve().parent.parent


def baseline_module(rev: str, tmp: Path) -> ModuleType:
    """``skillscale/sdk/client.py`` as it is at ``rev``, imported under a name of its own."""
    source = subprocess.run(
        [shutil.which("git") or "git", "-C", str(ROOT), "show", f"{rev}:skillscale/sdk/client.py"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = tmp / "sdk_client_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sdk_client_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def one_load(module: ModuleType, info: dict[str, Any], requests: int,
                   concurrency: int) -> tuple[float, float, float]:  # fmt: skip
    """(CPU µs per request: process, main thread; req/s) of ``requests`` calls at
    ``concurrency`` in flight."""
    client = module.SkillScaleClient(info["xsub"], info["xpub"], timeout=60,
                                     max_in_flight=concurrency)  # fmt: skip
    async with client:
        for _ in range(20):
            await client.call(TOPIC, INTENT)
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                reply = await client.call(TOPIC, INTENT)
                if not reply.ok:
                    raise SystemExit(f"failed: {reply.error}")

        cpu, main, wall = time.process_time(), time.thread_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, main = time.process_time() - cpu, time.thread_time() - main
        wall = time.perf_counter() - wall
    return cpu / requests * 1e6, main / requests * 1e6, requests / wall


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-" \
           f"{fmt.format(max(values))}]"  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    print(f"load average at start: {uptime()} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline_module(args.baseline_rev, Path(tmp))
        clients = {f"base ({args.baseline_rev})": base, "new (this checkout)": new_client}
        names = list(clients)
        cpu: dict[tuple[str, int], list[float]] = {(n, c): [] for n in names for c in (1, 20)}
        rps: dict[tuple[str, int], list[float]] = {(n, c): [] for n in names for c in (1, 20)}
        main: dict[tuple[str, int], list[float]] = {(n, c): [] for n in names for c in (1, 20)}
        skills = write_skills(Path(tmp) / "skills")
        async with Fabric(fabric_config(skills)) as fabric:
            info = fabric.endpoints()
            for i in range(args.rounds):
                order = names if i % 2 == 0 else names[::-1]
                for concurrency in (1, 20):
                    n = args.requests // 4 if concurrency == 1 else args.requests
                    for name in order:
                        c, m, r = await one_load(clients[name], info, n, concurrency)
                        cpu[name, concurrency].append(c)
                        main[name, concurrency].append(m)
                        rps[name, concurrency].append(r)
                print(f"round {i + 1}/{args.rounds} done, load {uptime()}", flush=True)
    print(f"load average at end: {uptime()}")
    print(f"\nclient CPU µs per request, median [min-max] of {args.rounds} alternating rounds"
          " (process: all threads; main: the event loop's thread, without ZeroMQ's I/O"
          " thread)")  # fmt: skip
    for concurrency in (1, 20):
        for name in names:
            key = (name, concurrency)
            print(f"  {concurrency:2} in flight  {name:22} process {spread(cpu[key], '{:.1f}')}"
                  f"  main {spread(main[key], '{:.1f}')}  {spread(rps[key])} req/s")  # fmt: skip
        for label, table in (("process", cpu), ("main", main)):
            a, b = (statistics.median(table[n, concurrency]) for n in names)
            print(f"  {concurrency:2} in flight  new/base {label} CPU ratio {b / a:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=4000, help="at 20 in flight; 1/4 at 1")
    parser.add_argument("--baseline-rev", default="main")
    args = parser.parse_args()
    run(lambda: main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
