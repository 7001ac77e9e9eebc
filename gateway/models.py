"""The gateway's request and response bodies: the contract in ``/openapi.json``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from skillscale.core.protocol import ID_PATTERN, TOPIC_PATTERN
from skillscale.core.rollout import DEFAULT_SHARE

SKILL_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
MAX_TASK_CHARS = 1_000_000
MAX_TIMEOUT = 600.0


class ErrorDetail(BaseModel):
    """One error: the fabric's code, a human sentence, and what is known."""

    code: str = Field(description="an ErrorCode value (no_match, overloaded, ...) or http_error")
    message: str
    status: int = Field(description="the HTTP status of this response")
    request_id: str | None = None
    trace: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every non-2xx answer of the API has this shape."""

    error: ErrorDetail


class TopicInvokeRequest(BaseModel):
    """A call on one topic: an explicit ``skill`` (with ``data``) or a ``task`` to match."""

    # The one-of rule is in the schema too, so the contract rejects what the model does.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["skill"], "properties": {"skill": {"type": "string"}}},
                {
                    "required": ["task"],
                    "properties": {"task": {"type": "string", "pattern": r"\S"}},
                },
            ]
        },
    )

    task: str | None = Field(None, max_length=MAX_TASK_CHARS, description="text to match")
    skill: str | None = Field(
        None, max_length=64, pattern=SKILL_PATTERN, description="run this skill"
    )
    data: Any = Field(None, description="the skill's input (string or any JSON value)")
    timeout: float | None = Field(None, ge=1, le=MAX_TIMEOUT, description="seconds to wait")

    @model_validator(mode="after")
    def _one_of(self) -> TopicInvokeRequest:
        if not self.skill and not (self.task and self.task.strip()):
            raise ValueError("give a skill to run, or a non-empty task to match")
        return self

    def intent(self) -> str | dict[str, Any]:
        """The protocol intent this body describes."""
        if self.skill:
            out: dict[str, Any] = {
                "skill": self.skill,
                "data": "" if self.data is None else self.data,
            }
            if self.task:
                out["task"] = self.task
            return out
        if self.data is not None:
            return {"task": self.task or "", "data": self.data}
        return {"task": self.task or ""}


class RoutedInvokeRequest(BaseModel):
    """A task routed across the whole catalogue (keyword or LLM router)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS, pattern=r"\S")
    data: Any = Field(None, description="the skill's input; the task text when absent")
    timeout: float | None = Field(None, ge=1, le=MAX_TIMEOUT, description="seconds to wait")


class RouteInfo(BaseModel):
    """How ``POST /v1/invoke`` chose its topic."""

    topic: str
    mode: str = Field(description="keyword or llm")
    detail: str = ""


class Timing(BaseModel):
    """Where the time of one request went, milliseconds (``None``: not known)."""

    gateway_ms: float = Field(description="gateway receipt to reply, as the gateway measured it")
    server_ms: float | None = Field(None, description="the server's handling (reply.elapsed_ms)")
    queue_ms: float | None = Field(None, description="waiting at the server for a worker")
    exec_ms: float | None = Field(None, description="the skill's own run (_trace.elapsed_ms)")
    bus_ms: float | None = Field(
        None, description="gateway_ms minus server_ms: proxy hops, dispatch, serialisation"
    )


class InvokeResponse(BaseModel):
    """A successful call: the skill's content and everything known about the run."""

    request_id: str
    topic: str
    status: Literal["success"] = "success"
    content: str
    skill: str | None = None
    skill_version: str | None = None
    server_id: str | None = None
    trace: dict[str, Any] | None = Field(None, description="the reply's _trace")
    timing: Timing
    route: RouteInfo | None = None


class RequestRecord(BaseModel):
    """A recent request as ``GET /v1/requests/{id}`` keeps it."""

    request_id: str
    topic: str
    intent: Any
    received_at: float = Field(description="unix seconds")
    status: Literal["success", "error"]
    http_status: int
    content: str | None = None
    error: ErrorDetail | None = None
    skill: str | None = None
    skill_version: str | None = None
    server_id: str | None = None
    trace: dict[str, Any] | None = None
    timing: Timing
    route: RouteInfo | None = None
    events: list[dict[str, Any]] = Field(
        default_factory=list, description="execution trace events seen for this request"
    )


class RequestSummary(BaseModel):
    """One line of ``GET /v1/requests``."""

    request_id: str
    topic: str
    received_at: float
    status: Literal["success", "error"]
    http_status: int
    skill: str | None = None
    code: str | None = None
    gateway_ms: float


class RequestList(BaseModel):
    """The recent requests, newest first."""

    requests: list[RequestSummary]


RolloutState = Literal["active", "canary", "degraded", "draft"]
VersionStateName = Literal["draft", "canary", "active", "retired"]


class SkillInfo(BaseModel):
    """One skill as a server of its topic lists it (plus the gateway's local copy)."""

    name: str
    topic: str
    description: str
    version: str | None = None
    timeout: float | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    live: bool = Field(description="listed by a running server of the topic")
    valid: bool = Field(True, description="the local SKILL.md parses and validates")
    problems: list[str] = Field(default_factory=list)
    body: str | None = Field(None, description="the SKILL.md body (markdown), when local")
    rollout_state: RolloutState | None = Field(
        None,
        description="where its rollout stands (from the gateway's --skills-dir; None: "
        "not a local skill): active, canary, degraded, or draft (a new skill no server "
        "serves until it is promoted)",
    )
    degraded: bool = Field(False, description="its runs fail repeatedly (see .../rollout)")
    drafts: list[str] = Field(default_factory=list, description="versions waiting in draft")


class SkillList(BaseModel):
    """The live catalogue."""

    skills: list[SkillInfo]
    errors: dict[str, ErrorDetail] = Field(
        default_factory=dict, description="topics whose servers did not list their skills"
    )


class TopicInfo(BaseModel):
    """One topic: its replicas and load as the proxy exports them, its skills."""

    topic: str
    skills: list[str]
    replicas: int | None = Field(None, description="live replicas (None: no proxy metrics)")
    queue_depth: int | None = None
    inflight: int | None = None
    live: bool = Field(description="a server of the topic answered the catalogue request")


class TopicList(BaseModel):
    """Every topic the gateway knows: served ones and configured ones."""

    topics: list[TopicInfo]


class TopicStats(BaseModel):
    """Per-topic figures scraped from the proxy's ``/metrics``."""

    topic: str
    replicas: int | None = None
    queue_depth: int | None = None
    inflight: int | None = None
    slots: int | None = Field(None, description="summed slots of its live, non-draining replicas")
    draining: int | None = Field(None, description="replicas of the topic that are draining")
    messages: float = 0.0
    bytes: float = 0.0
    dropped: float = 0.0


class ReplicaState(BaseModel):
    """One replica as the proxy's ``/replicas`` lists it (its last heartbeat)."""

    model_config = ConfigDict(extra="ignore")

    server_id: str = Field(pattern=ID_PATTERN)
    topics: list[Annotated[str, Field(pattern=TOPIC_PATTERN)]] = Field(max_length=64)
    state: Literal["up", "draining", "joining", "unreachable"] = Field(
        description="up; draining (takes no new work); joining (after a proxy take-over, "
        "until it said what it holds); unreachable (a send failed, removed shortly)"
    )
    slots: int = Field(ge=0, description="requests it runs at once")
    inflight: int = Field(ge=0, description="requests the proxy dispatched to it, unanswered")
    busy: int = Field(ge=0, description="workers busy, as it last reported")
    last_seen_s: float = Field(ge=0, description="seconds since its last message")


class Stats(BaseModel):
    """What the proxy exports, per topic, at one instant."""

    available: bool = Field(description="the proxy's metrics could be read")
    source: str | None = Field(None, description="the metrics URL scraped")
    error: str | None = None
    timestamp: float
    topics: list[TopicStats] = Field(default_factory=list)
    error_replies: dict[str, float] = Field(
        default_factory=dict, description="error replies the proxy itself sent, by code"
    )
    redelivered: float = 0.0
    duplicates_dropped: float = 0.0
    subscriptions: float | None = None
    replicas: list[ReplicaState] = Field(
        default_factory=list, description="every replica, from the proxy's /replicas"
    )
    replicas_error: str | None = Field(
        None, description="why the replica list could not be read (an older proxy, ...)"
    )


class Health(BaseModel):
    """``/healthz`` and ``/readyz``."""

    status: Literal["ok", "unavailable"]
    detail: str = ""


class RolloutStatus(BaseModel):
    """A skill's versions and canary, as ``skillscale.core.rollout`` keeps them."""

    skill: str
    topic: str
    managed: bool = Field(description="the skill has a rollout file (versions beyond the first)")
    active: str | None = Field(None, description="the served version (None: a draft-only skill)")
    state: RolloutState = Field(
        description="canary (one runs), draft (a new skill, not served until promoted), "
        "degraded (its runs fail repeatedly), else active"
    )
    degraded: bool = Field(
        False, description="failing runs were clustered (see failures); also true in canary"
    )
    drafts: list[str] = Field(
        default_factory=list, description="versions in draft, oldest first (promote or canary)"
    )
    versions: dict[str, VersionState] = Field(default_factory=dict)
    canary: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = Field(default_factory=list)
    suggestions: list[dict[str, Any]] = Field(default_factory=list)
    canary_history: list[CanarySample] = Field(
        default_factory=list,
        description="the canary's evidence each time this gateway read a change of it, "
        "oldest first (what happened before the gateway first looked is not known)",
    )


class VersionState(BaseModel):
    """One rollout version of a skill and where it stands."""

    model_config = ConfigDict(extra="ignore")

    state: VersionStateName
    created: float = Field(description="unix seconds")
    decided: float | None = Field(None, description="when it last changed state (unix seconds)")
    reason: str | None = None
    provenance: dict[str, str] = Field(default_factory=dict)


class CanarySample(BaseModel):
    """The canary's evidence at one moment, as this gateway saw it."""

    at: float = Field(description="unix seconds")
    pairs: int = Field(description="discordant pairs so far (the SPRT's sample count)")
    candidate_wins: int
    active_wins: int
    llr: float = Field(description="the SPRT log-likelihood ratio after those pairs")
    active_n: int
    active_successes: int
    candidate_n: int
    candidate_successes: int


class FileDiff(BaseModel):
    """One file that differs between two revisions of a skill."""

    path: str
    change: Literal["added", "removed", "modified"]
    binary: bool = False
    diff: str = Field(description="unified diff (empty for a binary file)")


class VersionDiff(BaseModel):
    """What changed from ``old`` to ``new`` (``GET .../diff``)."""

    skill: str
    topic: str
    old: str
    new: str
    files: list[FileDiff]
    truncated: bool = Field(description="the diff text was cut at its size limit")


class HistoryEntry(BaseModel):
    """One commit of a skill's own git history (``skillscale.core.skill_history``)."""

    sha: str
    time: float
    author: str
    message: str
    hand_edit: bool


class SkillHistory(BaseModel):
    """A skill's commits, newest first (empty when it has no history)."""

    skill: str
    topic: str
    entries: list[HistoryEntry]


class RolloutAction(BaseModel):
    """A promote, reject or rollback request."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        None, pattern=r"^[0-9]{1,12}$", description="rollback: the version to serve again"
    )
    reason: str | None = Field(None, max_length=500)


class CanaryAction(BaseModel):
    """Put a draft in canary: a share of the skill's callers get it."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        None, pattern=r"^[0-9]{1,12}$", description="the draft (default: the newest)"
    )
    share: float = Field(
        DEFAULT_SHARE, gt=0, le=1, description="share of the skill's callers sent to it"
    )
