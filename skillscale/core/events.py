"""Captured events: what skills did (trace) and what agents did (trajectories).

Both are published on the bus for the distillation worker, as two frames
``[topic, json]``:

* ``_SKILLSCALE_TRACE``: one :class:`ExecutionTrace` per request a skill
  server answered, published by the server.
* ``_SKILLSCALE_TRAJECTORY``: one :class:`AgentTrajectory` per agent run,
  published by ``SkillScaleClient.submit_trajectory`` or the LangChain
  callback handler.

Events are best-effort (a subscriber that is not connected misses them) and
redacted before publishing (:mod:`skillscale.core.redact`). The schemas are
versioned by ``schema_version``; fields are only ever added.
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

from skillscale.core.redact import redact, redact_obj

TRACE_TOPIC = "_SKILLSCALE_TRACE"
TRAJECTORY_TOPIC = "_SKILLSCALE_TRAJECTORY"
FEEDBACK_TOPIC = "_SKILLSCALE_FEEDBACK"
SKILLS_CHANGED_TOPIC = "_SKILLSCALE_SKILLS_CHANGED"


MAX_PAYLOAD_CHARS = 4096
"""Bound of a trace event's ``task`` and ``output`` (characters, after redaction)."""


def payload_fields(task: str, output: str) -> dict[str, Any]:
    """``task``, ``output`` and ``payload_truncated`` for a trace event: redacted, bounded.

    Redaction sees 512 characters past the bound (so a token straddling the
    cut is still recognised whole) before the text is cut; a PEM block that
    begins before the cut and is not closed by then is dropped from its first
    line on. The prefix is small because this runs on the server's event loop.
    """
    fields: dict[str, Any] = {}
    truncated = False
    seen = MAX_PAYLOAD_CHARS + 512
    for name, text in (("task", task), ("output", output)):
        clean = redact(text[:seen])
        if len(clean) > MAX_PAYLOAD_CHARS or len(text) > seen:
            truncated = True
            clean = clean[:MAX_PAYLOAD_CHARS]
            begin = clean.find("-----BEGIN ")
            if begin >= 0:
                clean = clean[:begin]
        fields[name] = clean
    fields["payload_truncated"] = truncated
    return fields


@functools.lru_cache(maxsize=4096)
def caller_id(reply_to: str) -> str:
    """A stable, non-reversible id of a caller (its reply topic is a secret).

    Cached (bounded): a client keeps one reply topic for all its calls, and
    the server computes this for every request's trace event.
    """
    return hashlib.sha256(reply_to.encode()).hexdigest()[:16]


class ExecutionTrace(BaseModel):
    """One request answered by a skill server."""

    model_config = ConfigDict(extra="allow")

    event: Literal["execution"] = "execution"
    schema_version: int = 1
    timestamp: float = Field(default_factory=time.time)
    request_id: str
    caller: str
    """:func:`caller_id` of the request's reply topic."""
    server_id: str
    topic: str
    skill: str | None = None
    skill_version: str | None = None
    matcher_mode: str | None = None
    input_bytes: int = 0
    outcome: str
    """``success`` or the error code."""
    exit_code: int | None = None
    elapsed_ms: float | None = None
    attempt: int | None = None
    candidate: bool | None = None
    """True when the caller was routed to the skill's canary version."""
    input_shape: str | None = None
    """The input's shape without its values (``json:object{a,b}``, ``text``)."""
    stderr: str | None = None
    """The redacted tail of the skill's stderr, on failure only."""
    task: str | None = None
    """The request's task or input, redacted and at most :data:`MAX_PAYLOAD_CHARS`
    characters; only on requests to a skill in canary, or with ``--trace-payloads``
    (for the distiller's LLM judge)."""
    output: str | None = None
    """The reply's content (or error message), bounded and redacted like ``task``."""
    payload_truncated: bool | None = None
    """True when ``task`` or ``output`` was cut to :data:`MAX_PAYLOAD_CHARS`."""


_NONE = type(None)
_STR, _OPT_STR = (str,), (str, _NONE)
_OPT_INT, _OPT_BOOL = (int, _NONE), (bool, _NONE)
_PLAIN = (str, int, float, bool, _NONE)
# The exact types each field takes as is (``type(v) in ...``, so neither a
# bool for an int nor a str subclass): anything else goes through the model.
_TRACE_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "timestamp": (float, int),
    "request_id": _STR,
    "caller": _STR,
    "server_id": _STR,
    "topic": _STR,
    "skill": _OPT_STR,
    "skill_version": _OPT_STR,
    "matcher_mode": _OPT_STR,
    "input_bytes": (int,),
    "outcome": _STR,
    "exit_code": _OPT_INT,
    "elapsed_ms": (float, int, _NONE),
    "attempt": _OPT_INT,
    "candidate": _OPT_BOOL,
    "input_shape": _OPT_STR,
    "stderr": _OPT_STR,
    "task": _OPT_STR,
    "output": _OPT_STR,
    "payload_truncated": _OPT_BOOL,
}
_TRACE_REQUIRED = ("request_id", "caller", "server_id", "topic", "outcome")


def _trace_template() -> dict[str, Any]:
    """Every field of :class:`ExecutionTrace` in its order, with its default."""
    template: dict[str, Any] = {}
    for name, info in ExecutionTrace.model_fields.items():
        template[name] = None if info.is_required() or info.default_factory else info.default
    assert list(template)[1:] == list(_TRACE_TYPES), "ExecutionTrace changed: update _TRACE_TYPES"
    return template


def execution_trace_json(fields: Mapping[str, Any]) -> bytes:
    """``ExecutionTrace(**fields).model_dump_json()``, byte for byte, without the model.

    Building and dumping the model cost the server ~9 µs per request; when every
    value already has its field's type (the server's case) this writes the same
    bytes from a plain dict in ~3 µs. Anything else (a missing field, another
    type, an extra field that is not a plain scalar) goes through the model, so
    the result is always the model's. Raises as the model does (e.g.
    ``PydanticSerializationError`` for a lone surrogate).
    """
    event = _TEMPLATE.copy()
    event["timestamp"] = time.time()
    for name, value in fields.items():
        kinds = _TRACE_TYPES.get(name)
        if kinds is None:
            if name == "event" and value == "execution":
                continue
            if name in event or type(value) not in _PLAIN:
                return _trace_by_model(fields)
        elif type(value) not in kinds:
            return _trace_by_model(fields)
        elif type(value) is int and float in kinds:
            value = float(value)  # the model's float field makes 3 into 3.0
        event[name] = value
    for name in _TRACE_REQUIRED:
        if event[name] is None:
            return _trace_by_model(fields)
    # inf/NaN become null, as the model's serializer writes them.
    return pydantic_core.to_json(event, inf_nan_mode="null")


def _trace_by_model(fields: Mapping[str, Any]) -> bytes:
    return ExecutionTrace(**fields).model_dump_json().encode()


_TEMPLATE = _trace_template()


class TrajectoryStep(BaseModel):
    """One step of an agent run: a model call or a tool call."""

    model_config = ConfigDict(extra="allow")

    type: Literal["llm", "tool", "message"]
    name: str | None = None
    input: Any = None
    output: Any = None
    error: str | None = None
    started: float | None = None
    ended: float | None = None


class AgentTrajectory(BaseModel):
    """One agent run, from prompt to final answer."""

    model_config = ConfigDict(extra="allow")

    event: Literal["trajectory"] = "trajectory"
    schema_version: int = 1
    timestamp: float = Field(default_factory=time.time)
    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    agent: str = "unknown"
    """The framework or agent name (``langchain``, ``langgraph``, ``crewai``, ...)."""
    prompt: str = ""
    steps: list[TrajectoryStep] = Field(default_factory=list)
    final_answer: str | None = None
    outcome: Literal["success", "error"] = "success"
    error: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def redacted(self) -> AgentTrajectory:
        """A copy with every string redacted."""
        return AgentTrajectory.model_validate(redact_obj(self.model_dump()))


class FeedbackEvent(BaseModel):
    """A caller's verdict on one reply (``SkillScaleClient.feedback``)."""

    model_config = ConfigDict(extra="allow")

    event: Literal["feedback"] = "feedback"
    schema_version: int = 1
    timestamp: float = Field(default_factory=time.time)
    request_id: str = Field(min_length=1, max_length=128)
    score: float = Field(ge=0.0, le=1.0)
    """0 (useless or wrong) to 1 (right); below 0.5 counts as a failure."""
    comment: str | None = Field(default=None, max_length=2000)


class SkillsChangedEvent(BaseModel):
    """A skill's served versions changed: created, canary started or ended, promoted,
    rejected or rolled back. Servers reload the skill between requests."""

    model_config = ConfigDict(extra="allow")

    event: Literal["skills_changed"] = "skills_changed"
    schema_version: int = 1
    timestamp: float = Field(default_factory=time.time)
    change: Literal["created", "canary", "promoted", "rejected", "rolled_back", "degraded"]
    skill: str = Field(max_length=64)
    version: str | None = Field(default=None, max_length=16)
    """The version the change is about (the new active one, or the candidate)."""
    active: str | None = Field(default=None, max_length=16)
    """The active version after the change."""
    path: str | None = Field(default=None, max_length=4096)
    reason: str | None = Field(default=None, max_length=2000)
