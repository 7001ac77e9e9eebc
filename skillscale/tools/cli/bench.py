"""``skillscale bench``: load a running fabric."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skillscale.core.errors import ConfigError, SkillScaleError
from skillscale.tools.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    _curve_keys,
    _dirs,
    _flag,
    _positive_int,
    _read_data,
    _switch,
    add_curve_peer,
    add_proxy_endpoints,
    add_skills_dir,
    add_timeout,
)


def _cmd_bench(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import run, setup_logging
    from skillscale.tools.bench import (
        BenchConfig,
        bench_intent,
        format_report,
        run_bench,
        run_http_bench,
    )

    setup_logging("WARNING")
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

    cold_skill = _cold_entrypoint(args) if args.compare_cold else None
    try:
        if args.mode == "http":
            result = run(lambda: run_http_bench(config, args.gateway, token=args.token or None))
        else:
            result = run(lambda: run_bench(config))
    except SkillScaleError as exc:
        print(f"error [{exc.code.value}]: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    print(format_report(result, config))
    summary = json.loads(result.to_json())
    if cold_skill is not None:
        summary["cold_baseline"] = _compare_cold(args, result, cold_skill, data)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    return EXIT_OK if result.failed == 0 else EXIT_FAIL


def _cold_entrypoint(args: argparse.Namespace) -> Path:
    """The entry point ``--compare-cold`` spawns; checked before the load starts."""
    from skillscale.core.discovery import SkillDiscovery

    if not args.skill:
        raise ConfigError("--compare-cold needs --skill NAME (the skill to spawn cold)")
    skill = SkillDiscovery(_dirs(args.skills_dir)).scan().skills.get(args.skill)
    if skill is None or skill.entrypoint is None:
        raise ConfigError(
            f"--compare-cold: no skill {args.skill!r} with a script in the skills dirs here "
            "(give --skills-dir; instruction-only skills start no process)"
        )
    return skill.entrypoint


def _compare_cold(
    args: argparse.Namespace, result: Any, entrypoint: Path, data: str | None
) -> dict[str, object]:
    """Spawn the same skill cold, serially, right after the load; print and return it."""
    from skillscale.tools.bench import cold_baseline, format_cold

    text = data if data is not None else (args.text or "")
    runs = min(args.requests, args.cold_runs)
    cold = cold_baseline(args.skill, entrypoint, text.encode(), runs, timeout=args.timeout)
    print(format_cold(result, cold))
    return cold.to_dict()


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_bench = sub.add_parser("bench", help="load a running fabric; report throughput, latency")
    # (argparse declarations of different commands look alike; these are bench's own.)
    _flag(
        p_bench,
        "--mode",
        "SKILLSCALE_BENCH_MODE",
        "bus",
        "bus: the SDK client on the bus; http: through the HTTP gateway (--gateway)",
        choices=("bus", "http"),
    )
    _flag(
        p_bench,
        "--gateway",
        "SKILLSCALE_GATEWAY_URL",
        "http://127.0.0.1:8401",
        "--mode http: the gateway's base URL",
    )
    _flag(
        p_bench,
        "--token",
        "SKILLSCALE_GATEWAY_TOKEN",
        None,
        "--mode http: the gateway's bearer token",
        shown=None,
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
    _switch(
        p_bench,
        "--compare-cold",
        "SKILLSCALE_BENCH_COMPARE_COLD",
        "also spawn the --skill's script cold (python run.py / bash run.sh), serially, "
        "in the same run, and print the fabric's figures as ratios of it",
    )
    _flag(
        p_bench,
        "--cold-runs",
        "SKILLSCALE_BENCH_COLD_RUNS",
        50,
        "cold spawns for --compare-cold (at most --requests)",
        type=_positive_int,
    )
    add_skills_dir(p_bench)
    add_proxy_endpoints(p_bench)
    add_curve_peer(p_bench)
    p_bench.set_defaults(func=_cmd_bench)
