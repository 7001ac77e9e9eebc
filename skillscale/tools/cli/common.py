"""What every command group shares: flags with ``SKILLSCALE_*`` twins, value types,
the ready line, CURVE key flags."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from skillscale.core.discovery import default_skills_dirs
from skillscale.core.errors import ConfigError
from skillscale.core.security import CurveKeys
from skillscale.core.transport import (
    DEFAULT_PROXY_XPUB,
    DEFAULT_PROXY_XSUB,
    proxy_xpub_endpoint,
    proxy_xsub_endpoint,
)

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
    return CurveKeys(Path(secret), Path(server)).validate() if secret and server else None


def _print_ready(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


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


def _switch(p: argparse.ArgumentParser, flag: str, env: str, help: str) -> None:
    """An on/off flag with its ``SKILLSCALE_*`` twin (``1``, ``true`` or ``yes`` turn it on)."""
    on = os.environ.get(env, "").strip().lower() in ("1", "true", "yes")
    p.add_argument(flag, action="store_true", default=on, help=f"{help} [env {env}=1]")


def add_skills_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skills-dir",
        action="append",
        metavar="DIR",
        help="skill root (repeatable) [env SKILLSCALE_SKILLS_DIR, os.pathsep-separated; "
        "default ./skills, else the bundled skills]",
    )


def add_proxy_endpoints(p: argparse.ArgumentParser) -> None:
    # Without SKILLSCALE_PROXY_X*, the ports `skillscale up` reads
    # (SKILLSCALE_HOST, SKILLSCALE_XSUB_PORT, SKILLSCALE_XPUB_PORT) place the
    # proxy, so one set of variables serves the fabric and its clients.
    _flag(
        p,
        "--proxy-xsub",
        "SKILLSCALE_PROXY_XSUB",
        proxy_xsub_endpoint(),
        "proxy endpoint publishers connect to (comma-separated: a failover pair)",
        shown=f"{DEFAULT_PROXY_XSUB}, or SKILLSCALE_HOST:SKILLSCALE_XSUB_PORT",
    )
    _flag(
        p,
        "--proxy-xpub",
        "SKILLSCALE_PROXY_XPUB",
        proxy_xpub_endpoint(),
        "proxy endpoint subscribers connect to (comma-separated, same order)",
        shown=f"{DEFAULT_PROXY_XPUB}, or SKILLSCALE_HOST:SKILLSCALE_XPUB_PORT",
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


def _read_data(spec: str) -> str:
    if spec == "-":
        return sys.stdin.read()
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(
                f"--data {spec}: cannot read {path} ({exc.strerror}); give an existing file "
                "after @, or the data itself"
            ) from None
    return spec


def port_in_use_error(what: str, port: int | str, flag: str) -> ConfigError:
    """The one-line message for a port another process holds."""
    return ConfigError(
        f"{what} port {port} is already in use; is a fabric already running? "
        f"Stop it, or choose another port with {flag}"
    )


def add_health_port(p: argparse.ArgumentParser) -> None:
    """``--health-port``/``--health-host``: a role's own ``/healthz`` and ``/readyz``."""
    _flag(
        p,
        "--health-port",
        "SKILLSCALE_HEALTH_PORT",
        -1,
        "HTTP port for /healthz (liveness) and /readyz (readiness), 0 = any free, -1 = off",
        type=int,
    )
    _flag(
        p,
        "--health-host",
        "SKILLSCALE_HEALTH_HOST",
        "127.0.0.1",
        "interface of the health port; a pod binds 0.0.0.0 for its kubelet probes",
    )
