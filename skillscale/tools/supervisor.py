"""``skillscale up``: a proxy plus one skill server per category, supervised.

Each role runs as its own process (so a laptop's cores are all used, and a
role is exactly what it would be in a container). Children announce that
they are ready with one JSON line on stdout; the supervisor waits for it,
restarts a child that dies (with backoff), and on stop sends SIGTERM to the
servers first (they drain), then the proxy, killing whatever outlives the
grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skillscale.core.discovery import SkillDiscovery
from skillscale.core.errors import ConfigError
from skillscale.core.protocol import topic_for_category
from skillscale.core.runtime import AsyncRole, within
from skillscale.core.security import FabricKeys

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
MAX_RESTARTS = 5
HELD_STDERR_LINES = 50


@dataclass
class FabricConfig:
    """What ``skillscale up`` starts. Durations in seconds."""

    skills_dirs: list[Path]
    host: str = "127.0.0.1"
    xsub_port: int = 5444
    xpub_port: int = 5555
    router_port: int = 5566
    metrics_port: int | None = 9100
    workers: int | None = None
    timeout: float | None = None
    grace: float = 10.0
    extra_server_args: list[str] = field(default_factory=list)
    curve_dir: Path | None = None
    """CURVE on: certificates kept (made if missing) in this folder."""
    gateway_port: int | None = None
    """The HTTP gateway and console on this port (0 = any free); None: no gateway."""
    distill_args: list[str] | None = None
    """Start the distiller role with these extra arguments (None: do not)."""


@dataclass
class Child:
    """One supervised role process."""

    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    drain: asyncio.Task[None] | None = None
    relay: asyncio.Task[None] | None = None
    held: deque[bytes] = field(default_factory=lambda: deque(maxlen=HELD_STDERR_LINES))
    """Stderr lines of a child not yet ready: shown once it is, or its last
    words name why it failed (a bounded tail)."""


class Fabric(AsyncRole):
    """The supervisor role; ``async with Fabric(cfg) as fabric: await fabric.wait(stop)``."""

    def __init__(self, config: FabricConfig) -> None:
        self.config = config
        self.proxy: Child | None = None
        self.servers: list[Child] = []
        self.gateway: Child | None = None
        self.distiller: Child | None = None
        self.keys: FabricKeys | None = None
        self._stopping = False

    def _plan_servers(self, proxy_ready: dict[str, Any]) -> list[Child]:
        catalog = SkillDiscovery(self.config.skills_dirs).scan()
        for problem in catalog.problems:
            log.warning("skill problem at %s: %s", problem.path, problem.message)
        categories = catalog.categories()
        if not categories:
            raise ConfigError(
                "no valid skills found under " + ", ".join(map(str, self.config.skills_dirs))
            )
        children = []
        for category, folder in categories.items():
            argv = [
                sys.executable, "-m", "skillscale", "server",
                "--topic", topic_for_category(category),
                "--skills-dir", str(folder),
                "--proxy-xsub", proxy_ready["xsub"],
                "--proxy-xpub", proxy_ready["xpub"],
                "--proxy-router", proxy_ready["router"],
                "--grace", str(self.config.grace),
            ]  # fmt: skip
            if self.config.workers is not None:
                argv += ["--workers", str(self.config.workers)]
            if self.config.timeout is not None:
                argv += ["--timeout", str(self.config.timeout)]
            if self.keys is not None:
                server = self.keys.server
                argv += ["--curve-secret", str(server.secret_file),
                         "--curve-server-key", str(server.server_key_file)]  # fmt: skip
            children.append(Child(f"server:{category}", argv + self.config.extra_server_args))
        return children

    async def start(self) -> None:
        """Start the proxy, then every server, each proven ready."""
        cfg = self.config
        proxy_argv = [
            sys.executable, "-m", "skillscale", "proxy",
            "--xsub-bind", f"tcp://{cfg.host}:{cfg.xsub_port}",
            "--xpub-bind", f"tcp://{cfg.host}:{cfg.xpub_port}",
            "--router-bind", f"tcp://{cfg.host}:{cfg.router_port}",
            "--metrics-host", cfg.host,
            "--metrics-port", str(-1 if cfg.metrics_port is None else cfg.metrics_port),
        ]  # fmt: skip
        if cfg.curve_dir is not None:
            self.keys = FabricKeys(cfg.curve_dir).ensure()
            curve = self.keys.proxy
            proxy_argv += ["--curve-secret", str(curve.secret_file),
                           "--curve-clients", str(curve.clients_dir),
                           "--curve-servers", str(curve.servers_dir)]  # fmt: skip
        self.proxy = Child("proxy", proxy_argv)
        try:
            await self._spawn(self.proxy)
            # A restarted proxy must come back on the same ports.
            self.proxy.argv[self.proxy.argv.index("--xsub-bind") + 1] = self.proxy.ready["xsub"]
            self.proxy.argv[self.proxy.argv.index("--xpub-bind") + 1] = self.proxy.ready["xpub"]
            self.proxy.argv[self.proxy.argv.index("--router-bind") + 1] = self.proxy.ready["router"]
            self.servers = self._plan_servers(self.proxy.ready)
            if cfg.distill_args is not None:
                self.distiller = self._plan_distiller(self.proxy.ready, cfg.distill_args)
            extra = [self.distiller] if self.distiller else []
            await asyncio.gather(*(self._spawn(child) for child in [*self.servers, *extra]))
            if cfg.gateway_port is not None:
                self.gateway = self._plan_gateway(self.proxy.ready, cfg.gateway_port)
                await self._spawn(self.gateway)
                # A restarted gateway comes back on the same port.
                argv = self.gateway.argv
                argv[argv.index("--port") + 1] = str(self.gateway.ready["port"])
        except BaseException:
            await self.stop()
            raise

    def _plan_gateway(self, proxy_ready: dict[str, Any], port: int) -> Child:
        argv = [
            sys.executable, "-m", "skillscale", "gateway", "--json",
            "--host", self.config.host, "--port", str(port),
            "--proxy-xsub", proxy_ready["xsub"], "--proxy-xpub", proxy_ready["xpub"],
            "--metrics-url", proxy_ready.get("metrics") or "off",
        ]  # fmt: skip
        for folder in self.config.skills_dirs:
            argv += ["--skills-dir", str(folder)]
        return Child("gateway", argv + self._client_curve_args())

    def _plan_distiller(self, proxy_ready: dict[str, Any], extra: list[str]) -> Child:
        argv = [sys.executable, "-m", "skillscale", "distill", "--proxy-xsub",
                proxy_ready["xsub"], "--proxy-xpub", proxy_ready["xpub"]]  # fmt: skip
        return Child("distiller", argv + self._client_curve_args() + extra)

    def _client_curve_args(self) -> list[str]:
        """The flags that give a client-side child (gateway, distiller) the client keys."""
        if self.keys is None:
            return []
        client = self.keys.client
        return ["--curve-secret", str(client.secret_file),
                "--curve-server-key", str(client.server_key_file)]  # fmt: skip

    async def _spawn(self, child: Child) -> None:
        # A session of its own: a terminal's Ctrl-C reaches only the
        # supervisor, which then stops servers before the proxy, in order.
        child.ready = {}
        child.held.clear()
        await _cancel(child.relay)
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        assert child.proc.stdout is not None and child.proc.stderr is not None
        stdout = child.proc.stdout
        child.relay = relay = asyncio.create_task(
            _relay_stderr(child, child.proc.stderr), name=f"stderr-{child.name}"
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = await within(stdout.readline(), timeout=max(remaining, 0.01))
            except asyncio.TimeoutError:
                # Not ready in time: it must not live on beside its replacement.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                await child.proc.wait()
                raise ConfigError(
                    f"{child.name} did not become ready in {READY_TIMEOUT:g} s"
                ) from None
            if not line:
                code = await child.proc.wait()
                # Its stderr may still hold the reason: read it to the end
                # (briefly: a grandchild could keep the pipe open).
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(asyncio.shield(relay), 2.0)
                reason = _last_words(child.held)
                raise ConfigError(
                    f"{child.name} exited with status {code} before it was ready"
                    + (f": {reason}" if reason else "")
                )
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "ready":
                # No await between the flush and `ready`: the relay then
                # forwards every later line itself, in order.
                _write_stderr(b"".join(child.held))
                child.held.clear()
                child.ready = event
                break
        # Keep reading so a chatty child can never block on a full pipe.
        child.drain = asyncio.create_task(_discard(stdout), name=f"drain-{child.name}")

    def endpoints(self) -> dict[str, Any]:
        """What the fabric exposes, for printing and for tests."""
        assert self.proxy is not None
        return {
            "event": "ready",
            "role": "fabric",
            "xsub": self.proxy.ready.get("xsub"),
            "xpub": self.proxy.ready.get("xpub"),
            "router": self.proxy.ready.get("router"),
            "metrics": self.proxy.ready.get("metrics"),
            "proxy_pid": self.proxy.proc.pid if self.proxy.proc else None,
            "curve": None
            if self.keys is None
            else {
                "SKILLSCALE_CURVE_SECRET": str(self.keys.client.secret_file),
                "SKILLSCALE_CURVE_SERVER_KEY": str(self.keys.client.server_key_file),
            },
            "gateway": self.gateway.ready.get("url") if self.gateway else None,
            "distiller": None
            if self.distiller is None or self.distiller.proc is None
            else {
                "pid": self.distiller.proc.pid,
                "skills_dir": self.distiller.ready.get("skills_dir"),
            },
            "servers": [
                {
                    "topics": s.ready.get("topics"),
                    "skills": s.ready.get("skills"),
                    "pid": s.proc.pid,
                }
                for s in self.servers
                if s.proc is not None
            ],
        }

    async def wait(self, stop: asyncio.Event) -> None:
        """Supervise until ``stop`` is set: restart children that die."""
        while not stop.is_set():
            children = [
                c for c in [self.proxy, *self.servers, self.distiller, self.gateway] if c and c.proc
            ]
            waits = {asyncio.ensure_future(c.proc.wait()): c for c in children if c.proc}
            stopper = asyncio.ensure_future(stop.wait())
            try:
                done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in [stopper, *waits]:
                    fut.cancel()
                await asyncio.gather(stopper, *waits, return_exceptions=True)
            for fut in done:
                child = waits.get(fut)
                if child is None or stop.is_set():
                    continue
                await self._restart(child, stop)

    async def _restart(self, child: Child, stop: asyncio.Event) -> None:
        """Restart a dead child with backoff; a stop signal ends the wait at once,
        and a restart that fails before ready counts as one more death."""
        assert child.proc is not None
        reason = f"exited with status {child.proc.returncode}"
        while not stop.is_set():
            if child.restarts >= MAX_RESTARTS:
                raise ConfigError(f"{child.name} died {child.restarts + 1} times ({reason})")
            child.restarts += 1
            delay = min(0.5 * 2**child.restarts, 8.0)
            log.error("%s %s; restart %d in %.1f s", child.name, reason, child.restarts, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await within(stop.wait(), delay)  # the backoff, cut short by stop
            if stop.is_set():
                return
            try:
                await self._spawn(child)
                return
            except ConfigError as exc:
                reason = str(exc.message)

    def kill_all(self) -> None:
        """SIGKILL every child's whole session at once (a forced stop)."""
        for child in [self.gateway, *self.servers, self.distiller, self.proxy]:
            if child is not None and child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM servers, then the proxy; SIGKILL what outlives the grace."""
        if self._stopping:
            return
        self._stopping = True
        if self.gateway is not None and self.gateway.proc is not None:
            await self._terminate([self.gateway], 5.0)
        workers = [*self.servers, *([self.distiller] if self.distiller else [])]
        await self._terminate([c for c in workers if c.proc], self.config.grace + 2)
        if self.proxy is not None and self.proxy.proc is not None:
            await self._terminate([self.proxy], 5.0)
        for child in [self.gateway, *self.servers, self.distiller, self.proxy]:
            if child is not None:
                await _cancel(child.drain)
                await _cancel(child.relay)

    @staticmethod
    async def _terminate(children: list[Child], grace: float) -> None:
        procs = [c.proc for c in children if c.proc is not None and c.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if not procs:
            return
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in procs], timeout=grace
        )
        for proc in procs:
            if proc.returncode is None:
                log.warning("pid %d ignored SIGTERM for %.0f s; killing", proc.pid, grace)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for fut in pending:
            await fut


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _write_stderr(data: bytes) -> None:
    if data:
        sys.stderr.flush()
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()


async def _relay_stderr(child: Child, stream: asyncio.StreamReader) -> None:
    """Pass a child's stderr on once it is ready; hold a bounded tail before."""
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line over the reader's limit: take it in pieces
            line = await stream.read(65536)
        if not line:
            return
        if child.ready:
            _write_stderr(line)
        else:
            child.held.append(line)


def _last_words(lines: deque[bytes]) -> str:
    """The line that says why a child failed: its ``error:`` line, else its last line."""
    text = [raw.decode(errors="replace").strip() for raw in lines]
    text = [line for line in text if line]
    for line in reversed(text):
        if line.startswith("error:"):
            return line[len("error:") :].strip()[:500]
    return text[-1][:500] if text else ""
