"""The one normalised trajectory model every source adapter produces."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SOURCES = ("claude-code", "codex", "opencode", "cursor", "openclaw", "bus")


class Event(BaseModel):
    """One thing that happened in a session: a user prompt, an assistant
    message, or a tool call with its outcome."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["user", "assistant", "tool"]
    text: str = ""
    """The prompt or message text (redacted); for a tool, its input as text."""
    tool: str | None = None
    command: str | None = None
    """The shell command, when the tool runs one."""
    output: str = ""
    """The tool's output, cut to a bounded excerpt."""
    is_error: bool | None = None
    exit_code: int | None = None
    call_id: str | None = None
    line: int = 0
    """1-based line (JSONL) or row sequence (SQLite) in the source."""
    offset: int = 0
    """Byte offset of the line's start (JSONL sources)."""


class Trajectory(BaseModel):
    """One session (or subagent transcript), from one source."""

    id: str
    """``<source>:<native id>``: unique across sources."""
    source: str
    session: str
    """The native session id (a subagent's is ``<session>/<agent>``)."""
    path: str
    cwd: str | None = None
    parent: str | None = None
    """The parent session's :attr:`id`, for subagent transcripts."""
    events: list[Event] = Field(default_factory=list)


class Step(BaseModel):
    """One tool call of an atom."""

    tool: str
    command: str | None = None
    ok: bool = True
    exit_code: int | None = None
    error: str = ""
    line: int = 0


class Gotcha(BaseModel):
    """An error-then-fix pair: what failed first, why, and what worked."""

    failed: str
    error: str
    fix: str


class Atom(BaseModel):
    """A single-intent segment of a trajectory."""

    id: str
    trajectory: str
    source: str
    session: str
    intent: str
    steps: list[Step] = Field(default_factory=list)
    gotchas: list[Gotcha] = Field(default_factory=list)
    success: bool = False
    line_start: int = 0
    line_end: int = 0

    @property
    def commands(self) -> list[str]:
        """Shell commands that succeeded, in order, without repeats."""
        return list(dict.fromkeys(s.command for s in self.steps if s.command and s.ok))
