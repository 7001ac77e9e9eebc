"""Issue 14's speed targets, each a ratio measured in one run, plus the breakdown.

    python bench/speed.py [--rounds 3] [--requests 400] [--messages 200000]

Runs on one machine, in one go:

* a cold baseline: ``python run.py < input`` spawned serially (median time,
  serial rate), alternated round by round with the fabric figures below so
  that load on a shared machine hits both alike;
* a fabric (``skillscale proxy`` + ``skillscale server``, defaults: warm
  executor, default workers) serving a trivial Python skill (copies stdin to
  stdout), an instruction-only skill, a ``run.sh`` skill (``cat``) on the
  current path and the same ``run.sh`` with ``metadata.warm: false``, which is
  exactly the path every ``run.sh`` took before this issue (the cold
  trampoline, whose code is unchanged);
* our proxy against libzmq's ``zmq.proxy`` (``bench/proxy_vs_zmq.py``, per-topic
  metrics on), alternated;
* the idle RSS of a warm server with 8 workers (server + fork server + its
  waiting children; RSS counts shared pages once per process);
* a breakdown of one trivial call in microseconds, from timestamps taken along
  the path (``skillscale.core.stamps``, wall clock, all processes on this
  machine).

Prints the targets table (figure, target, measured, ratio, pass/fail, with the
spread over rounds) and the breakdown table. ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fork_floor

from skillscale.core import stamps
from skillscale.core.runtime import run, within
from skillscale.tools.bench import BenchConfig, BenchResult, run_bench
from skillscale.tools.supervisor import Fabric, FabricConfig

TOPIC = "TOPIC_SPEED"
TRIVIAL = "import sys\nsys.stdout.write(sys.stdin.read())\n"


def write_skills(root: Path) -> Path:
    """The benchmark's skills, in one category (one server)."""
    category = root / "speed"
    skills: dict[str, tuple[str, str | None, str]] = {
        "trivial": ("", "run.py", TRIVIAL),
        "trivial-reused": ("metadata:\n  isolation: reused-process\n", "run.py", TRIVIAL),
        "cat-sh": ("", "run.sh", "cat\n"),
        "cat-sh-old": ("metadata:\n  warm: 'false'\n", "run.sh", "cat\n"),
        "instructions": ("", None, ""),
    }
    for name, (meta, script, body) in skills.items():
        folder = category / name
        folder.mkdir(parents=True)
        (folder / "SKILL.md").write_text(
            f"---\nname: {name}\ndescription: Speed benchmark skill {name}.\n{meta}---\n"
            f"Instructions of {name}: answer briefly.\n"
        )
        if script is not None:
            (folder / "scripts").mkdir()
            (folder / "scripts" / script).write_text(body)
    return root


def uptime() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- cold baseline -------------------------------------------------------------


def cold_spawns(script: Path, count: int, *flags: str) -> list[float]:
    """Milliseconds per serial ``python [flags] run.py`` (stdin piped, stdout read)."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run([sys.executable, *flags, str(script)], input=b"x", capture_output=True,
                       check=True)  # fmt: skip
        times.append((time.perf_counter() - started) * 1000)
    return times


# -- fabric --------------------------------------------------------------------


WAITING: list[str] = []
"""Extra server flags (``--waiting-children N``) for every fabric of this run."""


PREFETCH = 32
"""``server --prefetch`` of the second fabric, whose instruction-only figures are
reported beside the default's (the default is 0: see docs/speed.md)."""


def fabric_config(skills: Path, workers: int | None = None, prefetch: int = 0) -> FabricConfig:
    extra = list(WAITING) + (["--prefetch", str(prefetch)] if prefetch else [])
    return FabricConfig(
        skills_dirs=[skills], xsub_port=0, xpub_port=0, router_port=0, metrics_port=None,
        workers=workers, extra_server_args=extra,
    )  # fmt: skip


class ProcCounters(NamedTuple):
    """What ``/proc/<pid>/stat`` says a process has used so far."""

    cpu: float
    """User + system CPU seconds (all its threads)."""
    reaped_cpu: float
    """The same, of its children it has reaped."""
    faults: int
    """Minor page faults (copy-on-write ones among them). Unlike CPU time,
    the count hardly moves with the machine's phase."""
    reaped_faults: int
    """The same, of its children it has reaped."""


def proc_counters(pid: int) -> ProcCounters:
    """One read of ``/proc/<pid>/stat``: every counter from the same instant."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ProcCounters(
        cpu=(int(fields[11]) + int(fields[12])) / tick,
        reaped_cpu=(int(fields[13]) + int(fields[14])) / tick,
        faults=int(fields[7]),
        reaped_faults=int(fields[8]),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads)."""
    return proc_counters(pid).cpu


def child_pids(pid: int) -> list[int]:
    """The children of ``pid`` (a skill server's: its fork servers)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def cpu_load(info: dict[str, Any], skill: str, requests: int,
                   concurrency: int) -> tuple[BenchResult, dict[str, float]]:  # fmt: skip
    """A load, and the CPU µs per request it cost each role (this process is the
    client); for a script skill also the fork server's and the skill
    processes' (those it reaped, and those alive: a reused process lives on)."""
    server = info["servers"][0]["pid"]
    pids = {"client": os.getpid(), "proxy": info["proxy_pid"], "server": server}
    forkservers = child_pids(server)

    def now() -> dict[str, float]:
        spent = {role: cpu_seconds(pid) for role, pid in pids.items()}
        if skill != "instructions":
            counters = [proc_counters(pid) for pid in forkservers]
            live = []
            for pid in forkservers:
                for child in child_pids(pid):
                    with contextlib.suppress(OSError):  # gone since the list was read
                        live.append(proc_counters(child))
            spent["fork server"] = sum(c.cpu for c in counters)
            spent["skill processes"] = sum(c.reaped_cpu for c in counters) + sum(
                c.cpu for c in live
            )
            # Counts, not seconds: scaled by 1e-6 so the per-request figure below is a count.
            spent["fork server faults"] = sum(c.faults for c in counters) / 1e6
            spent["skill process faults"] = (
                sum(c.reaped_faults for c in counters) + sum(c.faults for c in live)
            ) / 1e6
        return spent

    before = now()
    result = await load(info, skill, requests, concurrency)
    after = now()
    return result, {role: (after[role] - before[role]) / requests * 1e6 for role in before}


async def load(info: dict[str, Any], skill: str, requests: int, concurrency: int) -> BenchResult:
    bench = BenchConfig(
        topic=TOPIC, intent=json.dumps({"skill": skill, "data": "x"}), requests=requests,
        concurrency=concurrency, warmup=5, timeout=60, proxy_xsub=info["xsub"],
        proxy_xpub=info["xpub"], progress=False,
    )  # fmt: skip
    result = await run_bench(bench)
    if result.failed:
        raise SystemExit(f"{skill}@{concurrency}: failures {result.failure_samples}")
    return result


@dataclass
class Figures:
    """One round's figures."""

    cold_median_ms: float
    cold_rate: float
    """The faster of ``python run.py`` and ``python -S run.py`` (the baseline)."""
    cold_both: tuple[float, float]
    """Median ms of ``python run.py`` and of ``python -S run.py``: a machine whose
    site hooks slow every start (a ``.pth`` importing certifi, say) would
    otherwise make the fabric look faster next to it than it is."""
    fabric: dict[str, BenchResult]
    cpu: dict[str, dict[str, float]]
    """CPU µs per request by role for the loads at 20 in flight; for a script
    skill also minor faults per request (the keys ending in ``" faults"``)."""


TRACE_LISTENER = """
import sys, zmq
sub = zmq.Context().socket(zmq.SUB)
sub.connect(sys.argv[1])
sub.subscribe(b"_SKILLSCALE_TRACE")
print("ready", flush=True)
while True:
    sub.recv_multipart()
"""
"""A subscriber to trace events (what a gateway or a distiller is), in its own process."""


async def traced_load(info: dict[str, Any], requests: int) -> tuple[BenchResult, dict[str, float]]:
    """Instruction-only at 20 in flight while something subscribes to trace events:
    servers then build and send one per request (without a subscriber they do not)."""
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TRACE_LISTENER, info["xpub"], stdout=subprocess.PIPE
    )
    try:
        assert listener.stdout is not None
        if (await within(listener.stdout.readline(), 30)).strip() != b"ready":
            raise SystemExit("the trace subscriber did not start")
        await load(info, "instructions", 200, 20)  # the subscription reaches the servers
        return await cpu_load(info, "instructions", requests, 20)
    finally:
        listener.kill()
        await listener.wait()


async def instruction_loads(info: dict[str, Any], prefetched: dict[str, Any], requests: int,
                            figures: dict[str, BenchResult],
                            cpu: dict[str, dict[str, float]]) -> None:  # fmt: skip
    """Instruction-only at 1 and 20 in flight, on the default fabric and the prefetching one."""
    for tag, where in (("", info), ("+prefetch", prefetched)):
        figures[f"instructions{tag}@1"] = await load(where, "instructions", requests * 2, 1)
        figures[f"instructions{tag}@20"], cpu[f"instructions{tag}@20"] = await cpu_load(
            where, "instructions", requests * 25, 20
        )
    figures["instructions+traced@20"], cpu["instructions+traced@20"] = await traced_load(
        info, requests * 25
    )


async def one_round(info: dict[str, Any], prefetched: dict[str, Any], script: Path,
                    requests: int, *, only_instructions: bool = False) -> Figures:  # fmt: skip
    count = max(30, requests // 8)
    cold, bare = cold_spawns(script, count), cold_spawns(script, count, "-S")
    both = (statistics.median(cold), statistics.median(bare))
    if both[1] < both[0]:
        cold = bare  # the trivial skill imports nothing: -S is the same start, minus site hooks
    fabric: dict[str, BenchResult] = {}
    cpu: dict[str, dict[str, float]] = {}
    if not only_instructions:
        fabric["trivial@1"] = await load(info, "trivial", requests, 1)
        fabric["trivial@20"], cpu["trivial@20"] = await cpu_load(info, "trivial", requests * 2, 20)
        # The opt-in mode that gives up a fresh process per run (not the target's default).
        fabric["reused@1"] = await load(info, "trivial-reused", requests, 1)
        fabric["reused@20"], cpu["reused@20"] = await cpu_load(
            info, "trivial-reused", requests * 4, 20
        )
    await instruction_loads(info, prefetched, requests, fabric, cpu)
    if not only_instructions:
        for skill, concurrency, n in (("cat-sh", 20, requests * 2), ("cat-sh-old", 20, requests)):
            fabric[f"{skill}@{concurrency}"] = await load(info, skill, n, concurrency)
    return Figures(statistics.median(cold), 1000 / statistics.mean(cold), both, fabric, cpu)


# -- breakdown -----------------------------------------------------------------

PATH_STAGES = (
    ("client encode and send", "client.call", "client.sent"),
    ("bus: client -> proxy", "client.sent", "proxy.in"),
    ("proxy group dispatch", "proxy.in", "proxy.dispatched"),
    ("bus: proxy -> server", "proxy.dispatched", "server.recv"),
    ("server receive and decode", "server.recv", "server.decoded"),
    ("queue -> worker", "server.decoded", "server.worker"),
    ("match", "server.worker", "server.matched"),
    ("executor hand-off (spawn returns)", "exec.start", "exec.spawned"),
    ("child ready (header, fds, env)", "exec.spawned", "child.ready"),
    ("script run", "child.ready", "child.ran"),
    ("exit and reap (fork server, off path)", "child.ran", "fork.reaped"),
    ("end seen by executor (report or exit)", "child.ran", "exec.exited"),
    ("pipes drained, run done", "exec.exited", "exec.done"),
    ("result -> reply", "exec.done", "server.encode"),
    ("reply encode and send", "server.encode", "server.replied"),
    ("bus: server -> proxy", "server.replied", "proxy.reply"),
    ("proxy publish", "proxy.reply", "proxy.published"),
    ("bus: proxy -> client", "proxy.published", "client.recv"),
    ("client wake-up (decode, future)", "client.recv", "client.woken"),
)


def parse_stamps(path: Path) -> dict[str, list[int]]:
    by_stage: dict[str, list[int]] = defaultdict(list)
    for line in path.read_text().splitlines():
        stage, _pid, ns = line.split()
        by_stage[stage].append(int(ns))
    return by_stage


def breakdown_rows(by_stage: dict[str, list[int]], calls: int) -> list[tuple[str, float, float]]:
    """(stage, median µs, p90 µs) over the last ``calls`` calls (serial, one at a time)."""
    rows = []

    def last(stage: str) -> list[int]:
        return by_stage.get(stage, [])[-calls:]

    for label, start, end in PATH_STAGES:
        a, b = last(start), last(end)
        if len(a) != calls or len(b) != calls:
            continue
        deltas = sorted((y - x) / 1000 for x, y in zip(a, b, strict=True))
        rows.append((label, statistics.median(deltas), deltas[int(len(deltas) * 0.9)]))
    fork_a, fork_b = by_stage.get("fork.start", []), by_stage.get("fork.done", [])
    if fork_a and len(fork_a) == len(fork_b):
        forks = sorted((y - x) / 1000 for x, y in zip(fork_a, fork_b, strict=True))
        # With waiting children the fork happened before the request came:
        # compare the i-th fork with the i-th hand-off to tell.
        # On the path when it falls inside a call's hand-off (exec.start to
        # exec.spawned); a waiting child's fork happens before its call came.
        windows = list(zip(last("exec.start"), last("exec.spawned"), strict=False))
        on_path = sum(1 for f in fork_a[-calls:] if any(a <= f <= b for a, b in windows))
        where = "on path" if on_path > calls // 2 else "off the request path"
        rows.append((f"fork (fork server, {where})", statistics.median(forks),
                     forks[int(len(forks) * 0.9)]))  # fmt: skip
    a, b = last("client.call"), last("client.woken")
    if len(a) == len(b) == calls:
        total = sorted((y - x) / 1000 for x, y in zip(a, b, strict=True))
        rows.append(("TOTAL (client call -> woken)", statistics.median(total),
                     total[int(len(total) * 0.9)]))  # fmt: skip
        # A call is slower by about a fork for each waiting child the fork
        # server forks during it (to replace the one a call took): the split
        # shows how much of TOTAL that is (one fork per call on average).
        spans = list(zip(fork_a, fork_b, strict=False))
        by_forks: dict[int, list[float]] = defaultdict(list)
        for x, y in zip(a, b, strict=True):
            during = min(2, sum(1 for f, g in spans if f < y and g > x))
            by_forks[during].append((y - x) / 1000)
        for during, totals in sorted(by_forks.items()):
            totals.sort()
            what = {0: "no fork", 1: "1 fork", 2: "2+ forks"}[during]
            label = f"  calls during {what} ({len(totals)})"
            rows.append((label, statistics.median(totals), totals[int(len(totals) * 0.9)]))
    return rows


async def breakdown(skills: Path, calls: int) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stamps.log"
        saved = os.environ.get(stamps.ENV)
        stamps.enable(str(path))
        try:
            async with Fabric(fabric_config(skills)) as fabric:
                info = fabric.endpoints()
                path.write_text("")  # start-up stamps are not calls
                bench = BenchConfig(
                    topic=TOPIC, intent=json.dumps({"skill": "trivial", "data": "x"}),
                    requests=calls, concurrency=1, warmup=10, timeout=60,
                    proxy_xsub=info["xsub"], proxy_xpub=info["xpub"], progress=False,
                )  # fmt: skip
                await run_bench(bench)
                await asyncio.sleep(0.2)  # the last reap is stamped after the reply
        finally:
            stamps.disable()
            if saved is None:
                os.environ.pop(stamps.ENV, None)
        return breakdown_rows(parse_stamps(path), calls)


def print_breakdown(rows: list[tuple[str, float, float]]) -> None:
    print("\nbreakdown of one trivial call, 1 in flight (µs, wall clock across processes)")
    print(f"  {'stage':40} {'median':>9} {'p90':>9}")
    for label, median, p90 in rows:
        print(f"  {label:40} {median:9.0f} {p90:9.0f}")


# -- proxy and memory ----------------------------------------------------------


def proxy_rounds(messages: int, rounds: int) -> list[tuple[dict[str, float], dict[str, float]]]:
    import proxy_vs_zmq

    return [
        (proxy_vs_zmq.run("zmq", messages), proxy_vs_zmq.run("ours", messages))
        for _ in range(rounds)
    ]


def tree_pids(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            stack += [int(c) for c in children.read_text().split()]
    return out


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages split between the processes sharing them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def idle_rss(skills: Path) -> tuple[float, float, int]:
    """(RSS summed over the server's process tree, PSS summed likewise, processes)."""
    from warm_vs_cold import rss_mib

    async with Fabric(fabric_config(skills, workers=8)) as fabric:
        await asyncio.sleep(1.0)  # let the waiting children be forked
        pids = tree_pids(fabric.endpoints()["servers"][0]["pid"])
        return sum(map(rss_mib, pids)), sum(map(pss_mib, pids)), len(pids)


# -- report --------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    """``median [min-max]``."""
    low, mid, high = (fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} [{low}-{high}]"


Collected = tuple[
    list[tuple[str, float, float]],
    list[Figures],
    list[tuple[dict[str, float], dict[str, float]]],
    tuple[float, float, int],
]


async def collect(args: argparse.Namespace) -> Collected | None:
    """Every measurement, in order; None with ``--only-breakdown``."""
    print(f"load average at start: {uptime()} on {os.cpu_count()} cores", flush=True)
    only = args.only_instructions
    with tempfile.TemporaryDirectory() as tmp:
        skills = write_skills(Path(tmp))
        script = skills / "speed" / "trivial" / "scripts" / "run.py"
        rows = [] if only else await breakdown(skills, args.breakdown_calls)
        if not only:
            print_breakdown(rows)
        if args.only_breakdown:
            return None
        rounds: list[Figures] = []
        async with Fabric(fabric_config(skills)) as fabric, \
                Fabric(fabric_config(skills, prefetch=PREFETCH)) as prefetching:  # fmt: skip
            info, prefetched = fabric.endpoints(), prefetching.endpoints()
            for i in range(args.rounds):
                print(f"round {i + 1}/{args.rounds}, load {uptime()}", flush=True)
                rounds.append(await one_round(info, prefetched, script, args.requests,
                                              only_instructions=only))  # fmt: skip
        proxies: list[tuple[dict[str, float], dict[str, float]]] = []
        rss = (math.nan, math.nan, 0)
        if not only:
            print(f"proxy vs zmq.proxy, load {uptime()}", flush=True)
            proxies = proxy_rounds(args.messages, args.rounds)
            rss = await idle_rss(skills)
    print(f"load average at end: {uptime()}")
    return rows, rounds, proxies, rss


def full_table(rounds: list[Figures], proxies: list[tuple[dict[str, float], dict[str, float]]],
               memory: tuple[float, float, int],
               fab: Any) -> list[tuple[str, str, str, float, bool | None]]:  # fmt: skip
    """The targets other than the instruction-only ones."""
    rss, pss, processes = memory
    cold_med = [r.cold_median_ms for r in rounds]
    cold_rate = [r.cold_rate for r in rounds]
    t1_p50, t1_p99 = fab("trivial@1", "p50"), fab("trivial@1", "p99")
    t20 = fab("trivial@20", "rps")
    sh_new, sh_old = fab("cat-sh@20", "rps"), fab("cat-sh-old@20", "rps")
    stream = [ours["stream_rate"] / zmq_["stream_rate"] for zmq_, ours in proxies]
    lost = sum(ours["lost"] for _, ours in proxies)
    ratios_t1 = [p / c for p, c in zip(t1_p50, cold_med, strict=True)]
    ratios_t20 = [r / c for r, c in zip(t20, cold_rate, strict=True)]
    r1, r20 = fab("reused@1", "p50"), fab("reused@20", "rps")
    ratios_r1 = [p / c for p, c in zip(r1, cold_med, strict=True)]
    ratios_r20 = [r / c for r, c in zip(r20, cold_rate, strict=True)]
    ratios_sh = [n / o for n, o in zip(sh_new, sh_old, strict=True)]
    ratios_p99 = [b / a for a, b in zip(t1_p50, t1_p99, strict=True)]
    plain, bare = [r.cold_both[0] for r in rounds], [r.cold_both[1] for r in rounds]
    return [
        ("cold spawn: python run.py / -S", "(the faster is the base)",
         f"{spread(plain, '{:.2f}')} ms / {spread(bare, '{:.2f}')} ms",
         statistics.median(bare) / statistics.median(plain), None),
        ("trivial py, 1 in flight, p50", "<= 0.35 x cold median",
         f"{spread(t1_p50, '{:.2f}')} ms vs cold {spread(cold_med, '{:.2f}')} ms",
         statistics.median(ratios_t1), statistics.median(ratios_t1) <= 0.35),
        ("trivial py, 1 in flight, p99/p50", "<= 3", f"p99 {spread(t1_p99, '{:.2f}')} ms",
         statistics.median(ratios_p99), statistics.median(ratios_p99) <= 3),
        ("trivial py, 20 in flight", ">= 5 x serial cold rate",
         f"{spread(t20, '{:.0f}')} req/s vs cold {spread(cold_rate, '{:.0f}')}/s",
         statistics.median(ratios_t20), statistics.median(ratios_t20) >= 5),
        ("  same, isolation: reused-process, 1", "opt-in, not the target",
         f"{spread(r1, '{:.2f}')} ms", statistics.median(ratios_r1), None),
        ("  same, isolation: reused-process, 20", "opt-in, not the target",
         f"{spread(r20, '{:.0f}')} req/s", statistics.median(ratios_r20), None),
        ("run.sh cat, 20 in flight", ">= 2 x old path",
         f"{spread(sh_new, '{:.0f}')} vs old {spread(sh_old, '{:.0f}')} req/s",
         statistics.median(ratios_sh), statistics.median(ratios_sh) >= 2),
        ("proxy stream vs zmq.proxy", ">= 0.8 x, 0 lost",
         f"ours {spread([o['stream_rate'] for _, o in proxies], '{:.0f}')} vs zmq "
         f"{spread([z['stream_rate'] for z, _ in proxies], '{:.0f}')} msg/s, lost {lost:.0f}",
         statistics.median(stream), statistics.median(stream) >= 0.8 and lost == 0),
        ("idle server RSS, 8 workers", "< 150 MiB",
         f"{rss:.0f} MiB RSS summed over {processes} processes (PSS {pss:.0f} MiB)",
         rss / 150, rss < 150),
    ]  # fmt: skip


def split_faults(
    cpu: dict[str, dict[str, float]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """A round's per-request figures as (CPU µs by role, fault counts by process)."""
    times = {load: {k: v for k, v in roles.items() if not k.endswith(" faults")}
             for load, roles in cpu.items()}  # fmt: skip
    faults = {load: {k: v for k, v in roles.items() if k.endswith(" faults")}
              for load, roles in cpu.items()}  # fmt: skip
    return times, {load: counts for load, counts in faults.items() if counts}


def cpu_line(rounds: list[Figures], key: str, roles: tuple[str, ...]) -> str:
    """The median CPU µs per request of each role over ``rounds``, their total,
    and the request rate that total allows on two cores."""
    per_role = {role: statistics.median(r.cpu[key][role] for r in rounds) for role in roles}
    total = sum(per_role.values())
    return ("  ".join(f"{k} {v:4.0f}" for k, v in per_role.items())
            + f"  total {total:4.0f}  (2 cores: at most {2e6 / total:,.0f} req/s)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--breakdown-calls", type=int, default=300)
    parser.add_argument("--only-breakdown", action="store_true")
    parser.add_argument(
        "--only-instructions",
        action="store_true",
        help="only the instruction-only figures (default and --prefetch fabric)",
    )
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--waiting-children", type=int, help="server default if not given")
    args = parser.parse_args()
    if args.waiting_children is not None:
        WAITING[:] = ["--waiting-children", str(args.waiting_children)]
    collected = run(lambda: collect(args))  # uvloop, as every role (and skillscale bench) runs
    if collected is None:
        return 0
    rows, rounds, proxies, (rss, pss, processes) = collected

    def fab(key: str, what: str) -> list[float]:
        out = []
        for r in rounds:
            res = r.fabric[key]
            out.append(res.throughput_rps if what == "rps" else res.latency_ms[what])
        return out

    i1, i20 = fab("instructions@1", "p50"), fab("instructions@20", "rps")
    p1, p20 = fab("instructions+prefetch@1", "p50"), fab("instructions+prefetch@20", "rps")
    t20 = fab("instructions+traced@20", "rps")
    pre = f"server --prefetch {PREFETCH}"
    table = [
        ("instruction-only, 1 in flight, p50", "<= 1 ms", f"{spread(i1, '{:.3f}')} ms",
         statistics.median(i1), statistics.median(i1) <= 1.0),
        ("instruction-only, 20 in flight", ">= 10000 req/s", f"{spread(i20, '{:.0f}')} req/s",
         statistics.median(i20) / 10_000, statistics.median(i20) >= 10_000),
        (f"  same, {pre}: 1 in flight", "<= 1 ms", f"{spread(p1, '{:.3f}')} ms",
         statistics.median(p1), statistics.median(p1) <= 1.0),
        (f"  same, {pre}: 20 in flight", ">= 10000 req/s", f"{spread(p20, '{:.0f}')} req/s",
         statistics.median(p20) / 10_000, statistics.median(p20) >= 10_000),
        ("  same, trace subscriber: 20 in flight", ">= 10000 req/s",
         f"{spread(t20, '{:.0f}')} req/s", statistics.median(t20) / 10_000,
         statistics.median(t20) >= 10_000),
    ]  # fmt: skip
    if not args.only_instructions:
        table = full_table(rounds, proxies, (rss, pss, processes), fab) + table
    print(f"\ntargets (median of {args.rounds} alternating rounds [min-max])")
    print(f"  {'figure':36} {'target':24} {'ratio':>7}  {'pass':4}  measured")
    for figure, target, measured, ratio, ok in table:
        verdict = "info" if ok is None else "PASS" if ok else "FAIL"
        print(f"  {figure:36} {target:24} {ratio:7.3f}  {verdict:4}  {measured}")
    print(
        "\nCPU per instruction-only request at 20 in flight (µs, all threads; "
        "this process is the client)"
    )
    labels = {"instructions@20": "default", "instructions+prefetch@20": pre,
              "instructions+traced@20": "trace subscriber"}  # fmt: skip
    for key, label in labels.items():
        print(f"  {label:24} " + cpu_line(rounds, key, ("client", "proxy", "server")))
    floor: dict[str, float] | None = None
    if not args.only_instructions:
        print("\nCPU per trivial Python request at 20 in flight (µs; skill processes: "
              "the fork server's children, reaped and alive)")  # fmt: skip
        roles = ("client", "proxy", "server", "fork server", "skill processes")
        print("  " + cpu_line(rounds, "trivial@20", roles))
        print("  isolation: reused-process (opt-in): "
              + cpu_line(rounds, "reused@20", roles))  # fmt: skip
        if all("fork server faults" in r.cpu["trivial@20"] for r in rounds):
            faults = {k: statistics.median(r.cpu["trivial@20"][k] for r in rounds)
                      for k in ("fork server faults", "skill process faults")}  # fmt: skip
            print(f"  minor page faults per request: fork server {faults['fork server faults']:.0f}"
                  f", skill processes {faults['skill process faults']:.0f}")  # fmt: skip
        # The floor under all of it: one bare fork + exit of this interpreter,
        # which every warm run pays before any of its own work.
        floor = fork_floor.probe([], [], 400)
        hooks = " and ".join(m for m in ("threading", "random") if floor[m]) or "neither"
        print(f"  floor, one bare fork + exit of this interpreter (bench/fork_floor.py): "
              f"parent {floor['parent_us']:.0f} µs, child {floor['child_us']:.0f} µs, "
              f"child faults {floor['child_faults']:.0f}; imported at start-up, with "
              f"after-fork hooks: {hooks}")  # fmt: skip
    if rows:
        print_breakdown(rows)
    if args.json_out:
        split = [split_faults(r.cpu) for r in rounds]
        Path(args.json_out).write_text(json.dumps({
            "load": uptime(), "breakdown": rows,
            "targets": [dict(zip(("figure", "target", "measured", "ratio", "pass"), t, strict=True))
                        for t in table],
            "proxy_rounds": proxies, "cpu_us_per_request": [times for times, _ in split],
            "minor_faults_per_request": [faults for _, faults in split],
            "fork_floor": floor,
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
