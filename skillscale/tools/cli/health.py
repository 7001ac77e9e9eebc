"""``skillscale health URL``: probe a role's health endpoint (for images without curl)."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from skillscale.core.errors import ConfigError
from skillscale.tools.cli.common import EXIT_FAIL, EXIT_OK, _flag, _seconds

MAX_BODY = 4096
"""Bytes of the answer read: a probe's reason is one line."""


def probe(url: str, timeout: float) -> str | None:
    """None if ``url`` answers 2xx within ``timeout`` seconds, else one line saying why."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url!r} is not an http(s) URL; e.g. http://127.0.0.1:9100/readyz")
    try:
        # The scheme is checked above: no file:// or other handler can be reached.
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310
            answer.read(MAX_BODY)
            return None
    except urllib.error.HTTPError as exc:
        body = exc.read(MAX_BODY).decode("utf-8", "replace")
        return f"{url}: HTTP {exc.code}" + _reason(body)
    except (urllib.error.URLError, OSError) as exc:
        cause = getattr(exc, "reason", exc)
        return f"{url}: unreachable ({cause})"


def _reason(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return f": {body.strip()[:200]}" if body.strip() else ""
    reason = doc.get("reason") if isinstance(doc, dict) else None
    return f": {str(reason)[:200]}" if reason else ""


def _cmd_health(args: argparse.Namespace) -> int:
    why = probe(args.url, args.timeout)
    if why is None:
        return EXIT_OK
    print(why, flush=True)
    return EXIT_FAIL


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_health = sub.add_parser(
        "health",
        help="probe a health URL: exit 0 if it answers 2xx, else one line and exit 1",
    )
    p_health.add_argument(
        "url",
        help="e.g. http://127.0.0.1:9100/readyz (proxy) or http://127.0.0.1:8080/healthz (server)",
    )
    _flag(
        p_health,
        "--timeout",
        "SKILLSCALE_HEALTH_TIMEOUT",
        3.0,
        "seconds to wait for the answer",
        type=_seconds,
    )
    p_health.set_defaults(func=_cmd_health)
