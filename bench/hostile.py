"""The proxy under the audit's resource attacks (issue 8), default settings.

Starts a real proxy and one server (the test fixture skills) on free loopback
ports and prints, for each attack, the proxy's memory and whether a fresh
legitimate caller is still answered:

* a subscriber to everything that never reads, then 5,000 x 64 KiB messages;
* eight 100 MiB requests (past the 32 MiB hard cap) and one of 10 MiB;
* one peer subscribing 200,000 prefixes, with the rate of 300 sequential
  instruction-only calls before and after.

    python bench/hostile.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import (
    FIXTURE_SKILLS,
    close_all_roles,
    rss_mib,
    start_proxy,
    start_server,
)
from tests.test_hostile import calls_per_second, huge_requests

TOPIC = "TOPIC_HOSTILE"


def refused(ready: dict[str, str]) -> float:
    text = httpx.get(ready["metrics"], timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("skillscale_proxy_dropped_total") and "subscription_refused" in line
    )


def main() -> None:
    proxy = start_proxy()
    start_server(proxy, FIXTURE_SKILLS / "testing", TOPIC, workers=2)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        pid = proxy.pid
        stuck = ctx.socket(zmq.SUB)
        stuck.setsockopt(zmq.LINGER, 0)
        stuck.setsockopt(zmq.RCVHWM, 1)
        stuck.subscribe(b"")
        stuck.connect(proxy.ready["xpub"])
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.connect(proxy.ready["xsub"])
        time.sleep(0.5)  # connections up; a benchmark, not a test
        start, peak = rss_mib(pid), rss_mib(pid)
        for i in range(5000):
            pub.send_multipart([b"AGENT_REPLY_noise", b"n" * 65536])
            if i % 250 == 0:
                peak = max(peak, rss_mib(pid))
        rate = calls_per_second(proxy, 50)
        print(f"stalled subscriber + 5,000 x 64 KiB: RSS {start:.0f} -> peak {peak:.0f} MiB; "
              f"a fresh caller meanwhile: {rate:.0f} calls/s")  # fmt: skip
        stuck.close(0)

        start = rss_mib(pid)
        peaks = [start]

        def sample() -> None:
            time.sleep(0.3)  # let the proxy take it in; a benchmark, not a test
            peaks.append(rss_mib(pid))

        huge_requests(ctx, proxy, after_each=sample)
        peak = max(peaks)
        rate = calls_per_second(proxy, 50)
        print(f"8 x 100 MiB requests: RSS {start:.0f} -> peak {peak:.0f} MiB; "
              f"then {rate:.0f} calls/s")  # fmt: skip

        before = calls_per_second(proxy, 300)
        hog = ctx.socket(zmq.SUB)
        hog.setsockopt(zmq.LINGER, 0)
        hog.setsockopt(zmq.SNDHWM, 0)
        hog.connect(proxy.ready["xpub"])
        for i in range(200_000):
            hog.subscribe(b"TOPIC_%d" % i)
        deadline = time.monotonic() + 60
        while refused(proxy.ready) < 99_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = calls_per_second(proxy, 300)
        print(f"200,000 subscriptions from one peer: {refused(proxy.ready):.0f} refused; "
              f"300 sequential calls {before:.0f}/s before, {after:.0f}/s after "
              f"(ratio {after / before:.2f}); proxy RSS {rss_mib(pid):.0f} MiB")  # fmt: skip
    finally:
        ctx.destroy(0)
        close_all_roles()


if __name__ == "__main__":
    main()
