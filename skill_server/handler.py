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
    NOT_PARSED,
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
KEPT_INTENTS = 64
"""Parsed intents :meth:`RequestHandler.process_now` keeps for the worker that runs them."""
KEPT_INTENT_CHARS = 8 * 1024 * 1024
"""Characters of intent text those kept intents may hold together."""


def input_shape(data: str, value: object = NOT_PARSED) -> str:
    """The shape of a skill's input without its values: ``json:object{a,b}``,
    ``json:array[3]``, ``text``, ``empty``, ``large``. Failures of one shape cluster.

    ``value``: ``data`` as the JSON value it encodes, when the caller has it
    (:attr:`ParsedIntent.value`): the intent's ``data`` object is then not
    parsed again from its own dump.
    """
    stripped = data.strip()
    if not stripped:
        return "empty"
    if len(stripped) > MAX_SHAPE_INPUT:
        return "large"
    if value is NOT_PARSED:
        if stripped[0] not in "{[":
            return "text"
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
        self._kept = _KeptIntents()

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
            reply = self._process_now(request, _queue_ms(started, received_at))
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
        trace = reply.trace
        if trace is None:
            reply.trace = trace = Trace()
        # Set only what is not set yet: a model's setattr costs about what a
        # field given to its constructor does, and _trace gives most of them.
        if trace.server_id != self.config.server_id:
            trace.server_id = self.config.server_id
        queue_ms = _queue_ms(started, received_at)
        if trace.queue_ms != queue_ms:
            trace.queue_ms = queue_ms
        return reply

    def _begin(self, request: Request) -> ParsedIntent | Reply:
        """The checks every request passes first: its deadline, its intent, the catalogue."""
        rid = request.request_id
        if request.deadline is not None and request.deadline <= time.time():
            return self._failure(
                rid, ErrorCode.DEADLINE_EXCEEDED, "the caller's deadline passed before work began"
            )
        intent = self._kept.take(request)  # parsed already by process_now
        if intent is None:
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
        if trace.skill_version != skill.version:  # _named sets it already
            trace.skill_version = skill.version
        if self.registry.canaries.get(skill.name) is None:
            return skill  # no canary: nothing to route, no caller hash to compute
        skill, candidate = self.registry.route(skill, caller_id(request.reply_to))
        trace.skill_version = skill.version
        trace.candidate = candidate
        return skill

    def _process_now(self, request: Request, queue_ms: float | None) -> Reply | None:
        begun = self._begin(request)
        if isinstance(begun, Reply):
            return begun
        if begun.mode is IntentMode.TASK:
            return None  # a matcher decides (an LLM may be asked): a worker's job
        assert begun.skill is not None
        skill = self.registry.get(begun.skill)
        if skill is not None and self.registry.canaries.get(skill.name) is None:
            # No canary to route: the skill is the one that runs, its trace
            # built whole (the shape only once it is known nothing runs).
            if skill.entrypoint is not None:
                self._kept.keep(request, begun)  # process() runs it, without parsing it again
                return None
            fields = self._trace_fields(begun, skill)
            fields["input_shape"] = input_shape(begun.input, begun.value)
            fields["queue_ms"] = queue_ms
            return self._success(request.request_id, skill, skill.body, _new_trace(fields))
        resolved = self._named(request.request_id, begun)
        if isinstance(resolved, Reply):
            return resolved
        skill, trace = resolved
        skill = self._routed(request, skill, trace)
        if skill.entrypoint is not None:
            self._kept.keep(request, begun)
            return None
        trace.input_shape = input_shape(begun.input, begun.value)
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
        trace.input_shape = input_shape(intent.input, intent.value)
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
        return skill, _new_trace(self._trace_fields(intent, skill))

    def _trace_fields(self, intent: ParsedIntent, skill: Skill) -> dict[str, Any]:
        """The trace fields of a named skill known at once: each later setattr
        on a model costs about as much as a field given to its validation."""
        return {
            "matcher_mode": intent.mode.value,
            "skill_name": skill.name,
            "skill_version": skill.version,
            "server_id": self.config.server_id,
        }

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
        fields = {
            "request_id": rid,
            "status": "success",
            "content": content,
            "skill": skill.name,
            "server_id": self.config.server_id,
            "trace": trace,
        }
        version = skill.version
        if version is not None:  # a None given costs its validation; the default is None
            fields["skill_version"] = version
        return _new_reply(fields)

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


def _new_trace(fields: dict[str, Any]) -> Trace:
    """``Trace(**fields)``: the model's own validation, called without
    ``BaseModel.__init__`` around it (a fifth of the cost, on every request)."""
    trace: Trace = _TRACE_VALIDATOR(fields)
    return trace


def _new_reply(fields: dict[str, Any]) -> Reply:
    """``Reply(**fields)``, as :func:`_new_trace` does it."""
    reply: Reply = _REPLY_VALIDATOR(fields)
    return reply


_TRACE_VALIDATOR = Trace.__pydantic_validator__.validate_python
_REPLY_VALIDATOR = Reply.__pydantic_validator__.validate_python


def _queue_ms(started: float, received_at: float | None) -> float | None:
    """Milliseconds a request waited here before its processing began."""
    return round((started - received_at) * 1000, 3) if received_at else None


class _KeptIntents:
    """Intents :meth:`RequestHandler.process_now` parsed for requests it left to a worker.

    Keyed by the request object, which each entry holds (so its ``id`` cannot
    be reused while kept) and which is frozen (so its intent is what was parsed).
    Bounded in entries and characters, oldest out first: a request handed back
    instead of run is simply forgotten; one not found is parsed again.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Request, ParsedIntent]] = {}
        self._chars = 0

    def keep(self, request: Request, intent: ParsedIntent) -> None:
        size = len(request.intent)
        if size > KEPT_INTENT_CHARS:
            return
        entries = self._entries
        old = entries.pop(id(request), None)
        if old is not None:
            self._chars -= len(old[0].intent)
        while entries and (len(entries) >= KEPT_INTENTS or self._chars + size > KEPT_INTENT_CHARS):
            dropped = entries.pop(next(iter(entries)))
            self._chars -= len(dropped[0].intent)
        entries[id(request)] = (request, intent)
        self._chars += size

    def take(self, request: Request) -> ParsedIntent | None:
        if not self._entries:
            return None
        kept = self._entries.pop(id(request), None)
        if kept is None:
            return None
        self._chars -= len(kept[0].intent)
        return kept[1] if kept[0] is request else None

    def __len__(self) -> int:
        return len(self._entries)
