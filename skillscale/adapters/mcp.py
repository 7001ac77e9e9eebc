"""An MCP server exposing the fabric's skills to any MCP client.

``skillscale mcp`` serves one tool per skill (input schema from the skill's
``metadata.input_schema``, else a ``data`` string) and one task-based tool per
topic, over stdio (Claude Code, Codex, Cursor start it as a subprocess) or
streamable HTTP (``--transport http``). Each call goes through a running
fabric with the SDK client; a failed call comes back as an MCP tool error
with the reply's error code in its text.

Over HTTP the endpoint checks ``Host`` and ``Origin`` (the SDK's DNS-rebinding
protection: the bound address and the loopback names are allowed, plus
``allowed_hosts``/``allowed_origins``) and, given a token, requires
``Authorization: Bearer <token>``; bound beyond loopback it will not start
without one.

Built on the low-level ``mcp.server.lowlevel.Server`` rather than FastMCP:
tools here are data (one per skill, with per-skill JSON schemas), not Python
functions.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.transport_security import TransportSecuritySettings

from skillscale.adapters.common import ToolSpec, skill_specs, task_specs
from skillscale.core.discovery import Catalog, SkillDiscovery
from skillscale.core.errors import SkillScaleError
from skillscale.sdk.client import SkillScaleClient


def skillscale_version() -> str:
    """Our version, reported as ``serverInfo.version`` (the SDK would report its own)."""
    try:
        return version("skillscale")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from skillscale import __version__

        return __version__


def build_server(client: SkillScaleClient, catalog: Catalog) -> Server[Any]:
    """The MCP server for ``catalog``, calling through ``client``."""
    server: Server[Any] = Server("skillscale", version=skillscale_version())
    specs: dict[str, ToolSpec] = {s.name: s for s in skill_specs(catalog) + task_specs(catalog)}

    @server.list_tools()  # type: ignore[no-untyped-call,untyped-decorator]
    async def list_tools() -> list[types.Tool]:
        return [
            types.Tool(name=s.name, description=s.description, inputSchema=s.schema)
            for s in specs.values()
        ]

    @server.call_tool()  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any]) -> list[types.TextContent]:
        spec = specs.get(name)
        if spec is None:
            raise ValueError(f"unknown tool {name!r}")
        try:
            content = await client.invoke(spec.topic, spec.intent(arguments or {}))
        except SkillScaleError as exc:
            # Raised errors become MCP tool results with isError set.
            raise RuntimeError(f"[{exc.code.value}] {exc.message}") from None
        return [types.TextContent(type="text", text=content)]

    return server


async def serve_stdio(client: SkillScaleClient, catalog: Catalog) -> None:
    """Serve on stdin/stdout until the client closes them."""
    from mcp.server.stdio import stdio_server

    server = build_server(client, catalog)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def is_loopback(host: str) -> bool:
    """True when ``host`` (an interface to bind) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def check_http_exposure(host: str, token: str | None) -> None:
    """Refuse (``ValueError``) to serve HTTP beyond loopback without a bearer token."""
    if not token and not is_loopback(host):
        raise ValueError(
            f"--host {host} is reachable beyond this machine: give a bearer token "
            "(--token or SKILLSCALE_MCP_TOKEN), or bind 127.0.0.1"
        )


def transport_security(
    host: str,
    port: int,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection for an endpoint bound at ``host:port``.

    ``Host`` may name the bound address or a loopback name with the port (a
    wildcard bind adds this machine's hostname), or any of ``allowed_hosts``
    (``NAME:PORT``, ``NAME:*`` for any port). ``Origin``, when a browser sends
    one, must be ``http://`` one of those, or one of ``allowed_origins``.
    """
    names = ["127.0.0.1", "localhost", "[::1]"]
    if _is_unspecified(host):
        names.append(socket.gethostname())
    elif host not in names:
        names.append(f"[{host}]" if ":" in host else host)
    hosts = [f"{name}:{port}" for name in names] + (names if port == 80 else [])
    hosts += [h for h in allowed_hosts if h not in hosts]
    origins = [f"http://{h}" for h in hosts] + list(allowed_origins)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


class BearerAuth:
    """ASGI middleware: HTTP requests need ``Authorization: Bearer <token>``, else 401."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def authorised(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, credential = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(credential.strip(), self.token)
        return False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.authorised(scope["headers"]):
            from starlette.responses import JSONResponse

            response = JSONResponse(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="skillscale"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Asgi:
    """Wraps an ASGI callable so that Starlette's ``Route`` passes it the raw request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class QuietNormalDisconnect(logging.Filter):
    """Drops the SDK's traceback for a GET stream that was closed under it.

    Ending a session (the client's DELETE, which every client sends when it
    disconnects, or the idle timeout) closes the session's streams while the
    standalone GET stream's writer still reads from them; the SDK logs the
    resulting ``ClosedResourceError`` as an ERROR with a traceback. Any other
    error in that writer, and everything else, is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            record.getMessage() == "Error in standalone SSE writer"
            and isinstance(error, anyio.ClosedResourceError)
        )


_QUIET_DISCONNECT = QuietNormalDisconnect()


async def serve_http(
    client: SkillScaleClient,
    catalog: Catalog,
    host: str,
    port: int,
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
) -> None:
    """Serve streamable HTTP at ``http://host:port/mcp``.

    ``token``: required bearer token (mandatory when ``host`` is not loopback);
    ``allowed_hosts``/``allowed_origins``: see :func:`transport_security`.
    """
    import contextlib

    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    check_http_exposure(host, token)
    logging.getLogger("mcp.server.streamable_http").addFilter(_QUIET_DISCONNECT)
    # Bound here, before uvicorn starts, so the endpoint (and a free port's
    # number) can be announced: connections wait in the listen backlog.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port: int = sock.getsockname()[1]
    manager = StreamableHTTPSessionManager(
        app=build_server(client, catalog),
        security_settings=transport_security(host, bound_port, allowed_hosts, allowed_origins),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        async with manager.run():
            yield

    middleware = [Middleware(BearerAuth, token=token)] if token else []
    app = Starlette(
        # A Route (not a Mount) serves /mcp itself rather than redirecting to /mcp/.
        routes=[Route("/mcp", endpoint=_Asgi(manager.handle_request))],
        middleware=middleware,
        lifespan=lifespan,
    )
    url = f"http://{host}:{bound_port}/mcp"
    print(json.dumps({"event": "ready", "role": "mcp", "url": url}), flush=True)
    config = uvicorn.Config(app, log_level="warning")
    await uvicorn.Server(config).serve(sockets=[sock])


def catalog_for(paths: Sequence[str | Path]) -> Catalog:
    """The catalogue the MCP tools are built from."""
    return SkillDiscovery(list(paths)).scan()
