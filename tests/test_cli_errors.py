"""Common mistakes through the real CLI: one line naming cause and fix, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, role_env


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skillscale", *args], cwd=ROOT, env=role_env(**env),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_busy_bus_port_names_the_port_and_the_flag(busy_port: int) -> None:
    one_line(
        cli("proxy", "--xsub-bind", "tcp://127.0.0.1:0", "--xpub-bind",
            f"tcp://127.0.0.1:{busy_port}", "--router-bind", "tcp://127.0.0.1:0",
            "--metrics-port", "-1"),
        str(busy_port), "--xpub-bind", "already running",
    )  # fmt: skip


def test_a_busy_metrics_port_names_the_port_and_the_flag(busy_port: int) -> None:
    one_line(
        cli("proxy", "--xsub-bind", "tcp://127.0.0.1:0", "--xpub-bind", "tcp://127.0.0.1:0",
            "--router-bind", "tcp://127.0.0.1:0", "--metrics-port", str(busy_port)),
        f"metrics port {busy_port}", "--metrics-port",
    )  # fmt: skip


def test_data_from_a_missing_file() -> None:
    one_line(cli("invoke", "TOPIC_X", "--data", "@/no/such/file.csv"), "/no/such/file.csv")


def test_a_missing_key_file_says_it_does_not_exist() -> None:
    result = cli(
        "invoke", "TOPIC_X", "hi", "--curve-secret", "/no/client.key_secret",
        "--curve-server-key", "/no/proxy.key", "--timeout", "5",
    )  # fmt: skip
    one_line(result, "/no/client.key_secret", "does not exist", "keys generate")


def test_debug_shows_the_traceback() -> None:
    result = cli("--debug", "invoke", "TOPIC_X", "--data", "@/no/such/file.csv")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("skillscale ")


def test_config_init_is_all_comments_and_refuses_to_overwrite(tmp_path: Path) -> None:
    from skillscale.core.llm import LLMSettings

    target = tmp_path / "config.yaml"
    first = cli("config", "init", "--path", str(target))
    assert first.returncode == 0, first.stderr
    assert LLMSettings.load(target) is None  # the template turns no LLM on
    one_line(cli("config", "init", "--path", str(target)), str(target), "--force")


def test_a_broken_config_names_the_file_and_the_line(tmp_path: Path) -> None:
    broken = tmp_path / "config.yaml"
    broken.write_text("llm:\n  model: x\n   base_url: [\n")
    result = cli(
        "server", "--topic", "TOPIC_X", "--skills-dir", str(ROOT / "skills" / "data-processing"),
        SKILLSCALE_CONFIG=str(broken),
    )  # fmt: skip
    one_line(result, str(broken), "line 3")


def test_a_server_on_a_missing_skills_folder_refuses_to_start() -> None:
    one_line(cli("server", "--skills-dir", "/no/such/dir"), "/no/such/dir", "--skills-dir")
