"""``skillscale distill``: agent sessions in, skills out (one pass, a role, a bench)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from skillscale.core.errors import ConfigError
from skillscale.tools.cli.common import (
    EXIT_OK,
    _flag,
    _positive_int,
    _print_ready,
    _seconds,
    add_curve_peer,
    add_health_port,
    add_proxy_endpoints,
    log,
)
from skillscale.tools.cli.skills_rollout import add_evolution_flags

KINDS = ("claude-code", "codex", "opencode", "cursor", "openclaw", "bus")
DEFAULT_DIR = "~/.skillscale/distilled"


def _parse_from(values: list[str] | None) -> list[tuple[str, Path]] | None:
    if not values:
        return None
    out = []
    for spec in values:
        kind, sep, path = spec.partition("=")
        if not sep or kind not in KINDS or not path:
            raise ConfigError(
                f"--from {spec!r}: give KIND=PATH with KIND one of {', '.join(KINDS)}"
            )
        out.append((kind, Path(path).expanduser()))
    return out


def _sources(args: argparse.Namespace) -> list[tuple[str, Path]]:
    from skillscale.distiller.ingest import default_sources

    given = _parse_from(args.sources)
    if given is not None:
        return given
    home = Path(args.home).expanduser()
    found, missing = [], []
    for kind, path in default_sources(home):
        if path.exists():
            found.append((kind, path))
        else:
            missing.append(f"{kind} ({path})")
    if missing:
        log.info("distill: no session store found for %s; skipped", ", ".join(missing))
    return found


def _options(args: argparse.Namespace, sources: list[tuple[str, Path]]) -> Any:
    from skillscale.core.llm import LLMSettings
    from skillscale.distiller.cluster import Config
    from skillscale.distiller.pipeline import Options

    return Options(
        skills_dir=Path(args.skills_dir).expanduser(),
        sources=sources,
        category=args.category,
        cluster=Config(min_occurrences=args.min_occurrences, min_sessions=args.min_sessions),
        redact_patterns=list(args.redact or []),
        llm=LLMSettings.load() if args.llm else None,
        new_versions=args.new_versions,
    )


def _cmd_distill(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import setup_logging

    setup_logging("WARNING" if args.json else "INFO")
    if getattr(args, "distill_cmd", None) == "bench":
        return _cmd_bench(args)
    sources = _sources(args)
    if args.once:
        from skillscale.distiller.pipeline import distill_once

        opts = _options(args, sources)
        outcome = asyncio.run(distill_once(opts))
        result = outcome.to_json(opts.skills_dir)
        if args.json:
            print(json.dumps(result))
        else:
            _print_pass(result)
        return EXIT_OK
    return _run_role(args, sources)


def _print_pass(result: dict[str, Any]) -> None:
    for kind, counts in result["ingested"].items():
        print(
            f"{kind:12} {counts.get('files', 0)} files, {counts.get('sessions', 0)} sessions "
            f"read, {counts.get('new_events', 0)} new events"
        )
    print(f"atoms        {result['atoms']['new']} new, {result['atoms']['total']} in all")
    for status, entries in result["skills"].items():
        for e in entries:
            print(f"{status:12} {e['name']} v{e['version']}  {e['path']}")


def _run_role(args: argparse.Namespace, sources: list[tuple[str, Path]]) -> int:
    from skillscale.core.runtime import install_stop_signals, run, serve_until
    from skillscale.distiller.role import Distiller, RoleConfig
    from skillscale.tools.cli.common import _curve_keys
    from skillscale.tools.cli.skills_rollout import evolution_settings

    evolution, judge = evolution_settings(args)
    config = RoleConfig(
        evolution=evolution,
        judge=judge,
        evolution_interval=args.evolution_interval,
        options=_options(args, sources),
        proxy_xpub=args.proxy_xpub,
        proxy_xsub=args.proxy_xsub,
        interval=args.interval,
        curve=_curve_keys(args),
        health_port=None if args.health_port < 0 else args.health_port,
        health_host=args.health_host,
    )

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        async with Distiller(config) as role:
            _print_ready(role.ready_info())
            return await serve_until(stop, role)

    return run(main)


def _cmd_bench(args: argparse.Namespace) -> int:
    from skillscale.distiller.bench import generate, winners, write_corpus
    from skillscale.distiller.bench import main as bench_main

    if args.generate:
        plan, _ = generate(args.seed, args.sessions)
        sources = write_corpus(Path(args.generate).expanduser(), plan, args.seed)
        print(" ".join(f"--from {kind}={path}" for kind, path in sources))
        return EXIT_OK
    import logging

    for name in ("httpx", "httpx2"):  # one INFO line per LLM request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    llm = None
    # ``distill --llm bench`` and ``distill bench --llm`` both mean it.
    if args.llm or getattr(args, "bench_llm", False):
        from skillscale.core.llm import LLMSettings

        llm = LLMSettings.load()
        if llm is None:
            raise ConfigError(
                "--llm: no LLM is configured (see `skillscale config`; or set "
                "SKILLSCALE_LLM_BASE_URL and SKILLSCALE_LLM_MODEL)"
            )
    with tempfile.TemporaryDirectory(prefix="distillbench-") as tmp:
        work = Path(args.workdir).expanduser() if args.workdir else Path(tmp)
        figures, llm_figures = bench_main(args.seed, work, args.sessions, not args.no_scale, llm)
    if llm_figures is None:
        if args.json:
            print(json.dumps(figures))
            return EXIT_OK
        width = max(len(k) for k in figures)
        print(f"DistillBench (offline pipeline, seed {args.seed})")
        for key, value in figures.items():
            print(f"  {key:<{width}}  {value}")
        return EXIT_OK
    won = winners(figures, llm_figures)
    if args.json:
        print(json.dumps({"offline": figures, "llm": llm_figures, "winner": won}))
        return EXIT_OK
    assert llm is not None
    keys = list(dict.fromkeys([*figures, *llm_figures]))
    width = max(len(k) for k in keys)
    col = max(8, *(len(str(v)) for v in figures.values() if not isinstance(v, str)))
    print(f"DistillBench (seed {args.seed}): offline pipeline (the floor) vs LLM {llm.model}")
    print(f"  {'metric':<{width}}  {'offline':<{col}}  {'llm':<{col}}  winner")
    for key in keys:
        a, b = figures.get(key, ""), llm_figures.get(key, "")
        if key.startswith(("canary ", "scale ")) and key not in llm_figures:
            b = "(same)"  # no LLM in these rows: the simulation and the timing run
        print(f"  {key:<{width}}  {a!s:<{col}}  {b!s:<{col}}  {won.get(key, '')}")
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p = sub.add_parser(
        "distill",
        help="distil skills from agent sessions (one pass with --once, else a role)",
        description="Read agent sessions (Claude Code, Codex, OpenCode, Cursor, OpenClaw, the "
        "bus), find recurring procedures and write them as skills under --skills-dir.",
    )
    p.add_argument("--once", action="store_true", help="one incremental pass, then exit")
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        metavar="KIND=PATH",
        help=f"a source (repeatable); KIND is one of {', '.join(KINDS)}; default: the agents' "
        "standard stores under --home",
    )
    _flag(p, "--skills-dir", "SKILLSCALE_DISTILL_DIR", DEFAULT_DIR, "library the skills go to")
    _flag(
        p,
        "--home",
        "SKILLSCALE_DISTILL_HOME",
        str(Path.home()),
        "home folder whose agent stores are read when no --from is given",
        shown="~",
    )
    _flag(p, "--category", "SKILLSCALE_DISTILL_CATEGORY", "distilled", "category of new skills")
    _flag(
        p,
        "--min-occurrences",
        "SKILLSCALE_DISTILL_MIN_OCCURRENCES",
        3,
        "a procedure becomes a skill after this many occurrences",
        type=_positive_int,
    )
    _flag(
        p,
        "--min-sessions",
        "SKILLSCALE_DISTILL_MIN_SESSIONS",
        2,
        "... seen in at least this many sessions",
        type=_positive_int,
    )
    p.add_argument(
        "--redact",
        action="append",
        metavar="REGEX",
        default=[r for r in os.environ.get("SKILLSCALE_DISTILL_REDACT", "").split("\n") if r],
        help="extra redaction pattern (repeatable) [env SKILLSCALE_DISTILL_REDACT, one per line]",
    )
    p.add_argument(
        "--llm",
        action="store_true",
        default=os.environ.get("SKILLSCALE_DISTILL_LLM", "").lower() in ("1", "true", "yes"),
        help="segment sessions and draft the skills' text with the configured LLM (see "
        "`skillscale config`); a draft is kept only when it beats the offline one "
        "[env SKILLSCALE_DISTILL_LLM]",
    )
    _flag(
        p,
        "--interval",
        "SKILLSCALE_DISTILL_INTERVAL",
        60.0,
        "seconds between passes of the long-lived role",
        type=_seconds,
    )
    add_evolution_flags(p)
    add_proxy_endpoints(p)
    add_curve_peer(p)
    add_health_port(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    bench_sub = p.add_subparsers(dest="distill_cmd", required=False)
    pb = bench_sub.add_parser("bench", help="DistillBench: synthetic sessions, scored")
    _flag(pb, "--seed", "SKILLSCALE_DISTILL_SEED", 1, "generator seed", type=int)
    _flag(pb, "--sessions", "SKILLSCALE_DISTILL_SESSIONS", 40, "sessions generated", type=int)
    pb.add_argument("--no-scale", action="store_true", help="skip the 1,000 x 200-line timing run")
    pb.add_argument("--workdir", help="keep the generated corpus and skills here")
    pb.add_argument(
        "--generate",
        metavar="DIR",
        help="only write the seeded corpus under DIR and print its --from arguments",
    )
    pb.add_argument(
        "--llm",
        dest="bench_llm",
        action="store_true",
        default=os.environ.get("SKILLSCALE_DISTILL_LLM", "").lower() in ("1", "true", "yes"),
        help="also run the bench with the configured LLM and print both columns "
        "[env SKILLSCALE_DISTILL_LLM]",
    )
    pb.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_distill)
