"""Every example runs against a live fabric, without an API key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, RoleProcess, role_env

pytestmark = pytest.mark.integration
EXAMPLES = ROOT / "examples"


def run_example(proxy: RoleProcess, name: str) -> str:
    env = role_env(
        SKILLSCALE_PROXY_XSUB=proxy.ready["xsub"],
        SKILLSCALE_PROXY_XPUB=proxy.ready["xpub"],
    )
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120,
        env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_direct_client(proxy: RoleProcess, bundled_servers: list[RoleProcess]) -> None:
    out = run_example(proxy, "direct_client.py")
    assert "## Summary" in out and "## CSV Analysis" in out and "Dead Code Report" in out
    assert "success code-complexity explicit" in out and "as expected: [no_match]" in out


def test_langchain_agent(proxy: RoleProcess, bundled_servers: list[RoleProcess]) -> None:
    out = run_example(proxy, "langchain_agent.py")
    assert "## Summary" in out and "captured 1 trajectory event(s)" in out


def test_langgraph_graph(proxy: RoleProcess, bundled_servers: list[RoleProcess]) -> None:
    out = run_example(proxy, "langgraph_graph.py")
    assert "TOPIC_DATA_PROCESSING via keyword" in out and "ToolMessage: ## Code Complexity" in out


def test_crewai_crew(proxy: RoleProcess, bundled_servers: list[RoleProcess]) -> None:
    pytest.importorskip("crewai", reason="the crewai extra (~1 GB) is not installed")
    out = run_example(proxy, "crewai_crew.py")
    assert "csv_analyzer" in out and "## CSV Analysis" in out


def test_mcp_configs_point_at_the_mcp_command() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    configs = [
        json.loads((EXAMPLES / "mcp" / "claude_code.mcp.json").read_text())["mcpServers"],
        json.loads((EXAMPLES / "mcp" / "cursor.mcp.json").read_text())["mcpServers"],
        tomllib.loads((EXAMPLES / "mcp" / "codex.config.toml").read_text())["mcp_servers"],
    ]
    for config in configs:
        assert config["skillscale"]["command"] == "skillscale"
        assert config["skillscale"]["args"] == ["mcp"]
    help_text = subprocess.run([sys.executable, "-m", "skillscale", "mcp", "--help"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "--transport" in help_text
    assert Path(EXAMPLES / "mcp" / "README.md").is_file()
