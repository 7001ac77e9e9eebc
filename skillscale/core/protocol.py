"""Wire protocol: request and reply envelopes, intent forms, topic names.

Byte-compatible with the reference SkillScale protocol: a request is the two
frames ``[topic, json]`` with ``request_id``, ``reply_to``, ``intent`` and
``timestamp``; a reply is ``[reply_to, json]`` with ``request_id``, ``status``,
``content``, ``error``, ``timestamp`` and optionally ``_trace``. Everything we
add (``deadline``, ``error_code``, ``skill``, ``skill_version``, ``server_id``,
``elapsed_ms``) is optional, so old peers ignore it and we accept their
messages without it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skillscale.core.errors import ErrorCode, RequestError

REPLY_TOPIC_PREFIX = "AGENT_REPLY_"
TOPIC_PREFIX = "TOPIC_"
PROBE_TOPIC_PREFIX = "_SKILLSCALE_PROBE_"
"""Topics servers use to prove their bus path at start."""

SKILL_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-)){0,62}[a-z0-9]$|^[a-z0-9]$")
"""Agent Skills name rule: 1-64 of ``[a-z0-9-]``, no leading/trailing/double ``-``."""

ID_PATTERN = r"^[A-Za-z0-9_.:@\-]{1,128}$"
"""Request and server ids: they end up in logs, traces and metrics, so only a
short printable alphabet is accepted (no newline can forge a log line)."""
TOPIC_PATTERN = r"^[A-Za-z0-9_.:\-/]{1,256}$"
"""Topics a server may announce, and the shape of a ``reply_to``."""
MAX_TOPIC_BYTES = 256
MAX_REQUEST_BYTES = 8 * 1024 * 1024
"""Default limit of one request on the bus (proxy and servers)."""
MAX_REPLY_BYTES = 32 * 1024 * 1024
"""Hard limit of one message on the bus: a reply (skill output, escaped as
JSON) must fit; a peer sending more is disconnected by ZeroMQ."""
# Reply topics are echoed back onto the bus, so only plain printable tokens
# under the reply prefix are accepted: a ``reply_to`` naming a request topic
# or ``_SKILLSCALE_TRACE`` would make servers publish into it.
_REPLY_TO_RE = re.compile(r"^" + REPLY_TOPIC_PREFIX + r"[A-Za-z0-9_.:\-/]{1,244}$")
_ID_RE = re.compile(ID_PATTERN)
_SLASH_RE = re.compile(r"^/([a-z0-9][a-z0-9-]{0,63})(?:[ \t\r\n]+(.*))?$", re.DOTALL)


def is_valid_skill_name(name: str) -> bool:
    """True if ``name`` follows the Agent Skills naming rule."""
    return bool(SKILL_NAME_RE.fullmatch(name))


def topic_for_category(category: str) -> str:
    """``data-processing`` -> ``TOPIC_DATA_PROCESSING`` (the SDK's topic rule)."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", category).strip("_").upper()
    if not cleaned:
        raise RequestError(f"cannot derive a topic from category {category!r}")
    return TOPIC_PREFIX + cleaned


def new_request_id() -> str:
    """A fresh random request id (32 hex characters)."""
    return uuid.uuid4().hex


def new_reply_topic() -> str:
    """A fresh, unguessable reply topic ``AGENT_REPLY_<32 hex>``."""
    return REPLY_TOPIC_PREFIX + secrets.token_hex(16)


class Request(BaseModel):
    """A request envelope as it travels in frame 2 of ``[topic, json]``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    request_id: str = Field(pattern=ID_PATTERN)
    reply_to: str
    intent: str
    timestamp: float = Field(default_factory=time.time, allow_inf_nan=False)
    deadline: float | None = Field(default=None, allow_inf_nan=False)
    """Absolute UNIX time (seconds) after which the caller no longer waits."""

    @field_validator("reply_to")
    @classmethod
    def _check_reply_to(cls, value: str) -> str:
        if not _REPLY_TO_RE.fullmatch(value):
            raise ValueError(
                f"reply_to must be {REPLY_TOPIC_PREFIX} followed by up to 244 "
                "characters of [A-Za-z0-9_.:/-]"
            )
        return value

    @field_validator("intent", mode="before")
    @classmethod
    def _intent_to_str(cls, value: Any) -> Any:
        # The reference sends the structured form as a JSON *string*; some
        # clients send the object itself. Accept both, store the string form.
        if isinstance(value, dict):
            return json.dumps(value, ensure_ascii=False)
        return value

    def to_bytes(self) -> bytes:
        """The JSON payload frame."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, payload: bytes) -> Request:
        """Parse and validate a payload frame, raising :class:`RequestError`."""
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
                for err in exc.errors()[:5]
            )
            raise RequestError(f"malformed request: {problems}") from None


class Trace(BaseModel):
    """Diagnostics attached to a reply as ``_trace``; all fields optional."""

    model_config = ConfigDict(extra="allow")

    matcher_mode: str | None = None
    skill_name: str | None = None
    score: float | None = None
    candidates: list[dict[str, Any]] | None = None
    match: dict[str, Any] | None = None
    """How the keyword matcher decided: threshold, unknown words, data shape, candidates."""
    exit_code: int | None = None
    elapsed_ms: float | None = None
    queue_ms: float | None = None
    stderr: str | None = None
    stdout_truncated: bool | None = None
    invalid_utf8: bool | None = None
    server_id: str | None = None
    llm_error: str | None = None
    """Why the LLM matcher fell back to keywords, when it did."""
    attempt: int | None = None
    """Delivery number of this request (2+ means it was re-dispatched)."""
    redelivered_from: list[str] | None = None
    """Servers that were given this request earlier and were lost."""
    skill_version: str | None = None
    """The version of the skill that ran."""
    candidate: bool | None = None
    """True when this caller was routed to the skill's canary (candidate) version."""
    input_shape: str | None = None
    """The input's shape without its values, for clustering failures."""
    deduplicated: bool | None = None
    """True when this reply answers a retransmission of a request that had
    already run (or was running): the server replied from its window."""


class Reply(BaseModel):
    """A reply envelope as it travels in frame 2 of ``[reply_to, json]``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    request_id: str
    status: Literal["success", "error"]
    content: str = ""
    error: str | None = None
    timestamp: float = Field(default_factory=time.time)
    error_code: ErrorCode | None = None
    skill: str | None = None
    skill_version: str | None = None
    server_id: str | None = None
    elapsed_ms: float | None = None
    trace: Trace | None = Field(default=None, alias="_trace")

    @property
    def ok(self) -> bool:
        """True for a success reply."""
        return self.status == "success"

    def to_bytes(self) -> bytes:
        """The JSON payload frame (``_trace`` under its wire name)."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, payload: bytes) -> Reply:
        """Parse a reply payload; raises pydantic's ``ValidationError``."""
        return cls.model_validate_json(payload)

    @classmethod
    def failure(
        cls,
        request_id: str,
        code: ErrorCode,
        message: str,
        *,
        trace: Trace | None = None,
        **extra: Any,
    ) -> Reply:
        """Build an error reply with a code and a human sentence."""
        return cls(
            request_id=request_id,
            status="error",
            error=message,
            error_code=code,
            trace=trace,
            **extra,
        )


class IntentMode(str, Enum):
    """How the skill for a request is chosen."""

    EXPLICIT = "explicit"
    SLASH = "slash"
    TASK = "task"
    CATALOG = "catalog"
    """``{"catalog": true}``: the server answers with its skills instead of running one."""


@dataclass(frozen=True)
class ParsedIntent:
    """An intent resolved into what to run and what to feed it."""

    mode: IntentMode
    skill: str | None
    """The named skill (explicit and slash modes)."""
    task: str
    """Text to match a skill against (task mode), or context otherwise."""
    input: str
    """What the skill receives on stdin."""


def parse_intent(intent: str) -> ParsedIntent:
    """Resolve the three intent forms of the protocol.

    * a JSON object string with ``skill`` and/or ``data`` and/or ``task``
      (``data`` is the skill input and wins over ``task``);
    * ``/skill-name rest`` (slash activation: the rest is the input);
    * anything else is plain task text, matched and passed through whole.

    Raises :class:`RequestError` for an explicit skill name that is not a
    valid Agent Skills name (e.g. ``../x`` or ``x; rm -rf /``).
    """
    stripped = intent.strip()
    if stripped.startswith("{"):
        structured = _parse_structured(stripped)
        if structured is not None:
            return structured
    slash = _SLASH_RE.match(stripped)
    if slash:
        rest = slash.group(2) or ""
        return ParsedIntent(IntentMode.SLASH, slash.group(1), rest, rest)
    return ParsedIntent(IntentMode.TASK, None, intent, intent)


def _parse_structured(text: str) -> ParsedIntent | None:
    try:
        obj = json.loads(text)
    except RecursionError:
        raise RequestError("the intent's JSON is nested too deeply") from None
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("catalog") is True:
        return ParsedIntent(IntentMode.CATALOG, None, "", "")
    if not isinstance(obj, dict) or not ({"skill", "data", "task"} & obj.keys()):
        return None
    skill = obj.get("skill")
    task = obj.get("task")
    data = obj.get("data")
    for name, value in (("skill", skill), ("task", task), ("data", data)):
        if isinstance(value, str) and not _encodable(value):
            raise RequestError(f"intent field {name!r} holds an unpaired UTF-16 surrogate")
    if skill is not None and not isinstance(skill, str):
        raise RequestError("intent field 'skill' must be a string")
    if task is not None and not isinstance(task, str):
        raise RequestError("intent field 'task' must be a string")
    if data is None:
        payload = task or ""
    elif isinstance(data, str):
        payload = data
    else:
        payload = json.dumps(data, ensure_ascii=False)
    if skill:
        if not is_valid_skill_name(skill):
            raise RequestError(
                f"invalid skill name {skill[:80]!r}: skill names are 1-64 lowercase "
                "letters, digits and single hyphens"
            )
        return ParsedIntent(IntentMode.EXPLICIT, skill, task or "", payload)
    return ParsedIntent(IntentMode.TASK, None, task if task else payload, payload)


def _encodable(text: str) -> bool:
    # JSON's \ud800 escapes decode to lone surrogates, which no file, pipe or
    # environment variable can carry: refuse them here, not in the executor.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_SALVAGE = {
    "reply_to": re.compile(
        rb'"reply_to"\s*:\s*"(' + REPLY_TOPIC_PREFIX.encode() + rb'[A-Za-z0-9_.:/\-]{1,244})"'
    ),
    "request_id": re.compile(rb'"request_id"\s*:\s*"([A-Za-z0-9_.:@\-]{1,128})"'),
}


def salvage_address(payload: bytes) -> tuple[str | None, str]:
    """``(reply_to, request_id)`` from a payload that may not parse.

    Used to answer requests that are malformed, too large to parse, or that
    no server will take: the reference left those without any reply.
    """
    found = {key: regex.search(payload) for key, regex in _SALVAGE.items()}
    reply_to = found["reply_to"].group(1).decode() if found["reply_to"] else None
    request_id = found["request_id"].group(1).decode() if found["request_id"] else ""
    return reply_to, request_id


def is_valid_id(value: str) -> bool:
    """True if ``value`` is a safe request or server id (see :data:`ID_PATTERN`)."""
    return bool(_ID_RE.fullmatch(value))


def is_reply_topic(topic: bytes) -> bool:
    """True if ``topic`` is a well-formed reply topic (the only kind replies go to)."""
    return bool(_REPLY_TO_RE.fullmatch(topic.decode("ascii", errors="replace")))
