"""The one error hierarchy of SkillScale.

Every error reply on the wire carries a machine-readable ``error_code`` from
:class:`ErrorCode` and a human sentence in ``error``. On the client side each
code maps to one exception class, so callers can ``except`` precisely.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorCode(str, Enum):
    """The closed set of error codes a reply may carry."""

    BAD_REQUEST = "bad_request"
    """The request could not be parsed or misses a required field."""
    PAYLOAD_TOO_LARGE = "payload_too_large"
    """The request is larger than the server accepts."""
    NO_MATCH = "no_match"
    """No skill matched the task text well enough."""
    SKILL_NOT_FOUND = "skill_not_found"
    """An explicitly named skill does not exist on this topic."""
    TIMEOUT = "timeout"
    """The skill (or the caller's wait) ran past its time limit."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """The caller's deadline had passed before the work could start."""
    EXEC_FAILED = "exec_failed"
    """The skill ran and failed (non-zero exit, killed, could not start)."""
    OUTPUT_TOO_LARGE = "output_too_large"
    """The skill wrote more output than the server keeps."""
    OVERLOADED = "overloaded"
    """The server's bounded queue is full; retry later."""
    NO_SERVER = "no_server"
    """No skill server serves the topic."""
    INTERNAL = "internal"
    """A bug in SkillScale itself; the message says what."""


class SkillScaleError(Exception):
    """Base class of every error SkillScale raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        request_id: str | None = None,
        trace: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.request_id = request_id
        self.trace = trace or {}

    def __str__(self) -> str:
        return f"[{self.code.value}] {self.message}"


class ConfigError(SkillScaleError):
    """Invalid configuration or command-line input (never from the wire)."""

    code = ErrorCode.BAD_REQUEST


class RequestError(SkillScaleError):
    """The request was rejected as malformed or too large."""

    code = ErrorCode.BAD_REQUEST


class SkillNotFoundError(SkillScaleError):
    """The named skill does not exist, or no skill matched the task."""

    code = ErrorCode.SKILL_NOT_FOUND


class SkillTimeoutError(SkillScaleError, TimeoutError):
    """A skill or a caller's wait for a reply ran out of time."""

    code = ErrorCode.TIMEOUT


class ExecutionError(SkillScaleError):
    """The skill ran and failed, or its output was unusable."""

    code = ErrorCode.EXEC_FAILED


class UnavailableError(SkillScaleError):
    """No capacity: the topic is overloaded or has no server."""

    code = ErrorCode.OVERLOADED


_CLASS_FOR_CODE: dict[ErrorCode, type[SkillScaleError]] = {
    ErrorCode.BAD_REQUEST: RequestError,
    ErrorCode.PAYLOAD_TOO_LARGE: RequestError,
    ErrorCode.NO_MATCH: SkillNotFoundError,
    ErrorCode.SKILL_NOT_FOUND: SkillNotFoundError,
    ErrorCode.TIMEOUT: SkillTimeoutError,
    ErrorCode.DEADLINE_EXCEEDED: SkillTimeoutError,
    ErrorCode.EXEC_FAILED: ExecutionError,
    ErrorCode.OUTPUT_TOO_LARGE: ExecutionError,
    ErrorCode.OVERLOADED: UnavailableError,
    ErrorCode.NO_SERVER: UnavailableError,
    ErrorCode.INTERNAL: SkillScaleError,
}


def error_for_code(
    code: ErrorCode | str | None,
    message: str,
    *,
    request_id: str | None = None,
    trace: dict[str, Any] | None = None,
) -> SkillScaleError:
    """Build the exception that matches a reply's ``error_code``.

    Unknown or missing codes (e.g. from a reference server that sends none)
    become :class:`ExecutionError` with code ``exec_failed``.
    """
    try:
        resolved = ErrorCode(code) if code is not None else ErrorCode.EXEC_FAILED
    except ValueError:
        resolved = ErrorCode.EXEC_FAILED
    cls = _CLASS_FOR_CODE[resolved]
    return cls(message, code=resolved, request_id=request_id, trace=trace)
