"""Common mistakes through the real CLI: one line naming cause and fix, no traceback."""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def test_a_busy_failover_peer_port_names_that_port_not_the_metrics_one(busy_port: int) -> None:
    one_line(
        cli("proxy", "--xsub-bind", "tcp://127.0.0.1:0", "--xpub-bind", "tcp://127.0.0.1:0",
            "--router-bind", "tcp://127.0.0.1:0", "--metrics-port", "-1",
            "--failover", "primary", "--peer-bind", f"tcp://127.0.0.1:{busy_port}",
            "--peer-connect", "tcp://127.0.0.1:1"),
        f"peer (PUB) port {busy_port}", "--peer-bind",
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


def test_matcher_llm_without_an_llm() -> None:
    result = cli(
        "server", "--matcher", "llm", "--skills-dir", str(ROOT / "skills" / "data-processing"),
        "--proxy-xsub", "tcp://127.0.0.1:1", "--proxy-xpub", "tcp://127.0.0.1:2",
    )  # fmt: skip
    one_line(result, "--matcher llm", "SKILLSCALE_LLM_MODEL")


def test_a_child_of_up_that_fails_before_ready_shows_its_reason() -> None:
    # Every server child inherits SKILLSCALE_MATCHER=llm and refuses to start.
    result = cli(
        "up", "--xsub-port", "0", "--xpub-port", "0", "--router-port", "0",
        "--metrics-port", "-1", "--skills-dir", str(ROOT / "skills"),
        SKILLSCALE_MATCHER="llm",
    )  # fmt: skip
    one_line(result, "server:", "before it was ready", "--matcher llm needs an LLM")


def test_the_banner_names_ports_that_are_not_the_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from skillscale.tools.cli.up import print_banner

    info = {
        "xsub": "tcp://127.0.0.1:6444", "xpub": "tcp://127.0.0.1:5555", "metrics": None,
        "servers": [{"topics": ["TOPIC_DATA_PROCESSING"], "skills": ["text-summarizer"]}],
    }  # fmt: skip
    print_banner(info)
    try_line = next(line for line in capsys.readouterr().out.splitlines() if "Try:" in line)
    assert "--proxy-xsub tcp://127.0.0.1:6444" in try_line and "--proxy-xpub" not in try_line


# -- CURVE: the real cause on both sides ---------------------------------------


@pytest.fixture(scope="module")
def curve_proxy(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, subprocess.Popen[bytes], str, str]]:
    from skillscale.core.security import generate_keypair

    root = tmp_path_factory.mktemp("curve")
    for name in ("proxy", "alice", "mallory"):
        generate_keypair(root, name)
    (root / "clients").mkdir()
    (root / "servers").mkdir()
    (root / "clients" / "alice.key").write_bytes((root / "alice.key").read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "skillscale", "proxy", "--xsub-bind", "tcp://127.0.0.1:0",
         "--xpub-bind", "tcp://127.0.0.1:0", "--router-bind", "tcp://127.0.0.1:0",
         "--metrics-port", "-1", "--curve-secret", str(root / "proxy.key_secret"),
         "--curve-clients", str(root / "clients"), "--curve-servers", str(root / "servers")],
        cwd=ROOT, env=role_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        yield root, proc, ready["xsub"], ready["xpub"]
    finally:
        proc.kill()
        proc.wait(10)


def proxy_logs(proc: subprocess.Popen[bytes], needle: str, timeout: float = 10.0) -> str:
    """The proxy's stderr up to the first line containing ``needle``."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while needle.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), f"proxy never logged {needle!r}: {seen!r}"
            chunk = os.read(proc.stderr.fileno(), 65536)
            assert chunk, f"proxy exited: {seen!r}"
            seen += chunk
    return seen.decode(errors="replace")


def test_a_client_without_keys_is_told_the_proxy_requires_curve(curve_proxy: Any) -> None:
    _root, proc, xsub, xpub = curve_proxy
    started = time.monotonic()
    result = cli("invoke", "TOPIC_X", "hi", "--proxy-xsub", xsub, "--proxy-xpub", xpub,
                 "--timeout", "20")  # fmt: skip
    one_line(result, "requires CURVE keys", "SKILLSCALE_CURVE_SECRET", xsub)
    assert "skillscale up` running" not in result.stderr
    assert time.monotonic() - started < 15  # the cause is named, not waited out
    logged = proxy_logs(proc, "no CURVE keys")
    assert "refused a handshake on the " in logged


def test_a_client_with_an_unlisted_key_is_told_so(curve_proxy: Any) -> None:
    root, proc, xsub, xpub = curve_proxy
    result = cli(
        "invoke", "TOPIC_X", "hi", "--proxy-xsub", xsub, "--proxy-xpub", xpub,
        "--curve-secret", str(root / "mallory.key_secret"),
        "--curve-server-key", str(root / "proxy.key"), "--timeout", "20",
    )  # fmt: skip
    one_line(result, "refused this client's CURVE key", "mallory.key", "--curve-clients")
    assert "refused a CURVE handshake on publishers" in proxy_logs(proc, "no allow-list")


async def test_an_sdk_client_with_a_missing_key_fails_before_any_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skillscale.sdk.client as client_module
    from skillscale import SkillScaleClient
    from skillscale.core.errors import ConfigError
    from skillscale.core.security import CurveKeys

    def no_transport() -> None:
        raise AssertionError("a socket context was made before the keys were checked")

    monkeypatch.setattr(client_module, "ZmqTransport", no_transport)
    keys = CurveKeys(tmp_path / "gone.key_secret", tmp_path / "proxy.key")
    with pytest.raises(ConfigError, match="does not exist"):
        async with SkillScaleClient(curve=keys, connect_timeout=1):
            pass


@pytest.mark.parametrize(
    ("base_url", "warned"),
    [(None, True), ("https://api.example.com/v1", True), ("http://localhost:11434/v1", False)],
)
def test_an_llm_without_a_key_is_warned_about_once_at_start(
    base_url: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from skillscale.core.llm import LLMSettings
    from skillscale.skill_server.server import ServerConfig, SkillServer

    config = ServerConfig(
        topics=["TOPIC_DATA_PROCESSING"], skills_dirs=[ROOT / "skills" / "data-processing"],
        matcher="auto", llm=LLMSettings(model="m", base_url=base_url), executor="cold",
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        SkillServer(config)
    hits = [r for r in caplog.records if "without an API key" in r.getMessage()]
    assert len(hits) == (1 if warned else 0), [r.getMessage() for r in caplog.records]
