"""The ``skillscale`` command line.

Every flag has an environment-variable twin (``SKILLSCALE_*``) shown in
``--help``; durations are seconds, sizes bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skillscale.core.discovery import SkillDiscovery, default_skills_dirs
from skillscale.core.errors import SkillScaleError
from skillscale.core.protocol import topic_for_category
from skillscale.core.security import CurveKeys, ProxyCurve
from skillscale.core.skill_format import SkillFormatError, load_skill
from skillscale.core.transport import DEFAULT_PROXY_XPUB, DEFAULT_PROXY_XSUB

if TYPE_CHECKING:
    from skillscale.proxy.proxy import ProxyConfig

log = logging.getLogger("skillscale")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _env(name: str, default: Any) -> Any:
    return os.environ.get(name, default)


def _seconds(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    if seconds > 86_400:
        # The reference used milliseconds for the same setting.
        raise argparse.ArgumentTypeError(f"{value} s is over a day: durations are in seconds")
    return seconds


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _dirs(values: list[str] | None) -> list[Path]:
    return [Path(v).expanduser() for v in values] if values else default_skills_dirs()


def _curve_keys(args: argparse.Namespace) -> CurveKeys | None:
    secret, server = getattr(args, "curve_secret", None), getattr(args, "curve_server_key", None)
    if bool(secret) != bool(server):
        raise SystemExit("error: --curve-secret and --curve-server-key go together")
    return CurveKeys(Path(secret), Path(server)) if secret and server else None


def _print_ready(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


# -- proxy -------------------------------------------------------------------


def _proxy_config(args: argparse.Namespace) -> ProxyConfig:
    """The proxy's settings from its flags (binds loopback unless ``--host`` says otherwise)."""
    from skillscale.proxy.groups import GroupsConfig
    from skillscale.proxy.proxy import ProxyConfig

    host = args.host
    router_bind = args.router_bind or f"tcp://{host}:5566"
    return ProxyConfig(
        xsub_bind=args.xsub_bind or f"tcp://{host}:5444",
        xpub_bind=args.xpub_bind or f"tcp://{host}:5555",
        router_bind=None if router_bind == "off" else router_bind,
        metrics_host=args.metrics_host or host,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        max_message_bytes=args.max_message_bytes,
        subscriber_hwm=args.subscriber_hwm,
        stuck_timeout=args.stuck_timeout,
        curve=_proxy_curve(args),
        groups=GroupsConfig(
            heartbeat_timeout=args.heartbeat_timeout,
            no_server_wait=args.no_server_wait,
            max_queue=args.max_queue,
            max_attempts=args.max_attempts,
        ),
    )


def _cmd_proxy(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import install_stop_signals, run, serve_until, setup_logging
    from skillscale.proxy.proxy import Proxy

    setup_logging()
    config = _proxy_config(args)

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        async with Proxy(config) as proxy:
            _print_ready(
                {
                    "event": "ready",
                    "role": "proxy",
                    "xsub": proxy.xsub_endpoint,
                    "xpub": proxy.xpub_endpoint,
                    "router": proxy.router_endpoint,
                    "metrics": proxy.metrics_url,
                }
            )
            return await serve_until(stop, proxy)

    return run(main)


def _proxy_curve(args: argparse.Namespace) -> ProxyCurve | None:
    given = [args.curve_secret, args.curve_clients, args.curve_servers]
    if not any(given):
        return None
    if not all(given):
        raise SystemExit("error: --curve-secret, --curve-clients and --curve-servers go together")
    topics = Path(args.curve_server_topics) if args.curve_server_topics else None
    return ProxyCurve(
        Path(args.curve_secret), Path(args.curve_clients), Path(args.curve_servers), topics
    )


# -- server ------------------------------------------------------------------


def _cmd_server(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import install_stop_signals, run, serve_until, setup_logging
    from skillscale.skill_server.executor import ResourceLimits, prctl
    from skillscale.skill_server.server import ServerConfig, SkillServer

    setup_logging()
    # Cold skills are this process's children: as the same user they could
    # read its /proc/<pid>/environ (API keys), fds and memory. Not dumpable
    # makes those root-only (and same-user debuggers cannot attach).
    prctl(4, 0)  # PR_SET_DUMPABLE
    dirs = _dirs(args.skills_dir)
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
        default_timeout=args.timeout,
        max_request_bytes=args.max_request_bytes,
        max_output_bytes=args.max_output_bytes,
        grace=args.grace,
        python=args.python,
        curve=_curve_keys(args),
        executor=args.executor,
        matcher=args.matcher,
        reload_interval=args.reload_interval,
        preload=[m for m in args.preload.split(",") if m] if args.preload else None,
        resources=ResourceLimits(
            cpu_seconds=args.limit_cpu,
            memory_bytes=args.limit_memory * 1024 * 1024,
            nproc=args.limit_nproc,
            fsize_bytes=args.limit_fsize * 1024 * 1024,
        ),
    )
    if args.server_id:
        config.server_id = args.server_id

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        async with SkillServer(config) as server:
            _print_ready(
                {
                    "event": "ready",
                    "role": "server",
                    "server_id": config.server_id,
                    "mode": config.mode,
                    "topics": config.topics,
                    "skills": server.registry.names,
                }
            )
            return await serve_until(stop, server)

    return run(main)


# -- up ----------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import install_stop_signals, run, setup_logging
    from skillscale.tools.supervisor import Fabric, FabricConfig

    setup_logging()
    config = FabricConfig(
        skills_dirs=_dirs(args.skills_dir),
        host=args.host,
        xsub_port=args.xsub_port,
        xpub_port=args.xpub_port,
        router_port=args.router_port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        workers=args.workers,
        timeout=args.timeout,
        grace=args.grace,
        curve_dir=Path(args.curve_dir).expanduser() if args.curve else None,
    )

    async def main() -> None:
        stop = asyncio.Event()
        fabric = Fabric(config)
        install_stop_signals(stop, on_force=fabric.kill_all)
        async with fabric:
            info = fabric.endpoints()
            if args.json:
                _print_ready(info)
            else:
                _print_banner(info)
            await fabric.wait(stop)
        if not args.json:
            print("SkillScale stopped.", flush=True)

    try:
        run(main)
    except SkillScaleError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _print_banner(info: dict[str, Any]) -> None:
    lines = [
        "SkillScale fabric is up.",
        f"  proxy    publishers connect to  {info['xsub']}",
        f"           subscribers connect to {info['xpub']}",
        f"           metrics                {info['metrics'] or 'off'}",
    ]
    example = None
    for server in info["servers"]:
        topics = ", ".join(server["topics"] or [])
        lines.append(f"  server   {topics:<24} skills: {', '.join(server['skills'] or [])}")
        if "text-summarizer" in (server["skills"] or []):
            example = f'skillscale invoke {server["topics"][0]} "summarize: <your text>"'
        elif example is None and server["topics"]:
            example = f'skillscale invoke {server["topics"][0]} "<your task>"'
    if info.get("curve"):
        lines.append("  CURVE on: clients need these (skillscale invoke reads them too):")
        lines += [f"    export {name}={value}" for name, value in info["curve"].items()]
    if example:
        lines.append(f"Try:  {example}")
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


# -- invoke --------------------------------------------------------------------


def _read_data(spec: str) -> str:
    if spec == "-":
        return sys.stdin.read()
    if spec.startswith("@"):
        return Path(spec[1:]).expanduser().read_text(encoding="utf-8", errors="replace")
    return spec


def _cmd_invoke(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import run, setup_logging
    from skillscale.sdk.client import SkillScaleClient

    setup_logging("WARNING")
    data = _read_data(args.data) if args.data is not None else None
    if args.skill:
        intent: str = json.dumps(
            {"skill": args.skill, "data": data if data is not None else (args.text or "")}
        )
    elif data is not None:
        intent = json.dumps({"task": args.text or "", "data": data})
    elif args.text:
        intent = args.text
    else:
        print("error: give TEXT, --data or --skill", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        async with SkillScaleClient(
            args.proxy_xsub,
            args.proxy_xpub,
            timeout=args.timeout,
            connect_timeout=min(10.0, args.timeout),
            curve=_curve_keys(args),
        ) as client:
            reply = await client.call(args.topic, intent)
        if args.json:
            print(reply.model_dump_json(by_alias=True, exclude_none=True, indent=2))
        elif reply.ok:
            sys.stdout.write(
                reply.content if reply.content.endswith("\n") else reply.content + "\n"
            )
        else:
            code = reply.error_code.value if reply.error_code else "error"
            print(f"error [{code}]: {reply.error}", file=sys.stderr)
        return EXIT_OK if reply.ok else EXIT_FAIL

    try:
        return run(main)
    except SkillScaleError as exc:
        print(f"error [{exc.code.value}]: {exc.message}", file=sys.stderr)
        return EXIT_FAIL


# -- bench -----------------------------------------------------------------------


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


def _cmd_keys(args: argparse.Namespace) -> int:
    from skillscale.core.security import generate_keypair

    directory = Path(args.dir).expanduser()
    for name in args.names:
        public, secret = generate_keypair(directory, name)
        print(f"{name}: public {public}  secret {secret}")
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    from skillscale.core.llm import write_config_template

    path = write_config_template(Path(args.path).expanduser() if args.path else None,
                                 force=args.force)  # fmt: skip
    print(f"wrote {path}")
    return EXIT_OK


def _cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from skillscale.adapters.mcp import (
            catalog_for,
            check_http_exposure,
            serve_http,
            serve_stdio,
        )
    except ImportError as exc:
        print(f"error: {exc}; install the extra: pip install -e '.[mcp]'", file=sys.stderr)
        return EXIT_FAIL
    from skillscale.core.runtime import run, setup_logging
    from skillscale.sdk.client import SkillScaleClient

    if args.transport == "http":
        try:
            check_http_exposure(args.host, args.token)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    setup_logging("WARNING")  # stderr only: stdout carries the MCP protocol
    catalog = catalog_for(_dirs(args.skills_dir))

    async def main() -> None:
        async with SkillScaleClient(
            args.proxy_xsub, args.proxy_xpub, timeout=args.timeout, curve=_curve_keys(args)
        ) as client:
            if args.transport == "stdio":
                await serve_stdio(client, catalog)
            else:
                await serve_http(
                    client,
                    catalog,
                    args.host,
                    args.port,
                    token=args.token,
                    allowed_hosts=args.allowed_host
                    or [h for h in _env("SKILLSCALE_MCP_ALLOWED_HOSTS", "").split(",") if h],
                    allowed_origins=args.allowed_origin
                    or [o for o in _env("SKILLSCALE_MCP_ALLOWED_ORIGINS", "").split(",") if o],
                )

    try:
        run(main)
    except SkillScaleError as exc:
        print(f"error [{exc.code.value}]: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


# -- skills ----------------------------------------------------------------------


def _cmd_skills(args: argparse.Namespace) -> int:
    if args.skills_cmd == "validate":
        return _skills_validate(args)
    catalog = SkillDiscovery(_dirs(args.skills_dir)).scan()
    if args.skills_cmd == "show":
        skill = catalog.skills.get(args.name)
        if skill is None:
            print(f"error: no skill named {args.name!r}", file=sys.stderr)
            return EXIT_FAIL
        info = skill.summary() | {"topic": topic_for_category(catalog.category_of[skill.name])}
        if args.json:
            print(json.dumps(info | {"body": skill.body}, indent=2))
        else:
            for key, value in info.items():
                if value not in (None, {}, ""):
                    print(f"{key:12} {value}")
            print("\n" + skill.body)
        return EXIT_OK
    topics = catalog.topics()
    if args.json:
        print(
            json.dumps(
                {topic: [s.summary() for s in skills] for topic, skills in topics.items()},
                indent=2,
            )
        )
    else:
        for topic, skills in topics.items():
            print(topic)
            for skill in skills:
                print(f"  {skill.name:<24} {skill.description[:90]}")
        for problem in catalog.problems:
            print(f"warning: {problem.path}: {problem.message}", file=sys.stderr)
    return EXIT_OK


def _skills_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or _dirs(args.skills_dir)
    failures = 0
    for path in paths:
        if (path / "SKILL.md").is_file():
            try:
                skill = load_skill(path)
                print(f"ok    {skill.name}  ({skill.path})")
            except SkillFormatError as exc:
                failures += 1
                for message in exc.problems:
                    print(f"FAIL  {exc.path}: {message}")
            continue
        catalog = SkillDiscovery([path]).scan()
        for skill in catalog.skills.values():
            print(f"ok    {skill.name}  ({skill.path})")
        for problem in catalog.problems:
            failures += 1
            print(f"FAIL  {problem.path}: {problem.message}")
    return EXIT_FAIL if failures else EXIT_OK


# -- parser ----------------------------------------------------------------------


def _flag(
    p: argparse.ArgumentParser,
    flag: str,
    env: str,
    default: Any,
    help: str,
    *,
    shown: Any = "",
    **kwargs: Any,
) -> None:
    """A flag with its ``SKILLSCALE_*`` twin; the help names the variable and the default.

    A value from the environment is a string, which argparse passes through
    the flag's ``type`` like one from the command line.
    """
    raw = os.environ.get(env)
    shown = default if shown == "" else shown
    suffix = f"[env {env}" + ("]" if shown is None else f"; default {shown}]")
    p.add_argument(flag, default=raw if raw else default, help=f"{help} {suffix}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="skillscale",
        description="SkillScale: a ZeroMQ skill execution fabric for AI agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_skills_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--skills-dir",
            action="append",
            metavar="DIR",
            help="skill root (repeatable) [env SKILLSCALE_SKILLS_DIR, os.pathsep-separated; "
            "default ./skills, else the bundled skills]",
        )

    def add_proxy_endpoints(p: argparse.ArgumentParser) -> None:
        _flag(
            p,
            "--proxy-xsub",
            "SKILLSCALE_PROXY_XSUB",
            DEFAULT_PROXY_XSUB,
            "proxy endpoint publishers connect to",
        )
        _flag(
            p,
            "--proxy-xpub",
            "SKILLSCALE_PROXY_XPUB",
            DEFAULT_PROXY_XPUB,
            "proxy endpoint subscribers connect to",
        )

    def add_curve_peer(p: argparse.ArgumentParser) -> None:
        _flag(
            p,
            "--curve-secret",
            "SKILLSCALE_CURVE_SECRET",
            None,
            "own CURVE certificate (NAME.key_secret)",
        )
        _flag(
            p,
            "--curve-server-key",
            "SKILLSCALE_CURVE_SERVER_KEY",
            None,
            "the proxy's public certificate (NAME.key)",
        )

    def add_timeout(p: argparse.ArgumentParser, help: str) -> None:
        _flag(p, "--timeout", "SKILLSCALE_CLIENT_TIMEOUT", 60.0, help, type=_seconds)

    def add_server_tuning(p: argparse.ArgumentParser, *, with_defaults: bool) -> None:
        _flag(
            p,
            "--workers",
            "SKILLSCALE_WORKERS",
            None,
            "skills run at once per server",
            shown="cores, min 2",
            type=_positive_int,
        )
        _flag(
            p,
            "--timeout",
            "SKILLSCALE_TIMEOUT",
            30.0 if with_defaults else None,
            "default skill time limit in SECONDS (a skill's metadata.timeout wins)",
            shown=30,
            type=_seconds,
        )
        _flag(
            p,
            "--grace",
            "SKILLSCALE_GRACE",
            10.0,
            "seconds in-flight work may take to finish at stop",
            type=float,
        )

    p_up = sub.add_parser("up", help="start a proxy and one server per skill category")
    add_skills_dir(p_up)
    _flag(p_up, "--host", "SKILLSCALE_HOST", "127.0.0.1", "interface to bind")
    _flag(
        p_up, "--xsub-port", "SKILLSCALE_XSUB_PORT", 5444, "publisher port, 0 = any free", type=int
    )
    _flag(
        p_up, "--xpub-port", "SKILLSCALE_XPUB_PORT", 5555, "subscriber port, 0 = any free", type=int
    )
    _flag(
        p_up,
        "--router-port",
        "SKILLSCALE_ROUTER_PORT",
        5566,
        "replica-group port, 0 = any free",
        type=int,
    )
    _flag(
        p_up,
        "--metrics-port",
        "SKILLSCALE_METRICS_PORT",
        9100,
        "Prometheus port, 0 = any free, -1 = off",
        type=int,
    )
    add_server_tuning(p_up, with_defaults=False)
    p_up.add_argument(
        "--curve",
        action="store_true",
        default=os.environ.get("SKILLSCALE_CURVE", "").lower() in ("1", "true", "yes"),
        help="encrypt and authenticate the bus with CURVE, using (or making) the "
        "certificates in --curve-dir [env SKILLSCALE_CURVE]",
    )
    _flag(
        p_up,
        "--curve-dir",
        "SKILLSCALE_CURVE_DIR",
        "~/.skillscale/curve",
        "where --curve keeps the certificates (the client's are in keys/)",
    )
    p_up.add_argument("--json", action="store_true", help="print endpoints as one JSON line")
    p_up.set_defaults(func=_cmd_up)

    p_proxy = sub.add_parser("proxy", help="run the XSUB/XPUB bus proxy")
    _flag(
        p_proxy,
        "--host",
        "SKILLSCALE_HOST",
        "127.0.0.1",
        "interface for all four ports; 0.0.0.0 opens the bus to the network "
        "(then use CURVE: anyone who can reach an open bus is trusted)",
    )
    _flag(
        p_proxy, "--xsub-bind", "SKILLSCALE_XSUB_BIND", None, "publisher side",
        shown="tcp://HOST:5444",
    )  # fmt: skip
    _flag(
        p_proxy, "--xpub-bind", "SKILLSCALE_XPUB_BIND", None, "subscriber side",
        shown="tcp://HOST:5555",
    )  # fmt: skip
    _flag(
        p_proxy,
        "--router-bind",
        "SKILLSCALE_ROUTER_BIND",
        None,
        "replica-group side, 'off' for pub/sub only",
        shown="tcp://HOST:5566",
    )
    _flag(
        p_proxy,
        "--metrics-host",
        "SKILLSCALE_METRICS_HOST",
        None,
        "metrics interface",
        shown="HOST",
    )
    _flag(
        p_proxy,
        "--max-message-bytes",
        "SKILLSCALE_MAX_MESSAGE_BYTES",
        8 * 1024 * 1024,
        "largest request forwarded; larger ones are answered 'payload_too_large'",
        type=_positive_int,
    )
    _flag(
        p_proxy,
        "--subscriber-hwm",
        "SKILLSCALE_SUBSCRIBER_HWM",
        1000,
        "messages queued per subscriber; past it that subscriber alone misses messages",
        type=_positive_int,
    )
    _flag(
        p_proxy,
        "--stuck-timeout",
        "SKILLSCALE_STUCK_TIMEOUT",
        10.0,
        "seconds a peer may leave heartbeats unanswered (e.g. a subscriber that "
        "stopped reading) before it is disconnected",
        type=_seconds,
    )
    _flag(
        p_proxy,
        "--metrics-port",
        "SKILLSCALE_METRICS_PORT",
        9100,
        "Prometheus port, 0 = any free, -1 = off",
        type=int,
    )
    _flag(
        p_proxy,
        "--no-server-wait",
        "SKILLSCALE_NO_SERVER_WAIT",
        5.0,
        "seconds a request waits for a first server of its topic before 'no_server'",
        type=float,
    )
    _flag(
        p_proxy,
        "--heartbeat-timeout",
        "SKILLSCALE_HEARTBEAT_TIMEOUT",
        3.0,
        "seconds of silence before a server is dead and its work re-dispatched",
        type=float,
    )
    _flag(
        p_proxy,
        "--max-queue",
        "SKILLSCALE_MAX_QUEUE",
        1000,
        "requests waiting per topic before 'overloaded'",
        type=_positive_int,
    )
    _flag(
        p_proxy,
        "--max-attempts",
        "SKILLSCALE_MAX_ATTEMPTS",
        3,
        "deliveries of one request before giving up",
        type=_positive_int,
    )
    _flag(
        p_proxy,
        "--curve-secret",
        "SKILLSCALE_CURVE_SECRET",
        None,
        "the proxy's CURVE certificate (NAME.key_secret); with the two allow-lists, turns CURVE on",
    )
    _flag(
        p_proxy,
        "--curve-clients",
        "SKILLSCALE_CURVE_CLIENTS",
        None,
        "folder of allowed client public certificates",
    )
    _flag(
        p_proxy,
        "--curve-servers",
        "SKILLSCALE_CURVE_SERVERS",
        None,
        "folder of allowed server public certificates",
    )
    _flag(
        p_proxy,
        "--curve-server-topics",
        "SKILLSCALE_CURVE_SERVER_TOPICS",
        None,
        "YAML file: server certificate name -> topic patterns it may serve",
    )
    p_proxy.set_defaults(func=_cmd_proxy)

    p_mcp = sub.add_parser("mcp", help="serve the skills to MCP clients (stdio or HTTP)")
    p_mcp.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio (default) or streamable HTTP at /mcp",
    )
    p_mcp.add_argument("--host", default="127.0.0.1", help="HTTP interface (default %(default)s)")
    p_mcp.add_argument("--port", type=int, default=8765, help="HTTP port (default %(default)s)")
    _flag(
        p_mcp,
        "--token",
        "SKILLSCALE_MCP_TOKEN",
        None,
        "HTTP: bearer token clients must send (required beyond loopback; prefer the "
        "variable, a flag shows in ps)",
    )
    p_mcp.add_argument(
        "--allowed-host",
        action="append",
        metavar="HOST:PORT",
        help="HTTP: a Host header to accept besides the bound address and localhost, "
        "HOST:* for any port (repeatable) [env SKILLSCALE_MCP_ALLOWED_HOSTS, comma-separated]",
    )
    p_mcp.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="HTTP: a browser Origin to accept, e.g. https://app.example (repeatable) "
        "[env SKILLSCALE_MCP_ALLOWED_ORIGINS, comma-separated]",
    )
    add_timeout(p_mcp, "seconds to wait for each skill")
    add_skills_dir(p_mcp)
    add_proxy_endpoints(p_mcp)
    add_curve_peer(p_mcp)
    p_mcp.set_defaults(func=_cmd_mcp)

    p_config = sub.add_parser("config", help="the configuration file")
    config_sub = p_config.add_subparsers(dest="config_cmd", required=True)
    p_init = config_sub.add_parser("init", help="write a commented template")
    p_init.add_argument("--path", help="default $SKILLSCALE_CONFIG or ~/.skillscale/config.yaml")
    p_init.add_argument("--force", action="store_true", help="overwrite an existing file")
    p_config.set_defaults(func=_cmd_config)

    p_keys = sub.add_parser("keys", help="CURVE certificates")
    keys_sub = p_keys.add_subparsers(dest="keys_cmd", required=True)
    p_gen = keys_sub.add_parser("generate", help="write NAME.key and NAME.key_secret")
    p_gen.add_argument("names", nargs="+", metavar="NAME")
    p_gen.add_argument("--dir", default="~/.skillscale/keys", help="default %(default)s")
    p_keys.set_defaults(func=_cmd_keys)

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
        "tcp://127.0.0.1:5566",
        "proxy's replica-group endpoint",
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
        "auto: the LLM when one is configured, keywords otherwise; llm: require it "
        "(keywords still catch its failures)",
        choices=("auto", "llm", "keyword"),
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
        shown="common standard library modules, skillscale.skillkit, httpx/openai if installed",
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
    p_server.set_defaults(func=_cmd_server)

    p_invoke = sub.add_parser("invoke", help="send one intent and print the reply")
    p_invoke.add_argument("topic", help="e.g. TOPIC_DATA_PROCESSING")
    p_invoke.add_argument("text", nargs="?", help="task text (matched to a skill)")
    p_invoke.add_argument("--skill", help="run this skill explicitly")
    p_invoke.add_argument("--data", help="skill input: literal text, @file, or - for stdin")
    add_timeout(p_invoke, "seconds to wait for the reply")
    p_invoke.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    add_proxy_endpoints(p_invoke)
    add_curve_peer(p_invoke)
    p_invoke.set_defaults(func=_cmd_invoke)

    p_bench = sub.add_parser("bench", help="load a running fabric; report throughput, latency")
    p_bench.add_argument(
        "--mode",
        choices=("bus", "http"),
        default="bus",
        help="bus: the SDK client on the bus (default); http: not yet available",
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
    add_proxy_endpoints(p_bench)
    add_curve_peer(p_bench)
    p_bench.set_defaults(func=_cmd_bench)

    p_skills = sub.add_parser("skills", help="list, show or validate skills")
    skills_sub = p_skills.add_subparsers(dest="skills_cmd", required=True)
    p_list = skills_sub.add_parser("list", help="skills by topic")
    p_show = skills_sub.add_parser("show", help="one skill in full")
    p_show.add_argument("name")
    p_validate = skills_sub.add_parser("validate", help="check skills against the spec")
    p_validate.add_argument("paths", nargs="*", help="skill folders or roots")
    for p in (p_list, p_show, p_validate):
        add_skills_dir(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p_skills.set_defaults(func=_cmd_skills)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``skillscale`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "workers", 0) is None and args.command == "server":
        from skillscale.skill_server.server import default_workers

        args.workers = default_workers()
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
