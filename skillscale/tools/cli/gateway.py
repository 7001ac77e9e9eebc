"""``skillscale gateway``: the HTTP API and the console."""

from __future__ import annotations

import argparse
from typing import Any

from skillscale.core.protocol import MAX_REQUEST_BYTES
from skillscale.tools.cli.common import (
    EXIT_OK,
    _curve_keys,
    _dirs,
    _flag,
    _positive_int,
    _print_ready,
    _seconds,
    add_curve_peer,
    add_proxy_endpoints,
    add_skills_dir,
)


def _list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [v.strip() for v in value.split(",") if v.strip()]


def _cmd_gateway(args: argparse.Namespace) -> int:
    import asyncio

    from skillscale.core.llm import LLMSettings
    from skillscale.core.runtime import install_stop_signals, run, setup_logging
    from skillscale.gateway.serve import serve
    from skillscale.gateway.service import GatewayConfig

    setup_logging("WARNING")
    config = GatewayConfig(
        host=args.host,
        port=args.port,
        token=args.token or None,
        proxy_xsub=args.proxy_xsub,
        proxy_xpub=args.proxy_xpub,
        metrics_url=None if args.metrics_url in ("", "off") else args.metrics_url,
        skills_dirs=_dirs(args.skills_dir),
        timeout=args.timeout,
        max_body_bytes=args.max_body_bytes,
        cors_origins=_list(args.cors_origin),
        allowed_hosts=_list(args.allowed_host),
        allowed_origins=_list(args.allowed_origin),
        matcher=args.matcher,
        llm=LLMSettings.load() if args.matcher != "keyword" else None,
        curve=_curve_keys(args),
    )

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)

        def ready(info: dict[str, Any]) -> None:
            if args.json:
                _print_ready(info)
            else:
                print(f"SkillScale gateway on {info['url']} (console at /, API at /v1, "
                      f"contract at /openapi.json)", flush=True)  # fmt: skip

        return await serve(config, stop, on_ready=ready)

    code: int = run(main)  # a SkillScaleError becomes one line in main()
    return code or EXIT_OK


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p = sub.add_parser("gateway", help="serve the HTTP API and the web console")
    # (argparse declarations of different commands look alike; these are the gateway's own.)
    _flag(p, "--host", "SKILLSCALE_GATEWAY_HOST", "127.0.0.1", "interface to bind")
    _flag(p, "--port", "SKILLSCALE_GATEWAY_PORT", 8401, "HTTP port, 0 = any free", type=int)
    _flag(
        p,
        "--token",
        "SKILLSCALE_GATEWAY_TOKEN",
        None,
        "bearer token API clients must send (required beyond loopback; prefer the "
        "variable, a flag shows in ps)",
        shown=None,
    )
    _flag(
        p,
        "--metrics-url",
        "SKILLSCALE_METRICS_URL",
        "http://127.0.0.1:9100/metrics",
        "the proxy's Prometheus endpoint, scraped for /v1/stats ('off': none)",
    )
    _flag(
        p,
        "--timeout",
        "SKILLSCALE_CLIENT_TIMEOUT",
        60.0,
        "seconds a call waits for its reply when the body gives none",
        type=_seconds,
    )
    _flag(
        p,
        "--max-body-bytes",
        "SKILLSCALE_GATEWAY_MAX_BODY",
        MAX_REQUEST_BYTES,
        "largest request body accepted (bytes; the bus's own limit by default)",
        type=_positive_int,
    )
    _flag(
        p,
        "--matcher",
        "SKILLSCALE_GATEWAY_MATCHER",
        "auto",
        "router of POST /v1/invoke: auto (LLM when configured, else keyword), keyword, llm",
        choices=("auto", "keyword", "llm"),
    )
    _flag(
        p,
        "--cors-origin",
        "SKILLSCALE_GATEWAY_CORS_ORIGINS",
        None,
        "allow cross-origin calls from these origins (comma-separated; CORS is off without it)",
        shown=None,
    )
    _flag(
        p,
        "--allowed-host",
        "SKILLSCALE_GATEWAY_ALLOWED_HOSTS",
        None,
        "loopback: Host headers to accept besides 127.0.0.1/localhost:PORT (comma-separated)",
        shown=None,
    )
    _flag(
        p,
        "--allowed-origin",
        "SKILLSCALE_GATEWAY_ALLOWED_ORIGINS",
        None,
        "loopback: browser Origins to accept besides this gateway's own (comma-separated)",
        shown=None,
    )
    add_skills_dir(p)
    add_proxy_endpoints(p)
    add_curve_peer(p)
    p.add_argument("--json", action="store_true", help="print the ready line as JSON")
    p.set_defaults(func=_cmd_gateway)
