"""``skillscale mcp``: the skills as MCP tools."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from skillscale.tools.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    _curve_keys,
    _dirs,
    _env,
    _flag,
    add_curve_peer,
    add_proxy_endpoints,
    add_skills_dir,
    add_timeout,
)


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

    run(main)  # a SkillScaleError becomes one line in main()
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_mcp = sub.add_parser("mcp", help="serve the skills to MCP clients (stdio or HTTP)")
    _flag(
        p_mcp,
        "--transport",
        "SKILLSCALE_MCP_TRANSPORT",
        "stdio",
        "stdio or streamable HTTP at /mcp",
        choices=("stdio", "http"),
    )
    _flag(p_mcp, "--host", "SKILLSCALE_MCP_HOST", "127.0.0.1", "HTTP interface")
    _flag(p_mcp, "--port", "SKILLSCALE_MCP_PORT", 8765, "HTTP port", type=int)
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
