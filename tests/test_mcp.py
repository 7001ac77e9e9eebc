"""The MCP server: listing and calling skills in memory and over stdio."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.memory import create_connected_server_and_client_session

from skillscale import SkillScaleClient
from skillscale.adapters.mcp import build_server
from skillscale.discovery import SkillDiscovery
from tests.helpers import BUNDLED_SKILLS, ROOT, RoleProcess, role_env

pytestmark = pytest.mark.integration
CATALOG = SkillDiscovery([BUNDLED_SKILLS]).scan()
NAMES = ["code-complexity", "csv-analyzer", "dead-code-detector", "text-summarizer",
         "topic_code_analysis", "topic_data_processing"]  # fmt: skip


async def exercise(session: ClientSession) -> None:
    listed = await session.list_tools()
    tools = {t.name: t for t in listed.tools}
    assert sorted(tools) == NAMES
    assert tools["csv-analyzer"].inputSchema["required"] == ["data"]
    assert tools["topic_data_processing"].inputSchema["required"] == ["task"]
    result = await session.call_tool("csv-analyzer", {"data": "a,b\n1,2\n3,4\n"})
    assert not result.isError and "2 rows x 2 columns" in result.content[0].text  # type: ignore[union-attr]
    result = await session.call_tool(
        "topic_code_analysis", {"task": "find unused imports: import os"}
    )
    assert not result.isError and "Dead Code Report" in result.content[0].text  # type: ignore[union-attr]
    failed = await session.call_tool("csv-analyzer", {"data": "no table here"})
    assert failed.isError and "exec_failed" in failed.content[0].text  # type: ignore[union-attr]


async def test_mcp_in_memory(proxy: RoleProcess, bundled_servers: list[RoleProcess]) -> None:
    async with SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as client:
        server = build_server(client, CATALOG)
        async with create_connected_server_and_client_session(server) as session:
            await exercise(session)


async def test_mcp_over_stdio(proxy: RoleProcess, bundled_servers: list[RoleProcess]) -> None:
    env: dict[str, Any] = role_env()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "skillscale", "mcp", "--skills-dir", str(BUNDLED_SKILLS),
              "--proxy-xsub", proxy.ready["xsub"], "--proxy-xpub", proxy.ready["xpub"]],
        env=env,
        cwd=str(ROOT),
    )  # fmt: skip
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await exercise(session)


async def test_mcp_over_streamable_http(
    proxy: RoleProcess, bundled_servers: list[RoleProcess]
) -> None:
    from mcp.client.streamable_http import streamable_http_client

    server = RoleProcess(
        "mcp", "--transport", "http", "--port", "0", "--skills-dir", str(BUNDLED_SKILLS),
        "--proxy-xsub", proxy.ready["xsub"], "--proxy-xpub", proxy.ready["xpub"],
    )  # fmt: skip
    try:
        async with (
            streamable_http_client(server.ready["url"]) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await exercise(session)
    finally:
        server.close()
