"""The long-lived distiller role (``skillscale distill`` without ``--once``).

One object owning one subscriber and its tasks:

* the *receiver* takes ``_SKILLSCALE_TRAJECTORY`` events off the bus and
  appends them, redacted and bounded, to a spool under the skills folder
  (``.skillscale/bus/trajectories.jsonl``, read by the ``bus`` adapter), and
  forwards every ``_SKILLSCALE_TRACE`` and ``_SKILLSCALE_FEEDBACK`` event to
  the evolution component (``distiller/evolution.py``) when this build has it;
* the *passer* runs one incremental pass over the agent stores and the spool
  every ``interval`` seconds, or sooner once trajectories arrived, in a worker
  thread (a pass is CPU work), then lets evolution decide (``tick``).

Stop: the receiver stops taking events, a pass in progress may finish within
the grace period, then everything is cancelled and the socket closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from skillscale.core.errors import SkillScaleError
from skillscale.core.events import TRACE_TOPIC, TRAJECTORY_TOPIC, AgentTrajectory
from skillscale.core.health import HealthServer, RoleHealth, url_for
from skillscale.core.llm import LLMClient, LLMSettings
from skillscale.core.redact import Redactor
from skillscale.core.runtime import AsyncRole, safe, within
from skillscale.core.security import CurveKeys
from skillscale.core.transport import Transport, ZmqTransport
from skillscale.distiller.pipeline import STATE_DIR, Options, distill_once

log = logging.getLogger("skillscale.distiller")

FEEDBACK_TOPIC = "_SKILLSCALE_FEEDBACK"
MAX_EVENT_BYTES = 1024 * 1024
MAX_SPOOL_BYTES = 256 * 1024 * 1024
RECEIVE_HWM = 10_000


@dataclass
class RoleConfig:
    """What the role watches and where it writes. Durations in seconds."""

    options: Options
    proxy_xpub: str
    proxy_xsub: str | None = None
    """Where evolution publishes skills-changed events."""
    interval: float = 60.0
    min_interval: float = 2.0
    """Trajectories arriving wake a pass, but not more often than this."""
    grace: float = 10.0
    curve: CurveKeys | None = None
    transport: Transport | None = None
    """An injected transport (the in-memory bus in tests); default ZeroMQ."""
    passes: list[dict[str, Any]] = field(default_factory=list)
    health_port: int | None = None
    """HTTP port for ``/healthz`` and ``/readyz`` (0 = any free); None: no endpoint."""
    health_host: str = "127.0.0.1"
    evolution: Any = None
    """An :class:`~skillscale.distiller.evolution.EvolutionConfig` (None: its defaults)."""
    judge: LLMSettings | None = None
    """Score replies with this LLM (:class:`~skillscale.distiller.evolution.LLMJudge`)."""
    evolution_interval: float = 2.0
    """Seconds between canary decisions, independent of the (slower) passes."""


class Distiller(AsyncRole):
    """``async with Distiller(cfg) as role: await serve_until(stop, role)``."""

    def __init__(self, config: RoleConfig) -> None:
        self.config = config
        self.skills_dir = config.options.skills_dir
        self.spool = self.skills_dir / STATE_DIR / "bus" / "trajectories.jsonl"
        self.redactor = Redactor(config.options.redact_patterns)
        self._transport: Transport | None = None
        self._own_transport = False
        self._sub: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._evolution: Any = None
        self._llms: list[LLMClient] = []
        self.received = {"trajectories": 0, "traces": 0, "feedback": 0, "rejected": 0}
        self.pass_count = 0
        self.pass_done = asyncio.Condition()
        self.health = RoleHealth(self._readiness)
        self._health_http: HealthServer | None = None
        self.health_url: str | None = None
        self._serving = False

    def ready_info(self) -> dict[str, Any]:
        """The JSON ready line."""
        return {
            "event": "ready",
            "role": "distiller",
            "skills_dir": str(self.skills_dir),
            "sources": [[k, str(p)] for k, p in self.config.options.sources],
            "evolution": self._evolution is not None,
            "judge": self.config.judge is not None,
            "health": self.health_url,
        }

    def _readiness(self) -> str | None:
        """Serving: subscribed to the bus and both loops running (read from the health thread)."""
        if self._stop.is_set():
            return "stopping"
        if not self._serving:
            return "starting"
        return None

    async def _loop_ticks(self) -> None:
        """Liveness: the event loop still runs (a wedged loop stops these ticks)."""
        while True:
            self.health.tick()
            await asyncio.sleep(1.0)  # the liveness clock itself, not a wait for work

    def on_crash(self) -> None:
        """A task died: liveness fails, so an orchestrator restarts the role."""
        self.health.set_crashed(self.crash_reason or "a task died")

    async def start(self) -> None:
        """Subscribe, start evolution (if present), start the receiver and passer."""
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        if self.config.health_port is not None:
            # Before anything slow: liveness answers while the role starts.
            self._health_http = HealthServer(self.health)
            port = self._health_http.serve(self.config.health_host, self.config.health_port)
            self.health_url = url_for(self.config.health_host, port)
        self._transport = self.config.transport
        if self._transport is None:
            self._transport = ZmqTransport()
            self._own_transport = True
        topics = [t.encode() for t in (TRAJECTORY_TOPIC, TRACE_TOPIC, FEEDBACK_TOPIC)]
        self._sub = self._transport.subscriber(
            self.config.proxy_xpub, topics, hwm=RECEIVE_HWM,
            max_message_bytes=MAX_EVENT_BYTES * 2, curve=self.config.curve,
        )  # fmt: skip
        self._evolution = await self._start_evolution()
        self._tasks = [
            self.supervise(asyncio.create_task(self._receive(), name="distill-receive")),
            self.supervise(asyncio.create_task(self._passes(), name="distill-passes")),
        ]
        if self._health_http is not None:
            self._tasks.append(
                self.supervise(asyncio.create_task(self._loop_ticks(), name="health-ticks"))
            )
        if self._evolution is not None and self.config.evolution_interval > 0:
            self._tasks.append(
                self.supervise(asyncio.create_task(self._ticks(), name="evolution-ticks"))
            )
        self._serving = True

    async def _start_evolution(self) -> Any:
        try:
            module = importlib.import_module("skillscale.distiller.evolution")
        except ImportError:
            log.info("distill: no evolution component in this build; traces are not used")
            return None
        cfg = self.config
        # Revisions after failures use the distiller's LLM (--llm); the judge its own.
        llm = LLMClient(cfg.options.llm) if cfg.options.llm is not None else None
        judge_llm = LLMClient(cfg.judge) if cfg.judge is not None else None
        self._llms = [c for c in (llm, judge_llm) if c is not None]
        judge = module.LLMJudge(judge_llm) if judge_llm is not None else None
        evolution = module.Evolution(
            skills_dir=self.skills_dir, config=cfg.evolution, llm=llm, judge=judge,
            transport=cfg.transport, proxy_xsub=cfg.proxy_xsub, curve=cfg.curve,
        )  # fmt: skip
        await evolution.__aenter__()
        return evolution

    async def _ticks(self) -> None:
        """Canary decisions every ``evolution_interval``, whatever the passes are doing."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._stop.wait(), self.config.evolution_interval)
            if self._stop.is_set():
                break
            await self._tick()

    async def _tick(self) -> None:
        try:
            await within(self._evolution.tick(), self.config.grace)
        except asyncio.TimeoutError:
            # An LLM revision can outlast the grace; the next tick goes on from the files.
            log.warning("distill: an evolution step took over %g s and was cut short",
                        self.config.grace)  # fmt: skip

    async def stop(self) -> None:
        """Stop taking events, let a pass finish within the grace, release everything."""
        self._stop.set()
        self._wake.set()
        passer = self._tasks[1] if len(self._tasks) > 1 else None
        receiver = self._tasks[0] if self._tasks else None
        if receiver is not None:
            receiver.cancel()
        if passer is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await within(asyncio.shield(passer), self.config.grace)
            passer.cancel()
        for task in self._tasks[2:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._evolution is not None:
            await self._evolution.__aexit__(None, None, None)
        for client in self._llms:
            await client.close()
        if self._sub is not None:
            self._sub.close(0)
        if self._own_transport and self._transport is not None:
            await asyncio.to_thread(self._transport.close)
        if self._health_http is not None:
            self._health_http.close()
            self._health_http = None

    async def _receive(self) -> None:
        while not self._stop.is_set():
            await self._sub.wait_readable()
            for frames in self._sub.drain(256):
                await self._handle(frames)

    async def _handle(self, frames: Any) -> None:
        """One bus message ``[topic, json]``: parsed at this boundary, bounded."""
        try:
            topic = bytes(frames[0]).decode()
            payload = bytes(frames[1]) if len(frames) > 1 else b""
            if len(payload) > MAX_EVENT_BYTES:
                raise ValueError(f"{len(payload)} bytes (limit {MAX_EVENT_BYTES})")
            event = json.loads(payload)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError, IndexError, RecursionError) as exc:
            # RecursionError: nested too deeply for json.loads; one peer's
            # bad message must not end the receiver.
            self.received["rejected"] += 1
            log.warning("distill: a bus event was rejected: %s", safe(exc))
            return
        if topic == TRAJECTORY_TOPIC:
            try:
                traj = AgentTrajectory.model_validate(event)
                # Valid yet nested too deeply to dump (ValueError) or redact
                # (RecursionError) is as rejected as invalid.
                line = json.dumps(self.redactor.obj(traj.model_dump(mode="json"))) + "\n"
            except (ValueError, RecursionError) as exc:
                self.received["rejected"] += 1
                log.warning("distill: a trajectory event was rejected: %s", safe(exc))
                return
            if self.spool.exists() and self.spool.stat().st_size + len(line) > MAX_SPOOL_BYTES:
                self.received["rejected"] += 1
                log.warning(
                    "distill: the bus spool %s is full; a trajectory was dropped", self.spool
                )
                return
            with self.spool.open("a", encoding="utf-8") as fh:
                fh.write(line)
            self.received["trajectories"] += 1
            self._wake.set()
            return
        self.received["traces" if topic == TRACE_TOPIC else "feedback"] += 1
        if self._evolution is not None:
            await within(self._evolution.observe(event), self.config.grace)

    async def _passes(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            # The spool exists once a trajectory arrived; before that it is
            # not a missing source worth a warning on every pass.
            spool = [("bus", self.spool)] if self.spool.exists() else []
            opts = replace(self.config.options, sources=[*self.config.options.sources, *spool])
            if opts.sources:
                try:
                    outcome = await asyncio.to_thread(asyncio.run, distill_once(opts))
                except (SkillScaleError, OSError) as exc:
                    # A full disk or a busy state loses this pass, not the role.
                    log.error("distill pass failed: %s; trying again next pass", exc)
                except Exception:
                    # Sources are untrusted: input no parser foresaw must cost this
                    # pass, not the worker (the issue: "nothing crashes the worker").
                    log.exception("distill pass failed unexpectedly; trying again next pass")
                else:
                    result = outcome.to_json(self.skills_dir)
                    self.config.passes.append(result)
                    del self.config.passes[:-10]
                    changed = {k: len(v) for k, v in result["skills"].items() if v}
                    log.info(
                        "distill pass: %d new atoms; skills %s", result["atoms"]["new"], changed
                    )
            if self._evolution is not None:
                await self._tick()
            async with self.pass_done:
                self.pass_count += 1
                self.pass_done.notify_all()
            if self._stop.is_set():
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._stop.wait(), self.config.min_interval)
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._wake.wait(), self.config.interval)


def spool_path(skills_dir: Path) -> Path:
    """Where the role keeps the trajectories it received from the bus."""
    return skills_dir / STATE_DIR / "bus" / "trajectories.jsonl"
