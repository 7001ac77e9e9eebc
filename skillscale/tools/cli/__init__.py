"""The ``skillscale`` command line: one module per command group.

Every flag has an environment-variable twin (``SKILLSCALE_*``) shown in
``--help``; durations are seconds, sizes bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import zmq

from skillscale import __version__
from skillscale.core.errors import SkillScaleError
from skillscale.tools.cli import (
    bench,
    config,
    distill,
    gateway,
    health,
    invoke,
    keys,
    mcp,
    operator,
    proxy,
    server,
    skills,
    up,
)
from skillscale.tools.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

_GROUPS = (
    up,
    proxy,
    mcp,
    config,
    keys,
    server,
    invoke,
    bench,
    skills,
    health,
    operator,
    gateway,
    distill,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="skillscale",
        description="SkillScale: a ZeroMQ skill execution fabric for AI agents.",
    )
    parser.add_argument("--version", action="version", version=f"skillscale {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks of errors (also SKILLSCALE_LOG_LEVEL=debug)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``skillscale`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "workers", 0) is None and args.command == "server":
        from skillscale.skill_server.server import default_workers

        args.workers = default_workers()
    debug = args.debug or os.environ.get("SKILLSCALE_LOG_LEVEL", "").lower() == "debug"
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except SkillScaleError as exc:
        # A mistake of the user's (a busy port, a missing file, a bad config):
        # one line naming the cause and the fix; the traceback only on demand.
        if debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, zmq.ZMQError) as exc:
        # The system said no (an address that cannot be bound, a folder that
        # cannot be written): its own words, on one line.
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return code


if __name__ == "__main__":
    sys.exit(main())
