"""Flame graphs (py-spy) of every role under load: proxy, server, fork server, client.

    python bench/profile_roles.py [--out bench/results/issue14] [--seconds 10]
                                  [--skill trivial|trivial-reused|instructions]
                                  [--tag NAME]

Starts a fabric with bench/speed.py's skills, then loads it with
``skillscale bench`` (the trivial Python skill, 20 in flight) run under
``py-spy record``, while py-spy records the proxy, the skill server and its
fork server by pid (that needs ptrace: root, or ``kernel.yama.ptrace_scope``
0). Writes ``<role>[-<tag>].svg`` into ``--out``. ``--skill instructions``
profiles the instruction-only skill (no process, so no fork server graph);
``--skill trivial-reused`` the trivial skill with ``isolation: reused-process``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speed import TOPIC, fabric_config, write_skills

from skillscale.tools.supervisor import Fabric


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def profile(out: Path, seconds: int, skill: str = "trivial", tag: str = "") -> None:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory() as tmp:
        skills = write_skills(Path(tmp))
        async with Fabric(fabric_config(skills)) as fabric:
            info = fabric.endpoints()
            server = info["servers"][0]["pid"]
            targets = {"proxy": info["proxy_pid"], "server": server}
            if skill == "trivial":
                targets["forkserver"] = children(server)[0]
            suffix = f"-{tag}" if tag else ""
            # Enough requests to outlast the recording (instruction-only runs ~20x faster).
            per_second = {"trivial": 300, "trivial-reused": 1800}.get(skill, 6000)
            requests = per_second * seconds // 2
            recorders = [
                await asyncio.create_subprocess_exec(
                    spy,
                    "record",
                    "--nonblocking",
                    "-d",
                    str(seconds),
                    "-o",
                    str(out / f"{name}{suffix}.svg"),
                    "--pid",
                    str(pid),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name, pid in targets.items()
            ]
            client = await asyncio.create_subprocess_exec(
                spy, "record", "--nonblocking", "-o", str(out / f"client{suffix}.svg"), "--",
                sys.executable, "-m", "skillscale", "bench", "--topic", TOPIC,
                "--skill", skill, "--data", "x", "--requests", str(requests),
                "--concurrency", "20", "--no-progress", "--proxy-xsub", info["xsub"],
                "--proxy-xpub", info["xpub"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            report, _ = await client.communicate()
            print(report.decode())
            for recorder in recorders:
                await recorder.wait()
    print(json.dumps({name: str(out / f"{name}{suffix}.svg") for name in [*targets, "client"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/issue14"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--skill", choices=["trivial", "trivial-reused", "instructions"], default="trivial"
    )
    parser.add_argument("--tag", default="", help="suffix of the SVG names")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(profile(args.out, args.seconds, args.skill, args.tag))


if __name__ == "__main__":
    main()
