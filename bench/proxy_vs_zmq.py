"""Our proxy vs libzmq's own proxy device (`zmq.proxy`), measured in one run.

Both proxies run as separate processes with the same Python sender and
receiver processes:

* stream: the sender publishes N two-frame messages as fast as it can; the
  receiver counts them. Queues are sized so nothing may be dropped, so a
  missing message is a real loss. Throughput is measured at the receiver.
* round trips: a requester keeps 1 or 20 messages in flight through the
  proxy to an echo process and back, like requests and replies.

Our proxy runs as `skillscale proxy` with its Prometheus metrics on and
replica groups on (the real forwarding path). Ratios are printed last.

    python bench/proxy_vs_zmq.py [--messages N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import zmq

TOPIC = b"TOPIC_BENCH"
PAYLOAD = b'{"request_id":"0123456789abcdef","reply_to":"AGENT_REPLY_x","intent":"hello"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def zmq_device(xsub: str, xpub: str) -> None:
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    for sock in (front, back):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    front.bind(xsub)
    back.bind(xpub)
    zmq.proxy(front, back)


def receiver(xpub: str, count: int, ready: Any, out: Any) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
    sub.connect(xpub)
    ready.set()
    got, first, last = 0, 0.0, 0.0
    while got < count and sub.poll(5000):
        sub.recv_multipart()
        got += 1
        if got == 1:
            first = time.perf_counter()
        last = time.perf_counter()
    out.put((got, first, last))


def sender(xsub: str, count: int, go: Any) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(xsub)
    # Wait until the proxy's subscription reached us (probe round trips would
    # need a receiver; a short, bounded settle is the benchmark's only sleep).
    go.wait()
    time.sleep(0.5)
    for _ in range(count):
        pub.send_multipart([TOPIC, PAYLOAD])
    pub.close(linger=-1)
    ctx.term()


def echo(xsub: str, xpub: str, ready: Any) -> None:
    ctx = zmq.Context()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"PING")
    sub.connect(xpub)
    pub.connect(xsub)
    ready.set()
    while True:
        _, body = sub.recv_multipart()
        pub.send_multipart([b"PONG", body])


def round_trips(xsub: str, xpub: str, in_flight: int, total: int) -> float:
    ctx = zmq.Context()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"PONG")
    sub.connect(xpub)
    pub.connect(xsub)
    # Prime the path: ping until a pong comes back.
    while True:
        pub.send_multipart([b"PING", b"prime"])
        if sub.poll(100):
            sub.recv_multipart()
            break
    while sub.poll(200):
        sub.recv_multipart()
    started = time.perf_counter()
    sent = done = 0
    while sent < min(in_flight, total):
        pub.send_multipart([b"PING", b"x"])
        sent += 1
    while done < total:
        if not sub.poll(5000):
            raise SystemExit("round trip lost")
        sub.recv_multipart()
        done += 1
        if sent < total:
            pub.send_multipart([b"PING", b"x"])
            sent += 1
    elapsed = time.perf_counter() - started
    sub.close(0)
    pub.close(0)
    ctx.term()
    return total / elapsed


def start_ours(
    xsub: str, xpub: str, messages: int, checkout: str | None = None
) -> subprocess.Popen[bytes]:
    # Its queues hold the whole burst, as the device's unbounded ones do (by
    # default a subscriber 1,000 messages behind, or a publisher 100,000
    # ahead, loses messages: XSUB drops at its high-water mark).
    proc = subprocess.Popen(
        [sys.executable, "-m", "skillscale", "proxy", "--xsub-bind", xsub, "--xpub-bind", xpub,
         "--router-bind", f"tcp://127.0.0.1:{free_port()}", "--metrics-host", "127.0.0.1",
         "--metrics-port", "0", "--subscriber-hwm", str(messages + 1000),
         "--hwm", str(messages + 1000)],
        stdout=subprocess.PIPE, cwd=checkout,
    )  # fmt: skip
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())  # the ready line
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(kind: str, messages: int, checkout: str | None = None) -> dict[str, float]:
    """One proxy's figures: ``kind`` is ``zmq`` or ``ours`` (run from ``checkout``
    if given: the same benchmark against another version of the code)."""
    xsub, xpub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    spawn = mp.get_context("spawn")
    if kind == "zmq":
        proxy: Any = spawn.Process(target=zmq_device, args=(xsub, xpub), daemon=True)
        proxy.start()
    else:
        proxy = start_ours(xsub, xpub, messages, checkout)
    try:
        ready, out = spawn.Event(), spawn.Queue()
        rx = spawn.Process(target=receiver, args=(xpub, messages, ready, out))
        rx.start()
        ready.wait(10)
        tx = spawn.Process(target=sender, args=(xsub, messages, ready))
        cpu_before = cpu_seconds(proxy.pid)
        tx.start()
        got, first, last = out.get(timeout=300)
        cpu = cpu_seconds(proxy.pid) - cpu_before
        tx.join(30)
        rx.join(30)
        figures = {"stream_rate": (got - 1) / (last - first) if got > 1 else 0.0,
                   "lost": float(messages - got),
                   "cpu_us_per_msg": cpu / max(got, 1) * 1e6}  # fmt: skip
        echo_ready = spawn.Event()
        responder = spawn.Process(target=echo, args=(xsub, xpub, echo_ready), daemon=True)
        responder.start()
        echo_ready.wait(10)
        for in_flight in (1, 20):
            figures[f"rt{in_flight}"] = round_trips(xsub, xpub, in_flight, 5000 * in_flight // 4)
        responder.terminate()
        return figures
    finally:
        if kind == "zmq":
            proxy.terminate()
        else:
            proxy.terminate()
            proxy.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run our proxy from this checkout (an A/B of two versions)",
    )
    args = parser.parse_args()
    kinds = [("zmq", None), ("ours", None)] + ([("base", args.baseline)] if args.baseline else [])
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rounds: list[dict[str, dict[str, float]]] = []
    for i in range(args.rounds):
        results = {k: run("zmq" if k == "zmq" else "ours", args.messages, c) for k, c in kinds}
        rounds.append(results)
        for kind, fig in results.items():
            print(
                f"{i + 1} {kind:5} stream {fig['stream_rate']:>10,.0f} msg/s  lost "
                f"{fig['lost']:.0f}  proxy CPU {fig['cpu_us_per_msg']:5.1f} µs/msg  round "
                f"trips: 1 in flight {fig['rt1']:>8,.0f}/s  20 in flight {fig['rt20']:>8,.0f}/s"
            )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\nratios to libzmq's proxy device, median of rounds [min-max]:")
    for key, label in (("stream_rate", "stream"), ("rt1", "1 in flight"), ("rt20", "20 in flight")):
        for kind, _ in kinds[1:]:
            ratios = [r[kind][key] / r["zmq"][key] for r in rounds]
            print(f"  {label:13} {kind:5} x{statistics.median(ratios):.3f} "
                  f"[{min(ratios):.3f}-{max(ratios):.3f}]")  # fmt: skip


if __name__ == "__main__":
    main()
