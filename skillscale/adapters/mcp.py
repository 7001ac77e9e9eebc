"""An MCP server exposing the fabric's skills to any MCP client.

``skillscale mcp`` serves one tool per skill (input schema from the skill's
``metadata.input_schema``, else a ``data`` string) and one task-based tool per
topic, over stdio (Claude Code, Codex, Cursor start it as a subprocess) or
streamable HTTP (``--transport http``). Each call goes through a running
fabric with the SDK client; a failed call comes back as an MCP tool error
with the reply's error code in its text.

Built on the low-level ``mcp.server.lowlevel.Server`` rather than FastMCP:
tools here are data (one per skill, with per-skill JSON schemas), not Python
functions.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mcp.types as types
from mcp.server.lowlevel import Server

from skillscale.adapters.common import ToolSpec, skill_specs, task_specs
from skillscale.client import SkillScaleClient
from skillscale.discovery import Catalog, SkillDiscovery
from skillscale.errors import SkillScaleError


def build_server(client: SkillScaleClient, catalog: Catalog) -> Server[Any]:
    """The MCP server for ``catalog``, calling through ``client``."""
    server: Server[Any] = Server("skillscale")
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


async def serve_http(client: SkillScaleClient, catalog: Catalog, host: str, port: int) -> None:
    """Serve streamable HTTP at ``http://host:port/mcp``."""
    import contextlib

    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.routing import Mount

    manager = StreamableHTTPSessionManager(app=build_server(client, catalog))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        async with manager.run():
            yield

    app = Starlette(routes=[Mount("/mcp", app=manager.handle_request)], lifespan=lifespan)
    # Bound here, before uvicorn starts, so the endpoint (and a free port's
    # number) can be announced: connections wait in the listen backlog.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    url = f"http://{host}:{sock.getsockname()[1]}/mcp"
    print(json.dumps({"event": "ready", "role": "mcp", "url": url}), flush=True)
    config = uvicorn.Config(app, log_level="warning")
    await uvicorn.Server(config).serve(sockets=[sock])


def catalog_for(paths: Sequence[str | Path]) -> Catalog:
    """The catalogue the MCP tools are built from."""
    return SkillDiscovery(list(paths)).scan()
