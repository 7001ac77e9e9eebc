"""The MCP server: listing and calling skills in memory, over stdio and over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.memory import (
    create_client_server_memory_streams,
    create_connected_server_and_client_session,
)

from skillscale import SkillScaleClient
from skillscale.adapters.mcp import build_server
from skillscale.core.discovery import SkillDiscovery
from tests.helpers import (
    _LIVE,
    BUNDLED_SKILLS,
    ROOT,
    RoleProcess,
    _die_with_parent,
    free_port,
    role_env,
)

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
    assert failed.isError and "bad_request" in failed.content[0].text  # type: ignore[union-attr]


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


class McpHttp(RoleProcess):
    """``skillscale mcp --transport http`` on a free loopback port, its stderr kept in a file."""

    def __init__(self, proxy: RoleProcess, stderr: Path, *extra: str, **env: str) -> None:
        self.stderr = stderr
        self.args = [sys.executable, "-m", "skillscale", "mcp", "--transport", "http",
                     "--port", "0", "--skills-dir", str(BUNDLED_SKILLS),
                     "--proxy-xsub", proxy.ready["xsub"], "--proxy-xpub", proxy.ready["xpub"],
                     *extra]  # fmt: skip
        with stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                self.args,
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                stderr=err,
                env=role_env(**env),
                cwd=ROOT,
                preexec_fn=_die_with_parent,
            )
        _LIVE.add(self)
        self.ready = self._await_ready(30.0)

    @property
    def url(self) -> str:
        url: str = self.ready["url"]
        return url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def http_server(proxy: RoleProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpHttp]:
    server = McpHttp(proxy, tmp_path_factory.mktemp("mcp") / "stderr.txt")
    yield server
    server.close()


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


async def post_initialize(url: str, **headers: str) -> httpx.Response:
    """A raw initialize request; a session it opens is ended again."""
    async with httpx.AsyncClient(timeout=20) as http:
        response = await http.post(url, json=INITIALIZE, headers=MCP_HEADERS | headers)
        session = response.headers.get("mcp-session-id")
        if session:
            await http.delete(url, headers=headers | {"mcp-session-id": session})
        return response


async def test_mcp_http_refuses_a_foreign_host(http_server: McpHttp) -> None:
    # DNS rebinding: a page on attacker.example whose name now resolves to
    # 127.0.0.1 reaches the port with its own name in Host.
    refused = await post_initialize(http_server.url, Host="attacker.example")
    assert refused.status_code == 421, refused.text
    refused = await post_initialize(http_server.url, Host=f"attacker.example:{http_server.port}")
    assert refused.status_code == 421, refused.text
    served = await post_initialize(http_server.url, Host=f"localhost:{http_server.port}")
    assert served.status_code == 200, served.text


async def test_mcp_http_refuses_a_foreign_origin(http_server: McpHttp) -> None:
    refused = await post_initialize(http_server.url, Origin="http://attacker.example")
    assert refused.status_code == 403, refused.text
    served = await post_initialize(http_server.url, Origin=f"http://localhost:{http_server.port}")
    assert served.status_code == 200, served.text


async def test_mcp_http_bearer_token(proxy: RoleProcess, tmp_path: Path) -> None:
    from mcp.client.streamable_http import streamable_http_client

    server = McpHttp(proxy, tmp_path / "stderr.txt", SKILLSCALE_MCP_TOKEN="s3cret-token")
    try:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret-token"},
        ):
            refused = await post_initialize(server.url, **headers)
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.headers["www-authenticate"].startswith("Bearer")
        auth = {"Authorization": "Bearer s3cret-token"}
        async with (
            httpx.AsyncClient(headers=auth, timeout=20) as http,
            streamable_http_client(server.url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert sorted(t.name for t in (await session.list_tools()).tools) == NAMES
    finally:
        server.close()


def test_mcp_http_beyond_loopback_needs_a_token() -> None:
    env = role_env()
    env.pop("SKILLSCALE_MCP_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "skillscale", "mcp", "--transport", "http",
         "--host", "0.0.0.0", "--port", str(free_port()), "--skills-dir", str(BUNDLED_SKILLS)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ready" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "token" in lines[0] and "0.0.0.0" in lines[0], done.stderr


def test_check_http_exposure() -> None:
    from skillscale.adapters.mcp import check_http_exposure

    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_http_exposure(host, None)
    for host in ("0.0.0.0", "192.0.2.1", "myhost.example", "::"):
        with pytest.raises(ValueError, match="token"):
            check_http_exposure(host, None)
        check_http_exposure(host, "a-token")


async def test_mcp_http_client_disconnect_is_quiet(proxy: RoleProcess, tmp_path: Path) -> None:
    from mcp.client.streamable_http import streamable_http_client

    server = McpHttp(proxy, tmp_path / "stderr.txt")
    try:
        # The client opens the GET stream after initialize, and on leaving
        # ends the session (DELETE) while that stream is open.
        async with (
            streamable_http_client(server.url) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert len((await session.list_tools()).tools) == len(NAMES)
    finally:
        server.close()  # its stderr is complete once it has exited
    stderr = server.stderr.read_text()
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr


async def test_mcp_server_info_reports_skillscale_version(client: SkillScaleClient) -> None:
    server = build_server(client, CATALOG)
    async with (
        create_client_server_memory_streams() as (client_streams, server_streams),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lambda: server.run(*server_streams, server.create_initialization_options()))
        async with ClientSession(*client_streams) as session:
            result = await session.initialize()
        tg.cancel_scope.cancel()
    assert result.serverInfo.name == "skillscale"
    assert result.serverInfo.version == version("skillscale") != version("mcp")
