"""``skillscale invoke``: one intent, one reply."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from skillscale.core.errors import SkillScaleError
from skillscale.tools.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    _curve_keys,
    _read_data,
    add_curve_peer,
    add_proxy_endpoints,
    add_timeout,
)


def _cmd_invoke(args: argparse.Namespace) -> int:
    from skillscale.core.runtime import run, setup_logging
    from skillscale.sdk.client import SkillScaleClient
    from skillscale.tools.bench import bench_intent

    setup_logging("WARNING")
    data = _read_data(args.data) if args.data is not None else None
    if not (args.skill or data is not None or args.text):
        print("error: give TEXT, --data or --skill", file=sys.stderr)
        return EXIT_USAGE
    intent = bench_intent(args.text, args.skill, data)

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


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
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
