"""A skill server whose CURVE handshake the proxy refuses is told why.

Against a CURVE proxy, a server without keys (or with a key the proxy does
not list) used to log "waiting for the proxy" and nothing else, forever.
Now the cause is named from the handshake's ZMTP monitor events (the same
core code the SDK client uses, ``skillscale.core.security.diagnosed``): one
warning while the server keeps waiting, or, with ``--connect-timeout``, one
line and exit 1.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FIXTURE_SKILLS, ROOT, RoleProcess, role_env, start_proxy

pytestmark = pytest.mark.timeout(60)
SKILLS = str(FIXTURE_SKILLS / "testing")


@pytest.fixture(scope="module")
def curve_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    from skillscale.core.security import generate_keypair

    root = tmp_path_factory.mktemp("curve")
    for name in ("proxy", "worker", "mallory"):
        generate_keypair(root, name)
    (root / "clients").mkdir()
    (root / "servers").mkdir()
    (root / "servers" / "worker.key").write_bytes((root / "worker.key").read_bytes())
    proxy = start_proxy(
        curve_secret=root / "proxy.key_secret",
        curve_clients=root / "clients",
        curve_servers=root / "servers",
    )
    try:
        yield root, proxy.ready
    finally:
        proxy.close()


def server_args(ready: dict[str, str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "skillscale", "server", "--skills-dir", SKILLS,
            "--topic", "TOPIC_X", "--workers", "1", "--reload-interval", "0",
            "--proxy-router", ready["router"], "--proxy-xsub", ready["xsub"],
            "--proxy-xpub", ready["xpub"], *extra]  # fmt: skip


def run_server(
    ready: dict[str, str], *extra: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(server_args(ready, *extra), cwd=ROOT, env=role_env(),
                            capture_output=True, text=True, timeout=45, check=False)  # fmt: skip
    return result, time.monotonic() - started


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_server_without_keys_exits_naming_the_cause_at_its_connect_timeout(
    curve_proxy: tuple[Path, dict[str, str]],
) -> None:
    _root, ready = curve_proxy
    result, took = run_server(ready, "--connect-timeout", "20")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = errors(result.stderr)
    for needle in ("requires CURVE keys", "this server has none", ready["router"],
                   "SKILLSCALE_CURVE_SECRET"):  # fmt: skip
        assert needle in line, line
    assert took < 15, f"the cause was waited out ({took:.1f} s), not named"


def test_a_pubsub_server_without_keys_is_told_too(
    curve_proxy: tuple[Path, dict[str, str]],
) -> None:
    _root, ready = curve_proxy
    result, took = run_server(ready, "--mode", "pubsub", "--connect-timeout", "20")
    assert result.returncode == 1, result.stderr
    (line,) = errors(result.stderr)
    assert "requires CURVE keys" in line and ready["xsub"] in line, line
    assert took < 15, f"the cause was waited out ({took:.1f} s), not named"


def test_a_server_with_an_unlisted_key_is_told_which_allow_list(
    curve_proxy: tuple[Path, dict[str, str]],
) -> None:
    root, ready = curve_proxy
    result, _ = run_server(
        ready, "--connect-timeout", "20", "--curve-secret", str(root / "mallory.key_secret"),
        "--curve-server-key", str(root / "proxy.key"),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (line,) = errors(result.stderr)
    assert "refused this server's CURVE key" in line and "--curve-servers" in line, line
    assert "mallory.key" in line, line


def test_a_listed_server_key_still_starts(curve_proxy: tuple[Path, dict[str, str]]) -> None:
    # The probe must not refuse a good key itself (a wrong socket type would).
    root, ready = curve_proxy
    server = RoleProcess(
        *server_args(ready)[3:], "--connect-timeout", "20",
        "--curve-secret", str(root / "worker.key_secret"),
        "--curve-server-key", str(root / "proxy.key"),
    )  # fmt: skip
    try:
        assert server.ready["event"] == "ready" and server.proc.poll() is None
    finally:
        server.close()


def test_without_a_deadline_one_warning_names_the_cause_and_the_wait_goes_on(
    curve_proxy: tuple[Path, dict[str, str]],
) -> None:
    _root, ready = curve_proxy
    proc = subprocess.Popen(server_args(ready), cwd=ROOT, env=role_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    seen = b""
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while b"still waiting" not in seen:
                left = deadline - time.monotonic()
                assert left > 0 and sel.select(left), f"no warning: {seen!r}"
                chunk = os.read(proc.stderr.fileno(), 65536)
                assert chunk, f"the server exited: {seen!r}"
                seen += chunk
        assert proc.poll() is None  # still waiting for the proxy
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=20)[1]
    text = (seen + rest).decode(errors="replace")
    warnings = [line for line in text.splitlines() if "requires CURVE keys" in line]
    assert len(warnings) == 1, text
    assert "WARNING" in warnings[0] and "this server has none" in warnings[0]
    assert proc.returncode == 0, text
