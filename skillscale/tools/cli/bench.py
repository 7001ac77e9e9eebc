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
    _seconds,
    add_curve_peer,
    add_proxy_endpoints,
    add_skills_dir,
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
    p_bench.add_argument(
        "--mode",
        choices=("bus", "http"),
        default="bus",
        help="bus: the SDK client on the bus (default); http: through the HTTP gateway",
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
    p_bench.add_argument("--topic", default="TOPIC_DATA_PROCESSING", help="default %(default)s")
    p_bench.add_argument(
        "text",
        nargs="?",
        default="summarize: SkillScale runs skills. It is fast.",
        help="task text (default: a short summarize request)",
    )
    p_bench.add_argument("--skill", help="run this skill explicitly")
    p_bench.add_argument("--data", help="skill input: literal text, @file, or - for stdin")
    p_bench.add_argument("--requests", type=_positive_int, default=200, help="default %(default)s")
    p_bench.add_argument(
        "--concurrency",
        type=_positive_int,
        default=20,
        help="requests in flight (default %(default)s)",
    )
    p_bench.add_argument("--warmup", type=int, default=5, help="untimed requests first (default 5)")
    p_bench.add_argument(
        "--timeout", type=_seconds, default=60.0, help="seconds per request (default %(default)s)"
    )
    p_bench.add_argument("--json-out", metavar="FILE", help="also write the summary as JSON")
    p_bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_bench.add_argument(
        "--compare-cold",
        action="store_true",
        help="also spawn the --skill's script cold (python run.py / bash run.sh), serially, "
        "in the same run, and print the fabric's figures as ratios of it",
    )
    p_bench.add_argument(
        "--cold-runs",
        type=_positive_int,
        default=50,
        help="cold spawns for --compare-cold (default %(default)s, at most --requests)",
    )
    add_skills_dir(p_bench)
    add_proxy_endpoints(p_bench)
    add_curve_peer(p_bench)
    p_bench.set_defaults(func=_cmd_bench)
