"""Warm vs cold executor, measured in one run on the same machine.

Starts two fabrics with `skillscale up` machinery (proxy + one server each,
2 workers): one whose server forks Python skills from the warm fork server,
one that starts a fresh interpreter per run. Each is loaded with a trivial
skill (echoes stdin) and a skill that imports `openai`, at 1 and 20 requests
in flight, through the real bus with the SDK client. Also reports the idle
memory of a warm server with 8 workers. Ratios are printed last.

    python bench/warm_vs_cold.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from skillscale.tools.bench import BenchConfig, BenchResult, run_bench
from skillscale.tools.supervisor import Fabric, FabricConfig

SKILLS = {
    "trivial": "import sys\nsys.stdout.write(sys.stdin.read())\n",
    "uses-openai": "import openai\nprint(openai.__version__)\n",
}


def write_skills(root: Path) -> Path:
    category = root / "bench"
    for name, body in SKILLS.items():
        (category / name / "scripts").mkdir(parents=True)
        (category / name / "SKILL.md").write_text(
            f"---\nname: {name}\ndescription: Benchmark skill {name}.\n---\n"
        )
        (category / name / "scripts" / "run.py").write_text(body)
    return root


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += rss_mib(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            stack += [int(c) for c in children.read_text().split()]
    return total


async def measure(executor: str, skills: Path, requests: int) -> dict[str, BenchResult]:
    config = FabricConfig(
        skills_dirs=[skills], xsub_port=0, xpub_port=0, router_port=0, metrics_port=None,
        workers=2, extra_server_args=["--executor", executor],
    )  # fmt: skip
    results: dict[str, BenchResult] = {}
    async with Fabric(config) as fabric:
        info = fabric.endpoints()
        for skill in SKILLS:
            # The cold openai skill costs ~0.5 s a call: fewer requests keep the run short.
            n = requests if skill == "trivial" or executor == "warm" else max(20, requests // 10)
            for concurrency in (1, 20):
                bench = BenchConfig(
                    topic="TOPIC_BENCH", intent=json.dumps({"skill": skill, "data": "x"}),
                    requests=n, concurrency=concurrency, warmup=3, timeout=120,
                    proxy_xsub=info["xsub"], proxy_xpub=info["xpub"], progress=False,
                )  # fmt: skip
                result = await run_bench(bench)
                if result.failed:
                    raise SystemExit(f"{executor}/{skill}: failures {result.failure_samples}")
                results[f"{skill}@{concurrency}"] = result
                print(
                    f"{executor:4} {skill:12} {concurrency:2} in flight: "
                    f"{result.throughput_rps:8.1f} req/s  p50 {result.latency_ms['p50']:7.2f} ms  "
                    f"p99 {result.latency_ms['p99']:7.2f} ms  ({n} requests)",
                    flush=True,
                )
    return results


async def idle_memory(skills: Path) -> float:
    config = FabricConfig(
        skills_dirs=[skills], xsub_port=0, xpub_port=0, router_port=0, metrics_port=None,
        workers=8, extra_server_args=["--executor", "warm"],
    )  # fmt: skip
    async with Fabric(config) as fabric:
        pid = fabric.endpoints()["servers"][0]["pid"]
        return tree_rss_mib(pid)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        skills = write_skills(Path(tmp))
        cold = await measure("cold", skills, args.requests)
        warm = await measure("warm", skills, args.requests)
        memory = await idle_memory(skills)
    print(f"\nidle warm server, 8 workers (server + fork server): {memory:.0f} MiB RSS "
          f"(target < 150)")  # fmt: skip
    print("\nratios (warm / cold):")
    for key in cold:
        speedup = warm[key].throughput_rps / cold[key].throughput_rps
        latency = warm[key].latency_ms["p50"] / cold[key].latency_ms["p50"]
        print(f"  {key:16} throughput x{speedup:6.1f}   p50 latency x{latency:5.3f}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
