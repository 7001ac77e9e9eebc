"""``skillscale proxy``: the bus."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from skillscale.core.errors import ConfigError
from skillscale.core.security import ProxyCurve
from skillscale.tools.cli.common import (
    _flag,
    _positive_int,
    _print_ready,
    _seconds,
    port_in_use_error,
)

if TYPE_CHECKING:
    from skillscale.proxy.proxy import ProxyConfig


def _proxy_config(args: argparse.Namespace) -> ProxyConfig:
    """The proxy's settings from its flags (binds loopback unless ``--host`` says otherwise)."""
    from skillscale.proxy.failover import FailoverConfig
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
        hwm=args.hwm,
        stuck_timeout=args.stuck_timeout,
        curve=_proxy_curve(args),
        failover=_failover(args, host, FailoverConfig),
        recovery_window=args.recovery_window,
        groups=GroupsConfig(
            heartbeat_timeout=args.heartbeat_timeout,
            no_server_wait=args.no_server_wait,
            no_server_wait_topics=_topic_waits(args.no_server_wait_topic),
            max_queue=args.max_queue,
            max_attempts=args.max_attempts,
        ),
    )


def _topic_wait(value: str) -> tuple[str, float]:
    """``TOPIC=SECONDS`` (one ``--no-server-wait-topic``)."""
    topic, sep, seconds = value.partition("=")
    if not sep or not topic.strip():
        raise argparse.ArgumentTypeError(f"{value!r}: give TOPIC=SECONDS, e.g. TOPIC_DATA=60")
    return topic.strip(), _seconds(seconds.strip())


def _topic_waits(given: list[str] | list[tuple[str, float]] | None) -> dict[str, float]:
    """The per-topic waits: flags (parsed) or the environment (one comma-separated string)."""
    waits: dict[str, float] = {}
    for item in given or []:
        if isinstance(item, str):  # from SKILLSCALE_NO_SERVER_WAIT_TOPICS
            for part in item.split(","):
                if part.strip():
                    try:
                        topic, seconds = _topic_wait(part)
                    except (argparse.ArgumentTypeError, ValueError) as exc:
                        raise ConfigError(f"SKILLSCALE_NO_SERVER_WAIT_TOPICS: {exc}") from None
                    waits[topic] = seconds
        else:
            waits[item[0]] = item[1]
    return waits


def _failover(args: argparse.Namespace, host: str, make: Any) -> Any:
    """The Binary Star half this proxy is, if ``--failover`` says so."""
    if args.failover == "off":
        return None
    if not args.peer_connect:
        raise ConfigError(
            "--failover needs --peer-connect / SKILLSCALE_PEER_CONNECT: the endpoint where "
            "the other proxy of the pair publishes its state (its --peer-bind)"
        )
    return make(
        primary=args.failover == "primary",
        peer_bind=args.peer_bind or f"tcp://{host}:5577",
        peer_connect=args.peer_connect,
        heartbeat=args.peer_heartbeat,
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
                    "health": proxy.health_url,
                    "peer": proxy.peer_endpoint,
                    "failover": proxy.bstar.state.value if proxy.bstar else None,
                }
            )
            status = await serve_until(stop, proxy)
        return 1 if proxy.crashed.is_set() else status

    try:
        return run(main)
    except (OSError, zmq.ZMQError) as exc:  # metrics (HTTP) and ZeroMQ binds
        if exc.errno != errno.EADDRINUSE:
            raise
        raise _busy_port(config) from None


def _busy_port(config: ProxyConfig) -> ConfigError:
    """Which of the proxy's ports is taken, as a one-line error naming its flag."""
    endpoints = [
        ("publisher (XSUB)", config.xsub_bind, "--xsub-bind / SKILLSCALE_XSUB_BIND"),
        ("subscriber (XPUB)", config.xpub_bind, "--xpub-bind / SKILLSCALE_XPUB_BIND"),
        ("replica-group (ROUTER)", config.router_bind, "--router-bind / SKILLSCALE_ROUTER_BIND"),
    ]
    if config.failover is not None:
        peer = config.failover.peer_bind
        endpoints.append(("failover peer (PUB)", peer, "--peer-bind / SKILLSCALE_PEER_BIND"))
    for what, endpoint, flag in endpoints:
        if endpoint is None or not endpoint.startswith("tcp://"):
            continue
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        any_host = "0.0.0.0"  # noqa: S104 - only to probe whether the port is free
        if port in ("0", "*") or not _taken(any_host if host == "*" else host, int(port)):
            continue
        return port_in_use_error(what, port, flag)
    return port_in_use_error(
        "metrics", str(config.metrics_port), "--metrics-port / SKILLSCALE_METRICS_PORT (-1: off)"
    )


def _taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


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


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
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
        "--hwm",
        "SKILLSCALE_HWM",
        100_000,
        "messages queued per publisher (XSUB) and per replica (router); a publisher "
        "further ahead than that loses messages",
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
    env_waits = os.environ.get("SKILLSCALE_NO_SERVER_WAIT_TOPICS")
    p_proxy.add_argument(
        "--no-server-wait-topic",
        action="append",
        type=_topic_wait,
        metavar="TOPIC=SECONDS",
        default=[env_waits] if env_waits else None,
        help="per-topic --no-server-wait (repeatable), e.g. to hold requests while an "
        "autoscaler starts a topic's first pod [env SKILLSCALE_NO_SERVER_WAIT_TOPICS, "
        "comma-separated TOPIC=SECONDS]",
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
    _flag(
        p_proxy,
        "--failover",
        "SKILLSCALE_FAILOVER",
        "off",
        "run as one half of a Binary Star pair (docs/failover.md): primary or backup",
        choices=("off", "primary", "backup"),
    )
    _flag(
        p_proxy,
        "--peer-bind",
        "SKILLSCALE_PEER_BIND",
        None,
        "where this proxy publishes its failover state to its peer",
        shown="tcp://HOST:5577",
    )
    _flag(
        p_proxy,
        "--peer-connect",
        "SKILLSCALE_PEER_CONNECT",
        None,
        "the peer proxy's --peer-bind, e.g. tcp://proxy-b:5577",
    )
    _flag(
        p_proxy,
        "--peer-heartbeat",
        "SKILLSCALE_PEER_HEARTBEAT",
        1.0,
        "seconds between state messages to the peer; it is taken for dead after twice that",
        type=_seconds,
    )
    _flag(
        p_proxy,
        "--recovery-window",
        "SKILLSCALE_RECOVERY_WINDOW",
        30.0,
        "seconds after a start or take-over during which a caller gets at most one reply "
        "per request id",
        type=_seconds,
    )
    p_proxy.set_defaults(func=_cmd_proxy)
