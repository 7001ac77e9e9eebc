"""Starting real role processes for integration tests, and a bare reference client."""

from __future__ import annotations

import ctypes
import json
import os
import random
import secrets
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from skillscale.core.protocol import Reply
from skillscale.core.transport import BusSocket

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SKILLS = Path(__file__).resolve().parent / "fixtures" / "skills"
BUNDLED_SKILLS = ROOT / "skills"


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead: only its parent can reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def open_fd_count() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def wait_pid_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait for a process to exit, on the kernel's event (a pidfd), not by polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while pid_alive(pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # A pidfd is readable at exit; a zombie that is exiting shows as
            # dead on the next check.
            poller.poll(min(remaining, 0.5) * 1000)
        return True
    finally:
        os.close(pidfd)


def role_env(**extra: str) -> dict[str, str]:
    # No LLM unless a test configures one: a developer's own key or config
    # file must not change what the suite exercises.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKILLSCALE_LLM_", "OPENAI_"))}
    env["SKILLSCALE_CONFIG"] = "/nonexistent/skillscale-config.yaml"
    env.setdefault("SKILLSCALE_LOG_LEVEL", "WARNING")
    # `skillscale up` starts no HTTP gateway (port 8401) in tests unless one asks.
    env.setdefault("SKILLSCALE_NO_GATEWAY", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIVE: set[RoleProcess] = set()


def _die_with_parent() -> None:
    # If pytest itself is killed (e.g. by a timeout), no role outlives it.
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def dump_stacks(*roles: RoleProcess) -> None:
    """On a test's failure: every live role prints its threads' stacks to stderr."""
    for role in roles:
        role.dump_stacks()
    # The roles write the dumps themselves; there is no event to wait on here.
    time.sleep(0.5)


def close_all_roles() -> None:
    """Stop every role process still running (a test's safety net)."""
    for role in list(_LIVE):
        role.close()


class RoleProcess:
    """A ``python -m skillscale ...`` child that reports readiness as a JSON line."""

    def __init__(
        self,
        *args: str,
        ready_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        stderr: Any = None,
    ):
        self.args = [sys.executable, "-m", "skillscale", *args]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
            env=env or role_env(),
            cwd=ROOT,
            preexec_fn=_die_with_parent,
        )
        _LIVE.add(self)
        self.ready: dict[str, Any] = self._await_ready(ready_timeout)

    def _await_ready(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buffer = b""
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise TimeoutError(f"{self.args} not ready within {timeout} s")
                if not sel.select(remaining):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    code = self.proc.wait()
                    _LIVE.discard(self)
                    raise RuntimeError(f"{self.args} exited with {code} before ready")
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and event.get("event") == "ready":
                        return event
        finally:
            sel.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL if it will not stop."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def dump_stacks(self) -> None:
        """Have a live role print its threads' stacks to stderr (a failing test's clue)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # skillscale.core.runtime.run registers it
            self.proc.send_signal(signal.SIGCONT)  # a stopped one prints once it runs

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        _LIVE.discard(self)
        try:
            self.stop()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()


def free_port() -> int:
    """A port free right now on loopback (for a proxy that must restart on it).

    Below the kernel's ephemeral range: a port the kernel hands out (any
    process's bind to port 0, any outgoing connection's local end) cannot
    take it between this check and the role's bind, as one did to a
    failover peer port ("exited with 1 before ready").
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = _PORTS.randrange(max(1024, low - 20_000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def start_proxy(ports: tuple[int, int, int] | None = None, **options: Any) -> RoleProcess:
    xsub, xpub, router = ports or (0, 0, 0)
    args = [
        "proxy",
        "--xsub-bind", f"tcp://127.0.0.1:{xsub}",
        "--xpub-bind", f"tcp://127.0.0.1:{xpub}",
        "--router-bind", f"tcp://127.0.0.1:{router}",
        "--metrics-host", "127.0.0.1",
        "--metrics-port", "0",
    ]  # fmt: skip
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return RoleProcess(*args)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_server(proxy: RoleProcess, skills_dir: Path, *topics: str, **options: Any) -> RoleProcess:
    args = [
        "server",
        "--skills-dir", str(skills_dir),
        "--proxy-xsub", proxy.ready["xsub"],
        "--proxy-xpub", proxy.ready["xpub"],
        "--proxy-router", proxy.ready["router"],
    ]  # fmt: skip
    for topic in topics:
        args += ["--topic", topic]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return RoleProcess(*args)


class ReferenceClient:
    """Speaks only the reference protocol: ``[topic, json]`` out, ``AGENT_REPLY_<8 hex>`` in.

    Tracks its sockets and context and closes them with linger 0.
    """

    def __init__(self, xsub: str, xpub: str) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.sub = self.ctx.socket(zmq.SUB)
        for sock in (self.pub, self.sub):
            sock.setsockopt(zmq.LINGER, 0)
        self.reply_topic = "AGENT_REPLY_" + secrets.token_hex(4)
        self.sub.setsockopt_string(zmq.SUBSCRIBE, self.reply_topic)
        self.pub.connect(xsub)
        self.sub.connect(xpub)
        self._await_path()

    def _await_path(self, timeout: float = 10.0) -> None:
        # Plain pub/sub messages to our own reply topic until one comes back:
        # the event that the path is live (the reference slept 0.5 s instead).
        deadline = time.monotonic() + timeout
        probe = (self.reply_topic + "_probe").encode()
        while time.monotonic() < deadline:
            self.pub.send_multipart([probe, b"{}"])
            if self.sub.poll(50):
                topic, _ = self.sub.recv_multipart()
                if topic == probe:
                    while self.sub.poll(0):
                        self.sub.recv_multipart()
                    return
        raise TimeoutError("reference client: no round trip through the proxy")

    def send(self, topic: str, intent: str, *, request_id: str | None = None) -> str:
        rid = request_id or uuid.uuid4().hex[:8]
        payload = {
            "request_id": rid,
            "reply_to": self.reply_topic,
            "intent": intent,
            "timestamp": time.time(),
        }
        self.pub.send_multipart([topic.encode(), json.dumps(payload).encode()])
        return rid

    def send_raw(self, frames: list[bytes]) -> None:
        self.pub.send_multipart(frames)

    def recv(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sub.poll(int(remaining * 1000)):
                raise TimeoutError("reference client: no reply")
            topic, payload = self.sub.recv_multipart()
            if topic.decode() == self.reply_topic:
                reply: dict[str, Any] = json.loads(payload)
                return reply

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()


class EventSubscriber:
    """Subscribes to event topics through the proxy, proven live before use."""

    def __init__(self, xsub: str, xpub: str, *topics: str) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.pub = self.ctx.socket(zmq.PUB)
        for sock in (self.sub, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
        probe = ("_SKILLSCALE_TEST_PROBE_" + secrets.token_hex(4)).encode()
        for topic in [*(t.encode() for t in topics), probe]:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(xpub)
        self.pub.connect(xsub)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.pub.send_multipart([probe, b"{}"])
            if self.sub.poll(50) and self.sub.recv_multipart()[0] == probe:
                break
        else:
            raise TimeoutError("event subscriber: no round trip")
        self.probe = probe

    def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not self.sub.poll(int(remaining * 1000)):
                break
            topic, payload = self.sub.recv_multipart()
            if topic != self.probe:
                return topic.decode(), json.loads(payload)
        raise TimeoutError("no event")

    def close(self) -> None:
        self.sub.close(0)
        self.pub.close(0)
        self.ctx.term()


async def collect_replies(sub: BusSocket, got: dict[str, Reply], count: int,
                          timeout: float) -> None:  # fmt: skip
    """Read replies from ``sub`` into ``got`` (by request id) until it holds
    ``count`` or ``timeout`` s pass; a second reply to one request fails the test."""
    deadline = time.monotonic() + timeout
    while len(got) < count and (left := deadline - time.monotonic()) > 0:
        if await sub.wait_readable(left):
            for frames in sub.drain(1000):
                reply = Reply.from_bytes(bytes(frames[1]))
                assert reply.request_id not in got, "two replies for one request"
                got[reply.request_id] = reply
