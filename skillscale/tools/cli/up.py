"""``skillscale up``: a proxy and one server per skill category."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from skillscale.core.transport import DEFAULT_PROXY_XPUB, DEFAULT_PROXY_XSUB
from skillscale.tools.cli.common import (
    EXIT_OK,
    _dirs,
    _flag,
    _print_ready,
    add_server_tuning,
    add_skills_dir,
)


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
        gateway_port=None if args.no_gateway or args.gateway_port < 0 else args.gateway_port,
        distill_args=None if args.no_distill else [],
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
                print_banner(info)
            await fabric.wait(stop)
        if not args.json:
            print("SkillScale stopped.", flush=True)

    run(main)  # a SkillScaleError becomes one line in main()
    return EXIT_OK


def print_banner(info: dict[str, Any]) -> None:
    """The human banner of `skillscale up` (endpoints, servers, a command to try)."""
    lines = [
        "SkillScale fabric is up.",
        f"  proxy    publishers connect to  {info['xsub']}",
        f"           subscribers connect to {info['xpub']}",
        f"           metrics                {info['metrics'] or 'off'}",
    ]
    if info.get("gateway"):
        lines.append(f"  gateway  console and HTTP API   {info['gateway']}")
    example = None
    # A client finds the default ports by itself; other ports go on the line.
    where = "".join(
        f" --{flag} {info[key]}"
        for flag, key, default in (
            ("proxy-xsub", "xsub", DEFAULT_PROXY_XSUB),
            ("proxy-xpub", "xpub", DEFAULT_PROXY_XPUB),
        )
        if info[key] != default
    )
    for server in info["servers"]:
        topics = ", ".join(server["topics"] or [])
        lines.append(f"  server   {topics:<24} skills: {', '.join(server['skills'] or [])}")
        if "text-summarizer" in (server["skills"] or []):
            example = f'skillscale invoke{where} {server["topics"][0]} "summarize: <your text>"'
        elif example is None and server["topics"]:
            example = f'skillscale invoke{where} {server["topics"][0]} "<your task>"'
    if info.get("distiller"):
        lines.append(f"  distiller writes skills to {info['distiller']['skills_dir']}")
    if info.get("curve"):
        lines.append("  CURVE on: clients need these (skillscale invoke reads them too):")
        lines += [f"    export {name}={value}" for name, value in info["curve"].items()]
    if example:
        lines.append(f"Try:  {example}")
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
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
    _flag(
        p_up,
        "--gateway-port",
        "SKILLSCALE_GATEWAY_PORT",
        8401,
        "HTTP gateway and console port, 0 = any free, -1 = off",
        type=int,
    )
    p_up.add_argument(
        "--no-gateway",
        action="store_true",
        default=os.environ.get("SKILLSCALE_NO_GATEWAY", "").lower() in ("1", "true", "yes"),
        help="start no HTTP gateway [env SKILLSCALE_NO_GATEWAY]",
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
    p_up.add_argument(
        "--no-distill",
        action="store_true",
        default=os.environ.get("SKILLSCALE_NO_DISTILL", "").lower() in ("1", "true", "yes"),
        help="do not start the distiller (it reads agent sessions under SKILLSCALE_DISTILL_HOME "
        "and writes skills to SKILLSCALE_DISTILL_DIR) [env SKILLSCALE_NO_DISTILL]",
    )
    p_up.add_argument("--json", action="store_true", help="print endpoints as one JSON line")
    p_up.set_defaults(func=_cmd_up)
