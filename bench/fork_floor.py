"""What one fork costs this interpreter, before the fabric does anything.

Every warm Python run is a fork of the fork server and an exit, so the CPU
of a bare ``os.fork()`` + ``os._exit(0)`` (parent's and child's) is a floor
under issue 14's trivial-skill throughput. It depends on what the
interpreter holds when it forks: its size (page tables copied, then torn
down) and the after-fork hooks of what it imported (``threading`` and
``random`` register one each, and a fresh child's first run of any Python
code writes to shared pages). Each configuration runs in its own interpreter
with the fork server's module loaded (its imports, its module-level state)
and ``gc.freeze()``, as the fork server does:

* ``site``: the interpreter as started by default (site-packages and its
  ``.pth`` files processed; the fork server runs so);
* ``-S``: without ``site`` (the cold baseline's fast variant);
* ``-S + threading``, ``-S + random``: one module that registers an
  after-fork hook, imported alone.

    python bench/fork_floor.py [--forks N] [--rounds R]

Prints, per configuration, the median over rounds of the wall time, the
parent's and the child's CPU and the child's minor faults per fork.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import gc, importlib, importlib.util, json, os, resource, sys, time
forks, forkserver = int(sys.argv[1]), sys.argv[2]
for name in sys.argv[3:]:
    importlib.import_module(name)
# The fork server's module itself, loaded by path as the fork server starts
# it (its imports, its module-level state), not main().
spec = importlib.util.spec_from_file_location("forkserver", forkserver)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
gc.freeze()

def measure(n):
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    wall = time.perf_counter() - t0
    s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = lambda a, b: (b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime) / n * 1e6
    return {"wall_us": wall / n * 1e6, "parent_us": cpu(s0, s1), "child_us": cpu(c0, c1),
            "child_faults": (c1.ru_minflt - c0.ru_minflt) / n}

measure(max(1, forks // 10))  # the first forks also fault the parent's own pages in
out = measure(forks)
with open("/proc/self/status") as f:
    out["anon_kib"] = next(int(l.split()[1]) for l in f if l.startswith("RssAnon"))
out["threading"] = "threading" in sys.modules
out["random"] = "random" in sys.modules
print(json.dumps(out))
"""

FORKSERVER = Path(__file__).resolve().parent.parent / "skill_server" / "forkserver.py"

CONFIGS: list[tuple[str, list[str], list[str]]] = [
    ("site", [], []),
    ("-S", ["-S"], []),
    ("-S + threading", ["-S"], ["threading"]),
    ("-S + random", ["-S"], ["random"]),
]


def probe(flags: list[str], modules: list[str], forks: int) -> dict[str, float]:
    argv = [sys.executable, *flags, "-c", PROBE, str(forks), str(FORKSERVER), *modules]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in CONFIGS}
    for _ in range(args.rounds):  # alternating, so a phase of the machine hits every config
        for name, flags, modules in CONFIGS:
            rows[name].append(probe(flags, modules, args.forks))
    print(f"one fork + exit of {sys.executable} ({os.cpu_count()} CPUs), "
          f"median of {args.rounds} rounds of {args.forks} forks")  # fmt: skip
    print(f"  {'config':16} {'anon KiB':>9} {'threading':>9} {'random':>6} {'wall µs':>8} "
          f"{'parent µs':>9} {'child µs':>8} {'child faults':>12}")  # fmt: skip
    for name, results in rows.items():
        med = {k: statistics.median(float(r[k]) for r in results) for k in results[0]}
        print(f"  {name:16} {med['anon_kib']:9.0f} {bool(med['threading'])!s:>9} "
              f"{bool(med['random'])!s:>6} {med['wall_us']:8.0f} {med['parent_us']:9.0f} "
              f"{med['child_us']:8.0f} {med['child_faults']:12.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
