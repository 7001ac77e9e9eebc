"""The request pipeline of a skill server, free of sockets.

``decode`` turns a payload frame into a :class:`Request` or a ready error
reply; ``process`` resolves the intent to a skill, runs it and builds exactly
one reply. Neither raises for anything a caller or a skill does, so the
server loop around them cannot be crashed from outside.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from skillscale.core import stamps
from skillscale.core.errors import ErrorCode, RequestError
from skillscale.core.events import caller_id
from skillscale.core.matching import MatchResult, closest
from skillscale.core.protocol import (
    IntentMode,
    ParsedIntent,
    Reply,
    Request,
    Trace,
    parse_intent,
    salvage_address,
)
from skillscale.core.redact import redact
from skillscale.core.skill_format import Skill
from skillscale.skill_server.executor import (
    ExecutionLimits,
    ExecutionResult,
    ResourceLimits,
    SubprocessExecutor,
)
from skillscale.skill_server.registry import SkillRegistry
from skillscale.skillkit import EX_DATAERR, parse_input_error

log = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 2000
EVENT_STDERR_CHARS = 500
MAX_SHAPE_INPUT = 64 * 1024
"""Inputs longer than this are not parsed again just to describe their shape."""


def input_shape(data: str) -> str:
    """The shape of a skill's input without its values: ``json:object{a,b}``,
    ``json:array[3]``, ``text``, ``empty``, ``large``. Failures of one shape cluster."""
    stripped = data.strip()
    if not stripped:
        return "empty"
    if len(stripped) > MAX_SHAPE_INPUT:
        return "large"
    if stripped[0] in "{[":
        try:
            value = json.loads(stripped)
        except ValueError:
            return "text"
        except RecursionError:
            # Nested past the parser's depth: still the skill's input to judge,
            # only its shape is not described (it was answered `internal`).
            return "json:deep"
        if isinstance(value, dict):
            return "json:object{" + ",".join(sorted(str(k)[:32] for k in value)[:16]) + "}"
        if isinstance(value, list):
            kinds = sorted({type(v).__name__ for v in value[:100]})
            return f"json:array[{','.join(kinds)}]"
    return "text"


@dataclass(frozen=True)
class HandlerConfig:
    """Per-server limits and identity."""

    server_id: str
    topics: frozenset[str]
    default_timeout: float = 30.0
    max_request_bytes: int = 8 * 1024 * 1024
    max_output_bytes: int = 4 * 1024 * 1024
    resources: ResourceLimits = field(default_factory=ResourceLimits)


@dataclass(frozen=True)
class Rejection:
    """A request refused before processing, with the reply to send (if any)."""

    reply_to: str | None
    reply: Reply


class RequestHandler:
    """Decodes, matches, executes and replies."""

    def __init__(
        self,
        registry: SkillRegistry,
        executor: SubprocessExecutor,
        config: HandlerConfig,
        llm_env: dict[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.executor = executor
        self.config = config
        self.llm_env = llm_env or {}
        """LLM settings handed to skills whose ``metadata.llm`` is true."""

    def event_details(self, reply: Reply) -> dict[str, Any]:
        """Fields of a reply's execution-trace event beyond the reply itself.

        The stderr tail goes only with failures, redacted and short: it is for
        clustering a skill's failures, not a log.
        """
        trace = reply.trace
        if trace is None:
            return {}
        details: dict[str, Any] = {"candidate": trace.candidate, "input_shape": trace.input_shape}
        if not reply.ok and trace.stderr:
            details["stderr"] = redact(trace.stderr[-EVENT_STDERR_CHARS:])
        return details

    # -- decoding --------------------------------------------------------

    def decode(self, payload: bytes) -> Request | Rejection:
        """Parse a payload; on failure salvage ``reply_to`` to say why."""
        if len(payload) > self.config.max_request_bytes:
            return self.reject(
                payload,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"request is {len(payload)} bytes; this server accepts at most "
                f"{self.config.max_request_bytes} bytes",
            )
        try:
            request = Request.from_bytes(payload)
        except RequestError as exc:
            return self.reject(payload, ErrorCode.BAD_REQUEST, exc.message)
        if request.reply_to in self.config.topics:
            # Answering onto a request topic would feed our own reply back in.
            return Rejection(
                None,
                self._failure(
                    request.request_id, ErrorCode.BAD_REQUEST, "reply_to names a request topic"
                ),
            )
        return request

    def reject(self, payload: bytes, code: ErrorCode, message: str) -> Rejection:
        reply_to, request_id = salvage_address(payload)
        if reply_to in self.config.topics:
            reply_to = None  # never answer onto a request topic
        return Rejection(reply_to, self._failure(request_id, code, message))

    # -- processing ------------------------------------------------------

    async def process(self, request: Request, received_at: float | None = None) -> Reply:
        """Produce the one reply for ``request``; never raises."""
        started = time.monotonic()
        try:
            reply = await self._process(request)
        except Exception as exc:  # a bug of ours must still produce a reply
            reply = self._internal(request, exc)
        return self._finish(reply, started, received_at)

    def process_now(self, request: Request, received_at: float | None = None) -> Reply | None:
        """The reply :meth:`process` would give, if it needs no wait at all; else None.

        An instruction-only skill named by the intent (explicit or slash), a
        catalogue request, a deadline already passed, a bad intent, a skill
        not served here: answered from memory, in the receiving task, with
        no queue and no worker. Anything that runs a script or asks a
        matcher returns None and goes through :meth:`process`. Never raises.
        """
        started = time.monotonic()
        try:
            reply = self._process_now(request)
        except Exception as exc:  # a bug of ours must still produce a reply
            reply = self._internal(request, exc)
        return None if reply is None else self._finish(reply, started, received_at)

    def _internal(self, request: Request, exc: Exception) -> Reply:
        log.exception("internal error on request %s", request.request_id)
        return self._failure(
            request.request_id, ErrorCode.INTERNAL, f"internal server error: {exc}"
        )

    def _finish(self, reply: Reply, started: float, received_at: float | None) -> Reply:
        now = time.monotonic()
        reply.elapsed_ms = round((now - started) * 1000, 3)
        if reply.trace is None:
            reply.trace = Trace()
        reply.trace.server_id = self.config.server_id
        reply.trace.queue_ms = round((started - received_at) * 1000, 3) if received_at else None
        return reply

    def _begin(self, request: Request) -> ParsedIntent | Reply:
        """The checks every request passes first: its deadline, its intent, the catalogue."""
        rid = request.request_id
        if request.deadline is not None and request.deadline <= time.time():
            return self._failure(
                rid, ErrorCode.DEADLINE_EXCEEDED, "the caller's deadline passed before work began"
            )
        try:
            intent = parse_intent(request.intent)
        except RequestError as exc:
            return self._failure(rid, ErrorCode.BAD_REQUEST, exc.message)
        if intent.mode is IntentMode.CATALOG:
            listing = [
                {k: v for k, v in skill.summary().items() if k not in ("path", "entrypoint")}
                for skill in sorted(self.registry.catalog.skills.values(), key=lambda s: s.name)
            ]
            return Reply(
                request_id=rid,
                status="success",
                content=json.dumps(listing),
                server_id=self.config.server_id,
                trace=Trace(matcher_mode="catalog"),
            )
        return intent

    def _routed(self, request: Request, skill: Skill, trace: Trace) -> Skill:
        """The version this caller gets (a running canary takes its share, the same callers
        each time), recorded in the trace."""
        trace.skill_version = skill.version
        if self.registry.canaries.get(skill.name) is None:
            return skill  # no canary: nothing to route, no caller hash to compute
        skill, candidate = self.registry.route(skill, caller_id(request.reply_to))
        trace.skill_version = skill.version
        trace.candidate = candidate
        return skill

    def _process_now(self, request: Request) -> Reply | None:
        begun = self._begin(request)
        if isinstance(begun, Reply):
            return begun
        if begun.mode is IntentMode.TASK:
            return None  # a matcher decides (an LLM may be asked): a worker's job
        resolved = self._named(request.request_id, begun)
        if isinstance(resolved, Reply):
            return resolved
        skill, trace = resolved
        skill = self._routed(request, skill, trace)
        if skill.entrypoint is not None:
            return None
        trace.input_shape = input_shape(begun.input)
        return self._success(request.request_id, skill, skill.body, trace)

    async def _process(self, request: Request) -> Reply:
        rid = request.request_id
        begun = self._begin(request)
        if isinstance(begun, Reply):
            return begun
        intent = begun
        resolved = await self._resolve(rid, intent)
        if isinstance(resolved, Reply):
            return resolved
        skill, trace = resolved
        if stamps.ON:  # here only: process_now routes too, and an executed skill comes here after
            stamps.stamp("server.matched")
        skill = self._routed(request, skill, trace)
        trace.input_shape = input_shape(intent.input)
        if skill.entrypoint is None:
            # Instruction-only skill: activation discloses its body.
            return self._success(rid, skill, skill.body, trace)
        timeout = skill.timeout or self.config.default_timeout
        if request.deadline is not None:
            timeout = min(timeout, max(0.001, request.deadline - time.time()))
        limits = ExecutionLimits(
            timeout=timeout,
            max_stdout=self.config.max_output_bytes,
            resources=self.config.resources,
        )
        env = {
            "SKILLSCALE_REQUEST_ID": rid,
            "SKILLSCALE_SERVER_ID": self.config.server_id,
            "SKILLSCALE_TASK": intent.task[:4096],
        }
        if self.llm_env and skill.metadata.get("llm", "").lower() in ("true", "yes", "1"):
            env.update(self.llm_env)  # only skills that ask for the LLM get its key
        result = await self.executor.run(
            skill, intent.input.encode("utf-8", errors="surrogatepass"), limits, env=env
        )
        return self._from_result(rid, skill, result, limits, trace)

    def _named(self, rid: str, intent: ParsedIntent) -> tuple[Skill, Trace] | Reply:
        """The skill an explicit or slash intent names, or the reply saying it is not here."""
        assert intent.skill is not None
        skill = self.registry.get(intent.skill)
        if skill is None:
            problem = self.registry.problem_for(intent.skill)
            if problem is not None:
                return self._failure(
                    rid,
                    ErrorCode.SKILL_NOT_FOUND,
                    f"skill {intent.skill!r} is here but invalid: {problem.message} "
                    f"(fix {problem.path}; check it with `skillscale skills validate`)",
                )
            return self._failure(
                rid,
                ErrorCode.SKILL_NOT_FOUND,
                f"no skill named {intent.skill!r} here; available: "
                + (", ".join(self.registry.names) or "none"),
            )
        return skill, Trace(matcher_mode=intent.mode.value, skill_name=skill.name)

    async def _resolve(self, rid: str, intent: ParsedIntent) -> tuple[Skill, Trace] | Reply:
        if intent.mode is not IntentMode.TASK:
            return self._named(rid, intent)
        if not intent.task.strip():
            return self._failure(rid, ErrorCode.BAD_REQUEST, "the intent is empty")
        decision = await self.registry.matcher.decide(intent.task)
        if decision.keyword is not None:
            # Keywords decided, alone or as a fallback: the reply lists the
            # candidates and explains the ranking either way.
            resolved = self._keyword(rid, decision.keyword)
            if decision.mode != "keyword":
                trace = resolved.trace if isinstance(resolved, Reply) else resolved[1]
                assert trace is not None
                trace.matcher_mode = decision.mode
                trace.llm_error = decision.detail or None
            return resolved
        skill = self.registry.get(decision.choice) if decision.choice is not None else None
        if skill is None:
            why = decision.detail or "no skill fits this task"
            if decision.choice is not None:  # a plug-in matcher named a skill we lack
                why = f"the matcher chose {decision.choice!r}, which is not served here"
            return self._failure(
                rid,
                ErrorCode.NO_MATCH,
                f"{why}; available: " + ", ".join(self.registry.names),
                trace=Trace(matcher_mode=decision.mode),
            )
        return skill, Trace(matcher_mode=decision.mode, skill_name=skill.name)

    def _keyword(self, rid: str, result: MatchResult) -> tuple[Skill, Trace] | Reply:
        # Each candidate carries the request words it matched, and ``match`` the
        # rest of the decision (unknown words and their cost, the data's shape).
        candidates: list[dict[str, Any]] = [
            {"skill": c.skill.name, "score": c.score, "terms": list(c.terms)}
            for c in closest(result)
        ]
        explanation = result.explain()
        if result.best is None:
            near = ", ".join(f"{c['skill']} ({c['score']})" for c in candidates) or "none"
            unknown = (
                f"; words no skill here knows: {', '.join(result.unknown[:8])}"
                if result.unknown
                else ""
            )
            return self._failure(
                rid,
                ErrorCode.NO_MATCH,
                f"no skill matched the task well enough (threshold {result.threshold}); "
                f"closest: {near}{unknown}. Name a skill to run it anyway: "
                '{"skill": "<name>", "data": ...} or "/<name> <input>"',
                trace=Trace(matcher_mode="keyword", candidates=candidates, match=explanation),
            )
        best = result.best
        return best.skill, Trace(
            matcher_mode="keyword",
            skill_name=best.skill.name,
            score=best.score,
            candidates=candidates,
            match=explanation,
        )

    def _from_result(
        self,
        rid: str,
        skill: Skill,
        result: ExecutionResult,
        limits: ExecutionLimits,
        trace: Trace,
    ) -> Reply:
        stderr = result.stderr.decode("utf-8", errors="replace")
        trace.exit_code = result.exit_code
        trace.elapsed_ms = result.elapsed_ms
        trace.stderr = stderr[-STDERR_TAIL_CHARS:] or None
        if result.start_error is not None:
            return self._failure(
                rid,
                ErrorCode.EXEC_FAILED,
                f"could not start skill {skill.name!r}: {result.start_error}",
                trace=trace,
                skill=skill,
            )
        # One branch per way a run can fail, each with its own code and sentence: alike
        # in shape only (a table would hide which message goes with which check).
        if result.stdout_overflow:
            return self._failure(
                rid,
                ErrorCode.OUTPUT_TOO_LARGE,
                f"skill {skill.name!r} wrote more than {limits.max_stdout} bytes and was stopped",
                trace=trace,
                skill=skill,
            )
        if result.timed_out:
            return self._failure(
                rid,
                ErrorCode.TIMEOUT,
                f"skill {skill.name!r} ran past its {limits.timeout:g} s limit and was killed "
                "with its process group",
                trace=trace,
                skill=skill,
            )
        if result.exit_code == EX_DATAERR:
            # The skill's way to say "your input is wrong" (skillkit.input_error):
            # the caller's mistake, so bad_request with the skill's own words.
            said = parse_input_error(stderr)
            last = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")
            message, hint = said if said is not None else (last[:300], None)
            reply = self._failure(
                rid,
                ErrorCode.BAD_REQUEST,
                (message or f"skill {skill.name!r} rejected its input")
                + (f" (hint: {hint})" if hint else ""),
                trace=trace,
                skill=skill,
            )
            if hint:
                reply.hint = hint  # type: ignore[attr-defined]  # extra field, ignored by old clients
            return reply
        if result.exit_code != 0:
            how = (
                f"was killed by signal {-result.exit_code}"
                if result.exit_code is not None and result.exit_code < 0
                else f"exited with status {result.exit_code}"
            )
            last = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")
            detail = f": {last[:300]}" if last else ""
            return self._failure(
                rid,
                ErrorCode.EXEC_FAILED,
                f"skill {skill.name!r} {how}{detail}",
                trace=trace,
                skill=skill,
            )
        try:
            content = result.stdout.decode("utf-8")
        except UnicodeDecodeError:
            content = result.stdout.decode("utf-8", errors="replace")
            trace.invalid_utf8 = True
        return self._success(rid, skill, content, trace)

    def _success(self, rid: str, skill: Skill, content: str, trace: Trace) -> Reply:
        return Reply(
            request_id=rid,
            status="success",
            content=content,
            skill=skill.name,
            skill_version=skill.version,
            server_id=self.config.server_id,
            trace=trace,
        )

    def _failure(
        self,
        rid: str,
        code: ErrorCode,
        message: str,
        *,
        trace: Trace | None = None,
        skill: Skill | None = None,
    ) -> Reply:
        return Reply.failure(
            rid,
            code,
            message,
            trace=trace,
            server_id=self.config.server_id,
            skill=skill.name if skill else None,
            skill_version=skill.version if skill else None,
        )
