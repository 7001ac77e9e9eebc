"""``skillscale bench``: load a running fabric."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from skillscale.core.errors import SkillScaleError
from skillscale.tools.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    _curve_keys,
    _flag,
    _positive_int,
    _read_data,
    _switch,
    add_curve_peer,
    add_proxy_endpoints,
    add_timeout,
)


def _cmd_bench(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import run, setup_logging
    from skillscale.tools.bench import BenchConfig, bench_intent, format_report, run_bench

    setup_logging("WARNING")
    if args.mode == "http":
        print(
            "error: the http mode needs the HTTP API, which this version has not", file=sys.stderr
        )
        return EXIT_USAGE
    data = _read_data(args.data) if args.data is not None else None
    # (Same shape as the other commands' flag-to-config mappings: each maps its own flags.)
    config = BenchConfig(
        topic=args.topic,
        intent=bench_intent(args.text, args.skill, data),
        requests=args.requests,
        concurrency=args.concurrency,
        timeout=args.timeout,
        warmup=args.warmup,
        proxy_xsub=args.proxy_xsub,
        proxy_xpub=args.proxy_xpub,
        progress=not args.no_progress,
        curve=_curve_keys(args),
    )

    try:
        result = run(lambda: run_bench(config))
    except SkillScaleError as exc:
        print(f"error [{exc.code.value}]: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    print(format_report(result, config))
    if args.json_out:
        Path(args.json_out).write_text(result.to_json() + "\n")
    return EXIT_OK if result.failed == 0 else EXIT_FAIL


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_bench = sub.add_parser("bench", help="load a running fabric; report throughput, latency")
    # (argparse declarations of different commands look alike; these are bench's own.)
    _flag(
        p_bench,
        "--mode",
        "SKILLSCALE_BENCH_MODE",
        "bus",
        "bus: the SDK client on the bus; http: not yet available",
        choices=("bus", "http"),
    )
    _flag(p_bench, "--topic", "SKILLSCALE_BENCH_TOPIC", "TOPIC_DATA_PROCESSING", "topic to load")
    p_bench.add_argument(
        "text",
        nargs="?",
        default="summarize: SkillScale runs skills. It is fast.",
        help="task text (default: a short summarize request)",
    )
    _flag(p_bench, "--skill", "SKILLSCALE_BENCH_SKILL", None, "run this skill explicitly")
    _flag(
        p_bench,
        "--data",
        "SKILLSCALE_BENCH_DATA",
        None,
        "skill input: literal text, @file, or - for stdin",
    )
    _flag(
        p_bench,
        "--requests",
        "SKILLSCALE_BENCH_REQUESTS",
        200,
        "timed requests",
        type=_positive_int,
    )
    _flag(
        p_bench,
        "--concurrency",
        "SKILLSCALE_BENCH_CONCURRENCY",
        20,
        "requests in flight",
        type=_positive_int,
    )
    _flag(p_bench, "--warmup", "SKILLSCALE_BENCH_WARMUP", 5, "untimed requests first", type=int)
    add_timeout(p_bench, "seconds per request")
    _flag(
        p_bench,
        "--json-out",
        "SKILLSCALE_BENCH_JSON_OUT",
        None,
        "also write the summary as JSON to this file",
        metavar="FILE",
    )
    _switch(p_bench, "--no-progress", "SKILLSCALE_BENCH_NO_PROGRESS", "no progress bar")
    add_proxy_endpoints(p_bench)
    add_curve_peer(p_bench)
    p_bench.set_defaults(func=_cmd_bench)
