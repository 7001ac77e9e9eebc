"""``skillscale keys``: CURVE certificates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from skillscale.tools.cli.common import EXIT_OK, _flag


def _cmd_keys(args: argparse.Namespace) -> int:
    from skillscale.core.security import generate_keypair

    directory = Path(args.dir).expanduser()
    for name in args.names:
        public, secret = generate_keypair(directory, name)
        print(f"{name}: public {public}  secret {secret}")
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_keys = sub.add_parser("keys", help="CURVE certificates")
    # (Same shape as `config`: each is a group with one subcommand.)
    keys_sub = p_keys.add_subparsers(dest="keys_cmd", required=True)
    p_gen = keys_sub.add_parser("generate", help="write NAME.key and NAME.key_secret")
    p_gen.add_argument("names", nargs="+", metavar="NAME")
    _flag(p_gen, "--dir", "SKILLSCALE_KEYS_DIR", "~/.skillscale/keys", "where to write the keys")
    p_keys.set_defaults(func=_cmd_keys)
