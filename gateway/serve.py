"""Serving the gateway with uvicorn, under our own stop event.

uvicorn's ``Server.serve`` would install its own signal handlers; the role
runs under :func:`skillscale.core.runtime.install_stop_signals` like every
other, so :class:`_Server` leaves signals alone and reports when it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from skillscale.core.errors import ConfigError
from skillscale.core.runtime import within
from skillscale.core.transport import Transport
from skillscale.gateway.app import create_app
from skillscale.gateway.security import check_exposure
from skillscale.gateway.service import Gateway, GatewayConfig

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 10.0
SHUTDOWN_GRACE = 3.0


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # our stop event owns the signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound here so port 0 is known before the app is built)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"gateway port {port} on {host} cannot be bound ({exc.strerror}); is a gateway "
            "already running? Choose another with --port / SKILLSCALE_GATEWAY_PORT"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(
    config: GatewayConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    transport: Transport | None = None,
) -> int:
    """Run the gateway until ``stop``; the process exit status (1 if a task crashed)."""
    try:
        check_exposure(config.host, config.token)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    sock = bind(config.host, config.port)
    config.port = sock.getsockname()[1]
    try:
        async with Gateway(config, transport=transport) as gateway:
            server = _Server(
                uvicorn.Config(
                    create_app(gateway),
                    log_level="warning",
                    access_log=False,
                    # httptools' C parser; uvloop is the loop already (core.runtime.run).
                    http="httptools",
                    # No X-Forwarded-* rewriting: nothing here reads the client
                    # address, and trusting forwarded headers is a choice to make
                    # with the proxy in front, not by default.
                    proxy_headers=False,
                    server_header=False,
                    lifespan="off",
                    timeout_graceful_shutdown=int(SHUTDOWN_GRACE),
                )
            )
            task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
            listening = asyncio.ensure_future(server.listening.wait())
            await asyncio.wait([task, listening], timeout=STARTUP_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            listening.cancel()
            if not server.listening.is_set():
                server.should_exit = True
                await asyncio.gather(task, return_exceptions=True)
                raise ConfigError("the gateway's HTTP server did not start")
            host = f"[{config.host}]" if ":" in config.host else config.host
            if on_ready is not None:
                on_ready({"event": "ready", "role": "gateway", "url": f"http://{host}:{config.port}/",
                          "port": config.port})  # fmt: skip
            crash = asyncio.ensure_future(gateway.crashed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait([task, crash, stopper], return_when=asyncio.FIRST_COMPLETED)
            crash.cancel()
            stopper.cancel()
            gateway.end_streams()  # open event streams end now, not after the grace
            server.should_exit = True
            try:
                await within(task, SHUTDOWN_GRACE + 2)
            except asyncio.TimeoutError:
                log.warning("the HTTP server did not stop in time")
            return 1 if gateway.crashed.is_set() else 0
    finally:
        sock.close()
