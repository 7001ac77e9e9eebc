"""The command line: `skillscale up`, `invoke`, `skills`, and clean stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import BUNDLED_SKILLS, FIXTURE_SKILLS, ROOT, RoleProcess, pid_alive, role_env

pytestmark = pytest.mark.integration


def cli(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skillscale", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=role_env(),
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def fabric() -> RoleProcess:
    up = RoleProcess(
        "up", "--xsub-port", "0", "--xpub-port", "0", "--router-port", "0", "--metrics-port", "0",
        "--skills-dir", str(BUNDLED_SKILLS), "--json",
    )  # fmt: skip
    yield up
    up.close()


def endpoints(fabric: RoleProcess) -> list[str]:
    return ["--proxy-xsub", fabric.ready["xsub"], "--proxy-xpub", fabric.ready["xpub"]]


def test_up_serves_every_category(fabric: RoleProcess) -> None:
    topics = sorted(t for s in fabric.ready["servers"] for t in s["topics"])
    assert topics == ["TOPIC_CODE_ANALYSIS", "TOPIC_DATA_PROCESSING"]


def test_invoke_summarize(fabric: RoleProcess) -> None:
    text = "summarize: Cats sleep a lot. They also purr when content. Dogs bark at strangers."
    result = cli("invoke", "TOPIC_DATA_PROCESSING", text, *endpoints(fabric))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("## Summary")


def test_invoke_skill_with_data_from_stdin_and_json_output(fabric: RoleProcess) -> None:
    result = cli(
        "invoke", "TOPIC_CODE_ANALYSIS", "--skill", "code-complexity", "--data", "-", "--json",
        *endpoints(fabric), stdin="def f(a):\n    return a\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["status"] == "success" and reply["skill"] == "code-complexity"
    assert reply["_trace"]["matcher_mode"] == "explicit"


def test_invoke_data_from_file(fabric: RoleProcess, tmp_path: Path) -> None:
    data = tmp_path / "t.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    result = cli(
        "invoke",
        "TOPIC_DATA_PROCESSING",
        "--skill",
        "csv-analyzer",
        "--data",
        f"@{data}",
        *endpoints(fabric),
    )
    assert result.returncode == 0 and "2 rows x 2 columns" in result.stdout


def test_invoke_error_exit_code_and_message(fabric: RoleProcess) -> None:
    result = cli("invoke", "TOPIC_DATA_PROCESSING", "order a pizza", *endpoints(fabric))
    assert result.returncode == 1
    assert "error [no_match]" in result.stderr


def test_invoke_without_proxy_fails_fast() -> None:
    result = cli(
        "invoke",
        "TOPIC_X",
        "hi",
        "--proxy-xsub",
        "tcp://127.0.0.1:1",
        "--proxy-xpub",
        "tcp://127.0.0.1:2",
        "--timeout",
        "1",
    )
    assert result.returncode == 1 and "proxy" in result.stderr


def test_timeout_is_in_seconds() -> None:
    result = cli("server", "--timeout", "300000", "--topic", "T")
    assert result.returncode == 2 and "seconds" in result.stderr


def test_environment_twins_are_parsed_like_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from skillscale.tools.cli import build_parser

    monkeypatch.setenv("SKILLSCALE_TIMEOUT", "12.5")
    monkeypatch.setenv("SKILLSCALE_WORKERS", "3")
    monkeypatch.setenv("SKILLSCALE_SERVER_MODE", "pubsub")
    args = build_parser().parse_args(["server", "--topic", "T"])
    assert (args.timeout, args.workers, args.mode) == (12.5, 3, "pubsub")
    monkeypatch.setenv("SKILLSCALE_TIMEOUT", "300000")  # the reference's milliseconds
    with pytest.raises(SystemExit):
        build_parser().parse_args(["server", "--topic", "T"])


def test_skills_list_show_validate() -> None:
    listed = cli("skills", "list", "--skills-dir", str(BUNDLED_SKILLS), "--json")
    assert listed.returncode == 0
    catalog = json.loads(listed.stdout)
    assert [s["name"] for s in catalog["TOPIC_DATA_PROCESSING"]] == [
        "csv-analyzer",
        "text-summarizer",
    ]
    shown = cli("skills", "show", "csv-analyzer", "--skills-dir", str(BUNDLED_SKILLS))
    assert shown.returncode == 0 and "TOPIC_DATA_PROCESSING" in shown.stdout
    assert cli("skills", "validate", str(BUNDLED_SKILLS)).returncode == 0
    bad = cli("skills", "validate", str(FIXTURE_SKILLS / "testing"))
    assert bad.returncode == 1 and "Bad_Skill" in bad.stdout


def test_ctrl_c_stops_everything_cleanly() -> None:
    up = RoleProcess(
        "up", "--xsub-port", "0", "--xpub-port", "0", "--router-port", "0", "--metrics-port", "-1",
        "--skills-dir", str(BUNDLED_SKILLS), "--json",
    )  # fmt: skip
    children = [up.ready["proxy_pid"], *(s["pid"] for s in up.ready["servers"])]
    try:
        assert all(pid_alive(pid) for pid in children)
        up.signal(signal.SIGINT)
        assert up.proc.wait(30) == 0
        assert not any(pid_alive(pid) for pid in children)
    finally:
        up.close()


def test_up_without_skills_fails_clearly(tmp_path: Path) -> None:
    result = cli(
        "up",
        "--xsub-port",
        "0",
        "--xpub-port",
        "0",
        "--router-port",
        "0",
        "--metrics-port",
        "-1",
        "--skills-dir",
        str(tmp_path),
    )
    assert result.returncode == 1 and "no valid skills" in result.stderr


def test_keys_generate(tmp_path: Path) -> None:
    result = cli("keys", "generate", "proxy", "alice", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("proxy", "alice"):
        assert (tmp_path / f"{name}.key").is_file()
        secret = tmp_path / f"{name}.key_secret"
        assert secret.stat().st_mode & 0o777 == 0o600
        assert "secret-key" in secret.read_text()


def test_up_restarts_a_server_that_dies() -> None:
    up = RoleProcess(
        "up", "--xsub-port", "0", "--xpub-port", "0", "--router-port", "0",
        "--metrics-port", "-1", "--skills-dir", str(BUNDLED_SKILLS), "--json",
    )  # fmt: skip
    try:
        victim = next(s for s in up.ready["servers"] if "TOPIC_DATA_PROCESSING" in s["topics"])
        os.kill(victim["pid"], signal.SIGKILL)
        # The proxy holds the request (no_server wait) while `up` restarts the server.
        result = cli(
            "invoke", "TOPIC_DATA_PROCESSING", "summarize: Restarted servers answer. Good.",
            "--timeout", "20", *endpoints(up),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("## Summary")
    finally:
        up.close()
