"""``skillscale config``: the configuration file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from skillscale.tools.cli.common import (
    EXIT_OK,
)


def _cmd_config(args: argparse.Namespace) -> int:
    from skillscale.core.llm import write_config_template

    path = write_config_template(Path(args.path).expanduser() if args.path else None,
                                 force=args.force)  # fmt: skip
    print(f"wrote {path}")
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_config = sub.add_parser("config", help="the configuration file")
    config_sub = p_config.add_subparsers(dest="config_cmd", required=True)
    p_init = config_sub.add_parser("init", help="write a commented template")
    p_init.add_argument("--path", help="default $SKILLSCALE_CONFIG or ~/.skillscale/config.yaml")
    p_init.add_argument("--force", action="store_true", help="overwrite an existing file")
    p_config.set_defaults(func=_cmd_config)
