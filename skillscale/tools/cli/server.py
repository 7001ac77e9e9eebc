"""``skillscale server``: a skill server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from skillscale.core.errors import ConfigError
from skillscale.core.matchers import matcher_help, matcher_names
from skillscale.core.protocol import topic_for_category
from skillscale.core.replica_protocol import DEFAULT_PROXY_ROUTER
from skillscale.core.transport import fabric_endpoint
from skillscale.tools.cli.common import (
    EXIT_USAGE,
    _curve_keys,
    _dirs,
    _env,
    _flag,
    _positive_int,
    _print_ready,
    _seconds,
    _switch,
    add_curve_peer,
    add_health_port,
    add_proxy_endpoints,
    add_server_tuning,
    add_skills_dir,
    log,
)


def _cmd_server(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import install_stop_signals, run, serve_until, setup_logging
    from skillscale.skill_server.dedupe import DedupeConfig
    from skillscale.skill_server.executor import ResourceLimits, prctl
    from skillscale.skill_server.server import ServerConfig, SkillServer

    setup_logging()
    # Cold skills are this process's children: as the same user they could
    # read its /proc/<pid>/environ (API keys), fds and memory. Not dumpable
    # makes those root-only (and same-user debuggers cannot attach).
    prctl(4, 0)  # PR_SET_DUMPABLE
    dirs = _dirs(args.skills_dir)
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ConfigError(
            f"no skills folder at {', '.join(missing)}; point --skills-dir at a folder of "
            "skills (e.g. skills/data-processing)"
        )
    topics = args.topic or ([topic_for_category(dirs[0].resolve().name)] if len(dirs) == 1 else [])
    if not topics:
        print("error: give --topic when serving several skill folders", file=sys.stderr)
        return EXIT_USAGE
    config = ServerConfig(
        topics=topics,
        skills_dirs=dirs,
        mode=args.mode,
        proxy_router=args.proxy_router,
        proxy_xsub=args.proxy_xsub,
        proxy_xpub=args.proxy_xpub,
        workers=args.workers,
        queue_size=args.queue_size,
        prefetch=args.prefetch,
        inline_slots=args.inline_slots,
        default_timeout=args.timeout,
        max_request_bytes=args.max_request_bytes,
        max_output_bytes=args.max_output_bytes,
        grace=args.grace,
        python=args.python,
        curve=_curve_keys(args),
        executor=args.executor,
        matcher=args.matcher,
        reload_interval=args.reload_interval,
        trace_payloads=args.trace_payloads,
        dedupe=DedupeConfig(max_entries=args.dedupe_window, max_age=args.dedupe_age),
        preload=[m for m in args.preload.split(",") if m] if args.preload else None,
        waiting_children=int(args.waiting_children),
        resources=ResourceLimits(
            cpu_seconds=args.limit_cpu,
            memory_bytes=args.limit_memory * 1024 * 1024,
            nproc=args.limit_nproc,
            fsize_bytes=args.limit_fsize * 1024 * 1024,
        ),
    )
    if args.server_id:
        config.server_id = args.server_id
    config.ready_timeout = args.connect_timeout
    if args.health_port >= 0:
        config.health_port, config.health_host = args.health_port, args.health_host

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        server = SkillServer(config)
        # Starting waits for the proxy (forever by default): a stop signal
        # must end that wait too, not only the serving that follows it.
        log.info("server %s: waiting for the proxy at %s", config.server_id,
                 config.proxy_router if config.mode == "group" else config.proxy_xpub)  # fmt: skip
        starting = asyncio.ensure_future(server.__aenter__())
        stopping = asyncio.ensure_future(stop.wait())
        crashing = asyncio.ensure_future(server.crashed.wait())
        await asyncio.wait({starting, stopping, crashing}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        crashing.cancel()
        if not starting.done():
            starting.cancel()  # start() stops what it began on cancellation
            await asyncio.gather(starting, return_exceptions=True)
            return 1 if server.crashed.is_set() else 0
        starting.result()
        try:
            _print_ready(
                {
                    "event": "ready",
                    "role": "server",
                    "server_id": config.server_id,
                    "mode": config.mode,
                    "topics": config.topics,
                    "skills": server.registry.names,
                    "health": server.health_url,
                }
            )
            status = await serve_until(stop, server)
        finally:
            await server.__aexit__(None, None, None)
        return 1 if server.crashed.is_set() else status

    return run(main)


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_server = sub.add_parser("server", help="run a skill server for one or more topics")
    p_server.add_argument(
        "--topic",
        action="append",
        default=[t for t in _env("SKILLSCALE_TOPIC", "").split(",") if t] or None,
        help="topic to serve, whole-name match (repeatable) [env SKILLSCALE_TOPIC, "
        "comma-separated; default TOPIC_<SKILLS DIR NAME>]",
    )
    add_skills_dir(p_server)
    add_proxy_endpoints(p_server)
    add_curve_peer(p_server)
    _flag(
        p_server,
        "--mode",
        "SKILLSCALE_SERVER_MODE",
        "group",
        "group: share the topic's work with other replicas through the proxy; "
        "pubsub: the reference's model, every server runs every request",
        choices=("group", "pubsub"),
    )
    _flag(
        p_server,
        "--proxy-router",
        "SKILLSCALE_PROXY_ROUTER",
        fabric_endpoint("SKILLSCALE_PROXY_ROUTER", "SKILLSCALE_ROUTER_PORT", DEFAULT_PROXY_ROUTER),
        "proxy's replica-group endpoint; comma-separated for a failover pair",
        shown=f"{DEFAULT_PROXY_ROUTER}, or SKILLSCALE_HOST:SKILLSCALE_ROUTER_PORT",
    )
    _flag(
        p_server,
        "--dedupe-window",
        "SKILLSCALE_DEDUPE_WINDOW",
        10_000,
        "recent requests remembered, so a retransmitted one is answered, not run again",
        type=_positive_int,
    )
    _flag(
        p_server,
        "--dedupe-age",
        "SKILLSCALE_DEDUPE_AGE",
        300.0,
        "seconds a sent reply stays in the dedupe window",
        type=_seconds,
    )
    add_server_tuning(p_server, with_defaults=True)
    _flag(
        p_server,
        "--queue-size",
        "SKILLSCALE_QUEUE_SIZE",
        256,
        "requests waiting beyond the workers before 'overloaded'",
        type=_positive_int,
    )
    _flag(
        p_server,
        "--inline-slots",
        "SKILLSCALE_INLINE_SLOTS",
        32,
        "group mode: dispatches the proxy may send beyond the workers for requests answered "
        "without one (instruction-only skills); one that needs a busy worker is handed back",
        type=int,
    )
    _flag(
        p_server,
        "--prefetch",
        "SKILLSCALE_PREFETCH",
        0,
        "group mode: requests the proxy may send beyond the free workers (batches bursts; "
        "instruction-only skills need no worker); what waits here cannot go to another replica",
        type=int,
    )
    _flag(
        p_server,
        "--max-request-bytes",
        "SKILLSCALE_MAX_REQUEST_BYTES",
        8 * 1024 * 1024,
        "largest request accepted",
        shown="8 MiB",
        type=_positive_int,
    )
    _flag(
        p_server,
        "--max-output-bytes",
        "SKILLSCALE_MAX_OUTPUT_BYTES",
        4 * 1024 * 1024,
        "largest skill output kept",
        shown="4 MiB",
        type=_positive_int,
    )
    _flag(
        p_server,
        "--matcher",
        "SKILLSCALE_MATCHER",
        "auto",
        matcher_help(),  # the matcher registry: plug-in matchers are listed too
        choices=matcher_names(),
    )
    _flag(
        p_server,
        "--executor",
        "SKILLSCALE_EXECUTOR",
        "warm",
        "warm: Python skills fork from a pre-imported fork server; cold: a new interpreter per run",
        choices=("warm", "cold"),
    )
    _flag(
        p_server,
        "--preload",
        "SKILLSCALE_PRELOAD",
        None,
        "comma-separated modules the fork server imports",
        shown="what the skills import of common stdlib modules, skillscale.skillkit, httpx, openai",
    )
    _flag(
        p_server,
        "--waiting-children",
        "SKILLSCALE_WAITING_CHILDREN",
        2,
        "warm children forked ahead, each waiting for one run (0: fork per request)",
        type=int,
    )
    for flag, env, default, unit in (
        ("--limit-cpu", "SKILLSCALE_LIMIT_CPU", 60, "CPU seconds"),
        ("--limit-memory", "SKILLSCALE_LIMIT_MEMORY", 2048, "MiB of address space"),
        ("--limit-nproc", "SKILLSCALE_LIMIT_NPROC", 1024, "processes of the server's user"),
        ("--limit-fsize", "SKILLSCALE_LIMIT_FSIZE", 256, "MiB per file written"),
    ):
        _flag(p_server, flag, env, default, f"skill process limit: {unit}, 0 = none", type=int)
    _flag(
        p_server,
        "--reload-interval",
        "SKILLSCALE_RELOAD_INTERVAL",
        2.0,
        "seconds between checks for added, removed or edited skills, 0 = never",
        type=float,
    )
    _flag(
        p_server,
        "--python",
        "SKILLSCALE_PYTHON",
        None,
        "interpreter for scripts/run.py",
        shown="this one",
    )
    _flag(
        p_server,
        "--server-id",
        "SKILLSCALE_SERVER_ID",
        None,
        "id shown in replies",
        shown="<host>-<pid>-<hex>",
    )
    _switch(
        p_server,
        "--trace-payloads",
        "SKILLSCALE_TRACE_PAYLOADS",
        "put each request's task and reply (redacted, 4 KiB each) in its trace event "
        "(requests to a skill in canary always carry them, for the distiller's LLM judge)",
    )
    _flag(
        p_server,
        "--connect-timeout",
        "SKILLSCALE_CONNECT_TIMEOUT",
        None,
        "seconds to wait at start for the proxy's first heartbeat answer, then exit 1 "
        "naming the cause (e.g. a refused CURVE handshake); unset, the server waits for "
        "as long as the proxy takes (an orchestrator may start it later)",
        shown="wait forever",
        type=_seconds,
    )
    add_health_port(p_server)
    p_server.set_defaults(func=_cmd_server)
