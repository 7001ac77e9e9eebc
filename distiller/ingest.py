"""Ingest: one adapter per agent's session store, one normalised model out.

Every adapter turns a source into :class:`Chunk`\\ s: a trajectory holding
the events not yet consumed, and a ``commit`` that records how far it was
read once its atoms are stored. JSONL stores (Claude Code, Codex, Cursor,
the bus spool) resume at a byte offset: the resume point is the start of the
session's last user prompt, so a segment still being written is read again
whole when the session grows, and atoms are content-addressed, so nothing is
counted twice. Snapshot stores (OpenCode's SQLite, OpenClaw's
``messagesSnapshot``) are re-read per session only when its change marker
(``time_updated``, file size and mtime) moved.

Every string is redacted here, at the boundary, before it is stored,
written or sent anywhere. Bad input (a truncated or binary line, an unknown
line type, a locked or corrupt database, a missing folder, a file replaced
while read) is one warning naming the file and line, and the rest is read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from skillscale.core.redact import Redactor
from skillscale.distiller.model import SOURCES, Event, Trajectory
from skillscale.distiller.state import FileMark, State

log = logging.getLogger("skillscale.distiller")

MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_TEXT = 4000
MAX_OUTPUT = 1500
MAX_FILES = 100_000
SHELL_TOOLS = frozenset(
    {"bash", "shell", "exec_command", "run_terminal_cmd", "terminal", "local_shell",
     "container.exec", "run_shell_command", "exec", "command"}
)  # fmt: skip
_EXIT_RE = re.compile(
    r"(?i)(?:exit(?:ed with)? code|exit status|process exited with code)[:\s]+(-?\d+)"
)
# Codex and Claude Code inject context as user text that starts with a tag:
# <environment_context>, <user_instructions>, <system-reminder>, <command-name>...
_INJECTED_RE = re.compile(r"^\s*(<[a-zA-Z_\-]+[\s>]|# AGENTS\.md instructions|Caveat: )")
_CLAUDE_QUIET = frozenset(
    {"summary", "system", "file-history-snapshot", "progress", "queue-operation", "attachment"}
)
_CODEX_QUIET = frozenset({"turn_context", "compacted", "state"})


@dataclass
class Report:
    """What one pass read, per source, and what went wrong."""

    warnings: list[str] = field(default_factory=list)
    ingested: dict[str, dict[str, int]] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        """One clear warning (file and line named by the caller)."""
        self.warnings.append(message)
        log.warning("%s", message)

    def count(self, source: str, key: str, n: int = 1) -> None:
        """Add ``n`` to a per-source counter."""
        counts = self.ingested.setdefault(source, {"files": 0, "sessions": 0, "new_events": 0})
        counts[key] = counts.get(key, 0) + n


@dataclass
class Chunk:
    """Events of one trajectory not consumed yet; ``commit`` records progress."""

    trajectory: Trajectory
    commit: Callable[[], None]
    new_events: int = 0


def cut(text: str, limit: int) -> str:
    """``text`` bounded to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + " ..."


def block_text(content: Any) -> str:
    """Text of a message content: a string, or a list of ``text``-ish blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif (
                isinstance(block, dict)
                and isinstance(block.get("text"), str)
                and block.get("type", "text") in ("text", "input_text", "output_text")
            ):
                parts.append(block["text"])
        return "\n".join(parts)
    return ""


def shell_command(tool: str, args: Any) -> str | None:
    """The shell command a tool call runs, if it runs one."""
    if not isinstance(args, dict):
        return None
    raw = args.get("command", args.get("cmd"))
    if isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        if len(raw) >= 3 and raw[0].rsplit("/", 1)[-1] in ("bash", "sh", "zsh") and raw[1] in (
            "-c", "-lc",
        ):  # fmt: skip
            return str(raw[2]).strip()
        return shlex.join(raw)
    if isinstance(raw, str) and (tool.lower() in SHELL_TOOLS or "command" in args):
        return raw.strip()
    return None


def exit_code_of(text: str) -> int | None:
    """An exit status stated in a tool's output."""
    match = _EXIT_RE.search(text[:4000])
    return int(match.group(1)) if match else None


def is_injected(text: str) -> bool:
    """Text an agent injected into the user turn (context, reminders), not the user's."""
    return bool(_INJECTED_RE.match(text))


# ---------------------------------------------------------------- JSONL reading


@dataclass
class Line:
    """One parsed JSONL record."""

    number: int
    offset: int
    value: dict[str, Any]


def read_jsonl(
    path: Path, mark: FileMark | None, report: Report
) -> tuple[list[Line], FileMark, int] | None:
    """The records of ``path`` after ``mark``; None when unchanged or unreadable.

    A line without a final newline that does not parse is still being
    written: it is left for the next pass. A file whose identity changed is
    read from the start (atoms dedupe); one replaced *while* read is dropped
    for this pass with a warning.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        report.warn(f"{path}: cannot open ({exc.strerror})")
        return None
    try:
        st = os.fstat(fd)
        if mark and (mark.inode, mark.size, mark.mtime_ns) == (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        ):
            return None
        offset, number, seen = 0, 0, 0
        if mark and mark.inode == st.st_ino and st.st_size >= mark.offset:
            offset, number, seen = mark.offset, mark.line, mark.seen
        elif mark:
            report.warn(
                f"{path}: file was replaced or truncated since the last pass; reading it again"
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        try:
            now = os.stat(path)
        except OSError:
            now = None
        if now is None or now.st_ino != st.st_ino or now.st_size < st.st_size:
            report.warn(f"{path}: file was replaced while being read; it is read again next pass")
            return None
    finally:
        os.close(fd)
    lines: list[Line] = []
    pos = 0
    end_ok = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        complete = nl >= 0
        raw = data[pos : nl if complete else len(data)]
        number += 1
        here = offset + pos
        nxt = (nl + 1) if complete else len(data)
        if len(raw) > MAX_LINE_BYTES:
            report.warn(
                f"{path}:{number}: line of {len(raw)} bytes skipped (limit {MAX_LINE_BYTES})"
            )
        elif raw.strip():
            try:
                value = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                if not complete:
                    number -= 1  # still being written: read again next pass
                    break
                report.warn(f"{path}:{number}: not a JSON line (truncated or binary); skipped")
                value = None
            if isinstance(value, dict):
                lines.append(Line(number, here, value))
            elif value is not None:
                report.warn(f"{path}:{number}: a JSON line that is not an object; skipped")
        pos = nxt
        end_ok = pos
    end = offset + end_ok
    return lines, FileMark(st.st_ino, st.st_size, st.st_mtime_ns, end, number, max(seen, end)), seen


def _resume_chunk(
    state: State, source: str, path: Path, traj: Trajectory, mark: FileMark, old_seen: int
) -> Chunk:
    """A chunk whose commit resumes at the start of its last user prompt."""
    users = [e for e in traj.events if e.kind == "user"]
    resume = mark
    if users:
        last = users[-1]
        resume = FileMark(
            mark.inode, mark.size, mark.mtime_ns, last.offset, last.line - 1, mark.seen
        )
    new = sum(1 for e in traj.events if e.offset >= old_seen)

    def commit() -> None:
        state.set_file_mark(str(path), source, resume)

    return Chunk(traj, commit, new)


def _jsonl_files(root: Path, pattern: str, report: Report, source: str) -> list[Path]:
    files: list[Path] = []
    for i, p in enumerate(sorted(root.glob(pattern))):
        if i >= MAX_FILES:
            report.warn(f"{root}: more than {MAX_FILES} session files; the rest is skipped")
            break
        if p.is_file():
            files.append(p)
    return files


# ---------------------------------------------------------------- adapters


class Adapter:
    """One source kind; ``chunks()`` yields what is new since the last pass."""

    kind = ""

    def __init__(self, root: Path, state: State, redactor: Redactor, report: Report) -> None:
        self.root, self.state, self.r, self.report = root, state, redactor, report

    def chunks(self) -> Iterator[Chunk]:  # pragma: no cover - interface
        """New content, one chunk per trajectory."""
        raise NotImplementedError

    def text(self, value: str, limit: int = MAX_TEXT) -> str:
        """Redacted, bounded text."""
        return self.r.text(cut(value, limit * 2))[: limit + 20]

    def tool_event(self, name: str, args: Any, line: Line | int, call_id: str | None) -> Event:
        """A tool call event (its outcome filled in later by :meth:`complete`)."""
        number, offset = (line.number, line.offset) if isinstance(line, Line) else (line, 0)
        command = shell_command(name, args)
        shown = command if command is not None else json.dumps(args, sort_keys=True)[:MAX_TEXT]
        return Event(
            kind="tool", tool=name, command=self.text(command) if command else None,
            text=self.text(shown), call_id=call_id, line=number, offset=offset,
        )  # fmt: skip

    def complete(self, event: Event, output: str, is_error: bool | None, code: int | None) -> Event:
        """``event`` with its outcome."""
        if code is None:
            code = exit_code_of(output)
        if is_error is None and code is not None:
            is_error = code != 0
        return event.model_copy(
            update={
                "output": self.text(output, MAX_OUTPUT),
                "is_error": is_error,
                "exit_code": code,
            }
        )

    def jsonl_pass(
        self, files: list[Path], parse: Callable[[Path, list[Line]], Trajectory | None]
    ) -> Iterator[Chunk]:
        """Read each file from its resume point and parse it into a chunk."""
        for path in files:
            self.report.count(self.kind, "files")
            got = read_jsonl(path, self.state.file_mark(str(path)), self.report)
            if got is None:
                continue
            lines, mark, old_seen = got
            traj = parse(path, lines)
            if traj is None or not traj.events:
                self.state.set_file_mark(str(path), self.kind, mark)
                continue
            self.report.count(self.kind, "sessions")
            yield _resume_chunk(self.state, self.kind, path, traj, mark, old_seen)


class ClaudeCode(Adapter):
    """``~/.claude/projects/<project>/<session>.jsonl`` and its subagent transcripts."""

    kind = "claude-code"

    def chunks(self) -> Iterator[Chunk]:
        files = _jsonl_files(self.root, "*/*.jsonl", self.report, self.kind)
        files += _jsonl_files(self.root, "*/*/subagents/*.jsonl", self.report, self.kind)
        files += _jsonl_files(self.root, "*/*/subagents/*/*.jsonl", self.report, self.kind)
        yield from self.jsonl_pass(files, self.parse)

    def parse(self, path: Path, lines: list[Line]) -> Trajectory:
        if path.parent.name == "subagents" or "subagents" in path.parts[-3:-1]:
            session_dir = (
                path.parent.parent if path.parent.name == "subagents" else path.parent.parent.parent
            )
            session = f"{session_dir.name}/{path.stem}"
            parent: str | None = f"{self.kind}:{session_dir.name}"
        else:
            session, parent = path.stem, None
        events: list[Event] = []
        pending: dict[str, int] = {}
        cwd: str | None = None
        unknown: set[str] = set()
        for line in lines:
            v = line.value
            kind = v.get("type")
            if kind not in ("user", "assistant"):
                if isinstance(kind, str) and kind not in _CLAUDE_QUIET and kind not in unknown:
                    unknown.add(kind)
                    self.report.warn(f"{path}:{line.number}: unknown line type {kind!r}; skipped")
                continue
            if v.get("isMeta") or (v.get("isSidechain") and parent is None):
                continue  # injected context; sidechains are read from subagents/
            cwd = cwd or (v.get("cwd") if isinstance(v.get("cwd"), str) else None)
            message = v.get("message")
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if kind == "user":
                if isinstance(content, list):
                    for block in content:
                        if isinstance(block, dict) and block.get("type") == "tool_result":
                            idx = pending.pop(str(block.get("tool_use_id")), None)
                            if idx is not None:
                                is_err = block.get("is_error")
                                events[idx] = self.complete(
                                    events[idx], block_text(block.get("content")),
                                    bool(is_err) if is_err is not None else False, None,
                                )  # fmt: skip
                text = block_text(content)
                if text.strip() and not is_injected(text):
                    events.append(
                        Event(
                            kind="user", text=self.text(text), line=line.number, offset=line.offset
                        )
                    )
                continue
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if not isinstance(content, list):
                continue
            for block in content:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    events.append(
                        Event(
                            kind="assistant",
                            text=self.text(block["text"]),
                            line=line.number,
                            offset=line.offset,
                        )
                    )
                elif block.get("type") == "tool_use":
                    name = str(block.get("name") or "tool")
                    args = block.get("input")
                    if name == "Skill" and isinstance(args, dict):
                        name = f"Skill:{args.get('skill')}"
                    pending[str(block.get("id"))] = len(events)
                    events.append(self.tool_event(name, args, line, str(block.get("id"))))
        return Trajectory(
            id=f"{self.kind}:{session}", source=self.kind, session=session, path=str(path),
            cwd=self.r.text(cwd) if cwd else None, parent=parent, events=events,
        )  # fmt: skip


class Codex(Adapter):
    """``~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl``, both styles."""

    kind = "codex"

    def chunks(self) -> Iterator[Chunk]:
        files = _jsonl_files(self.root, "**/rollout-*.jsonl", self.report, self.kind)
        yield from self.jsonl_pass(files, self.parse)

    def parse(self, path: Path, lines: list[Line]) -> Trajectory:
        session = path.stem.removeprefix("rollout-")
        m = re.search(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$", session)
        session = m.group(1) if m else session
        events: list[Event] = []
        pending: dict[str, int] = {}
        cwd: str | None = None
        recent_user: list[tuple[int, str]] = []
        unknown: set[str] = set()

        def add_user(text: str, line: Line) -> None:
            norm = " ".join(text.split())
            # The same prompt arrives as an event_msg and as a response_item.
            if any(t == norm and line.number - n <= 8 for n, t in recent_user):
                return
            recent_user.append((line.number, norm))
            del recent_user[:-4]
            events.append(
                Event(kind="user", text=self.text(text), line=line.number, offset=line.offset)
            )

        for line in lines:
            v = line.value
            kind, payload = v.get("type"), v.get("payload")
            if not isinstance(payload, dict):
                payload = {}
            if kind == "session_meta":
                session = str(payload.get("id") or session)
                cwd = payload.get("cwd") if isinstance(payload.get("cwd"), str) else cwd
            elif kind == "event_msg":
                if payload.get("type") == "user_message" and isinstance(
                    payload.get("message"), str
                ):
                    text = payload["message"]
                    if text.strip() and not is_injected(text):
                        add_user(text, line)
            elif kind == "response_item":
                ptype = payload.get("type")
                if ptype == "message":
                    role = payload.get("role")
                    text = block_text(payload.get("content"))
                    if role == "user" and text.strip() and not is_injected(text):
                        add_user(text, line)
                    elif role == "assistant" and text.strip():
                        events.append(
                            Event(
                                kind="assistant",
                                text=self.text(text),
                                line=line.number,
                                offset=line.offset,
                            )
                        )
                elif ptype in ("function_call", "custom_tool_call", "local_shell_call"):
                    name = str(
                        payload.get("name")
                        or ("local_shell" if ptype == "local_shell_call" else "tool")
                    )
                    raw = payload.get("arguments", payload.get("input", payload.get("action")))
                    args: Any = raw
                    if isinstance(raw, str):
                        try:
                            args = json.loads(raw)
                        except ValueError:
                            args = {"command": raw} if name in SHELL_TOOLS else {"input": raw}
                    call_id = str(payload.get("call_id") or payload.get("id") or "")
                    pending[call_id] = len(events)
                    events.append(self.tool_event(name, args, line, call_id))
                elif ptype in ("function_call_output", "custom_tool_call_output"):
                    idx = pending.pop(str(payload.get("call_id")), None)
                    if idx is not None:
                        output, code = _codex_output(payload.get("output"))
                        events[idx] = self.complete(events[idx], output, None, code)
            elif isinstance(kind, str) and kind not in _CODEX_QUIET and kind not in unknown:
                unknown.add(kind)
                self.report.warn(f"{path}:{line.number}: unknown line type {kind!r}; skipped")
        return Trajectory(
            id=f"{self.kind}:{session}", source=self.kind, session=session, path=str(path),
            cwd=self.r.text(cwd) if cwd else None, events=events,
        )  # fmt: skip


def _codex_output(raw: Any) -> tuple[str, int | None]:
    """Codex tool output: a JSON string ``{output, metadata{exit_code}}`` or plain text."""
    if isinstance(raw, dict):
        data: Any = raw
    elif isinstance(raw, str):
        try:
            data = json.loads(raw)
        except ValueError:
            return raw, exit_code_of(raw)
    else:
        return "", None
    if isinstance(data, dict):
        meta: dict[str, Any] = data["metadata"] if isinstance(data.get("metadata"), dict) else {}
        code = meta.get("exit_code", data.get("exit_code"))
        out = data.get("output", data.get("content", ""))
        text = out if isinstance(out, str) else json.dumps(out)
        return text, int(code) if isinstance(code, int) else exit_code_of(text)
    return str(raw), None


class Cursor(Adapter):
    """``~/.cursor/projects/<cwd>/agent-transcripts/<id>.jsonl`` (no ids, cwd or tool I/O)."""

    kind = "cursor"

    def chunks(self) -> Iterator[Chunk]:
        files = _jsonl_files(self.root, "*/agent-transcripts/*.jsonl", self.report, self.kind)
        yield from self.jsonl_pass(files, self.parse)

    def parse(self, path: Path, lines: list[Line]) -> Trajectory:
        session = f"{path.parent.parent.name}/{path.stem}"
        events: list[Event] = []
        for line in lines:
            v = line.value
            role = v.get("role")
            message = v.get("message")
            content = message.get("content") if isinstance(message, dict) else v.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if role not in ("user", "assistant") or not isinstance(content, list):
                self.report.warn(f"{path}:{line.number}: unknown line (role {role!r}); skipped")
                continue
            if role == "user":
                text = block_text(content)
                if text.strip() and not is_injected(text):
                    events.append(
                        Event(
                            kind="user", text=self.text(text), line=line.number, offset=line.offset
                        )
                    )
                continue
            for block in content:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    events.append(
                        Event(
                            kind="assistant",
                            text=self.text(block["text"]),
                            line=line.number,
                            offset=line.offset,
                        )
                    )
                elif block.get("type") == "tool_use":
                    events.append(
                        self.tool_event(
                            str(block.get("name") or "tool"), block.get("input"), line, None
                        )
                    )
        return Trajectory(
            id=f"{self.kind}:{session}",
            source=self.kind,
            session=session,
            path=str(path),
            events=events,
        )


class Bus(Adapter):
    """A spool of ``_SKILLSCALE_TRAJECTORY`` events (one :class:`AgentTrajectory` per line)."""

    kind = "bus"

    def chunks(self) -> Iterator[Chunk]:
        files = (
            [self.root]
            if self.root.is_file()
            else _jsonl_files(self.root, "*.jsonl", self.report, self.kind)
        )
        for path in files:
            self.report.count(self.kind, "files")
            got = read_jsonl(path, self.state.file_mark(str(path)), self.report)
            if got is None:
                continue
            lines, mark, _ = got
            for line in lines:
                traj = self.parse_one(path, line)
                if traj is not None and traj.events:
                    self.report.count(self.kind, "sessions")
                    yield Chunk(traj, lambda: None, len(traj.events))
            # Each line is a whole run: the file is consumed to its end at once.
            self.state.set_file_mark(str(path), self.kind, mark)

    def parse_one(self, path: Path, line: Line) -> Trajectory | None:
        v = line.value
        if v.get("event") != "trajectory":
            self.report.warn(f"{path}:{line.number}: not a trajectory event; skipped")
            return None
        run = str(v.get("run_id") or f"line{line.number}")[:128]
        events = []
        if isinstance(v.get("prompt"), str) and v["prompt"].strip():
            events.append(Event(kind="user", text=self.text(v["prompt"]), line=1))
        for i, step in enumerate(v.get("steps") or [], start=2):
            if not isinstance(step, dict):
                continue
            if step.get("type") == "tool":
                name = str(step.get("name") or "tool")
                args = step.get("input")
                if isinstance(args, str):
                    args = {"command": args} if name.lower() in SHELL_TOOLS else {"input": args}
                ev = self.tool_event(name, args, i, None)
                out = step.get("output")
                err = step.get("error")
                events.append(self.complete(ev, str(err or out or ""), bool(err), None))
            elif isinstance(step.get("output"), str):
                events.append(Event(kind="assistant", text=self.text(step["output"]), line=i))
        session = f"{v.get('agent', 'unknown')}/{run}"
        return Trajectory(
            id=f"{self.kind}:{run}",
            source=self.kind,
            session=session,
            path=str(path),
            events=events,
        )


class OpenClaw(Adapter):
    """``~/.openclaw/agents/<agent>/sessions/<sid>.trajectory.jsonl``: the last
    ``model.completed`` event's ``messagesSnapshot`` is the transcript."""

    kind = "openclaw"

    def chunks(self) -> Iterator[Chunk]:
        for path in _jsonl_files(
            self.root, "*/sessions/*.trajectory.jsonl", self.report, self.kind
        ):
            self.report.count(self.kind, "files")
            try:
                st = path.stat()
            except OSError as exc:
                self.report.warn(f"{path}: cannot read ({exc.strerror})")
                continue
            key, marker = f"{self.kind}:{path}", f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
            previous = self.state.marker(key)
            if previous and previous[0] == marker:
                continue
            got = read_jsonl(path, None, self.report)
            if got is None:
                continue
            lines = got[0]
            snapshot: list[Any] | None = None
            session = path.name.removesuffix(".trajectory.jsonl")
            for line in lines:
                v = line.value
                if v.get("traceSchema") not in (None, "openclaw-trajectory"):
                    self.report.warn(f"{path}:{line.number}: unknown trace schema; skipped")
                    continue
                data = v.get("data")
                session = str(v.get("sessionId") or session)
                if v.get("type") == "model.completed" and isinstance(data, dict):
                    snap = data.get("messagesSnapshot")
                    if isinstance(snap, list):
                        snapshot = snap
            traj = self.parse_snapshot(path, f"{path.parent.parent.name}/{session}", snapshot or [])
            count = len(traj.events)
            old = previous[1] if previous else 0
            self.report.count(self.kind, "sessions")

            def commit(key: str = key, marker: str = marker, count: int = count) -> None:
                self.state.set_marker(key, marker, count)

            yield Chunk(traj, commit, max(0, count - old))

    def parse_snapshot(self, path: Path, session: str, messages: list[Any]) -> Trajectory:
        events: list[Event] = []
        pending: dict[str, int] = {}
        for i, msg in enumerate(messages, start=1):
            if not isinstance(msg, dict):
                continue
            role, content = msg.get("role"), msg.get("content")
            if role == "user":
                text = block_text(content)
                if text.strip() and not is_injected(text):
                    events.append(Event(kind="user", text=self.text(text), line=i))
            elif role == "assistant":
                blocks = (
                    content
                    if isinstance(content, list)
                    else [{"type": "text", "text": content or ""}]
                )
                for block in blocks:
                    if not isinstance(block, dict):
                        continue
                    if block.get("type") == "text" and str(block.get("text") or "").strip():
                        events.append(
                            Event(kind="assistant", text=self.text(str(block["text"])), line=i)
                        )
                    elif block.get("type") in ("toolCall", "tool_use"):
                        cid = str(block.get("id"))
                        args = block.get("arguments", block.get("input"))
                        pending[cid] = len(events)
                        events.append(
                            self.tool_event(str(block.get("name") or "tool"), args, i, cid)
                        )
                for call in msg.get("tool_calls") or []:
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        fn = call["function"]
                        try:
                            args = json.loads(fn.get("arguments") or "{}")
                        except ValueError:
                            args = {}
                        cid = str(call.get("id"))
                        pending[cid] = len(events)
                        events.append(self.tool_event(str(fn.get("name") or "tool"), args, i, cid))
            elif role in ("toolResult", "tool"):
                cid = str(msg.get("toolCallId", msg.get("tool_call_id")))
                idx = pending.pop(cid, None)
                if idx is not None:
                    err = msg.get("isError")
                    events[idx] = self.complete(
                        events[idx],
                        block_text(content),
                        bool(err) if err is not None else None,
                        None,
                    )
        return Trajectory(
            id=f"{self.kind}:{session}",
            source=self.kind,
            session=session,
            path=str(path),
            events=events,
        )


class OpenCode(Adapter):
    """OpenCode's SQLite store, opened read-only *with* its write-ahead log
    (``mode=ro``, never ``immutable=1``, which would miss fresh data)."""

    kind = "opencode"

    def chunks(self) -> Iterator[Chunk]:
        self.report.count(self.kind, "files")
        uri = f"file:{quote(str(self.root.resolve()))}?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=1.0)
        except sqlite3.Error as exc:
            self.report.warn(f"{self.root}: cannot open the OpenCode database ({exc}); skipped")
            return
        try:
            try:
                sessions = db.execute(
                    "SELECT id, parent_id, directory, time_updated FROM session ORDER BY id"
                ).fetchall()
            except sqlite3.Error as exc:
                self.report.warn(f"{self.root}: cannot read the OpenCode database ({exc}); skipped")
                return
            for sid, parent, directory, updated in sessions:
                key = f"{self.kind}:{self.root}:{sid}"
                previous = self.state.marker(key)
                if previous and previous[0] == str(updated):
                    continue
                try:
                    traj = self.read_session(db, str(sid), parent, directory)
                except sqlite3.Error as exc:
                    self.report.warn(f"{self.root}: session {sid}: cannot read ({exc}); skipped")
                    continue
                count = len(traj.events)
                self.report.count(self.kind, "sessions")

                def commit(key: str = key, marker: str = str(updated), count: int = count) -> None:
                    self.state.set_marker(key, marker, count)

                yield Chunk(traj, commit, max(0, count - (previous[1] if previous else 0)))
        finally:
            db.close()

    def read_session(
        self, db: sqlite3.Connection, sid: str, parent: Any, directory: Any
    ) -> Trajectory:
        roles: dict[str, str] = {}
        for mid, data in db.execute(
            "SELECT id, data FROM message WHERE session_id = ? ORDER BY time_created, id", (sid,)
        ):
            roles[str(mid)] = str(_json_obj(data).get("role") or "")
        events: list[Event] = []
        rows = db.execute(
            "SELECT p.message_id, p.data FROM part p JOIN message m ON m.id = p.message_id "
            "WHERE p.session_id = ? ORDER BY m.time_created, m.id, p.id",
            (sid,),
        ).fetchall()
        for seq, (mid, data) in enumerate(rows, start=1):
            part = _json_obj(data)
            ptype, role = part.get("type"), roles.get(str(mid), "")
            if ptype == "text" and isinstance(part.get("text"), str) and part["text"].strip():
                if part.get("synthetic"):
                    continue
                if role == "user" and not is_injected(part["text"]):
                    events.append(Event(kind="user", text=self.text(part["text"]), line=seq))
                elif role == "assistant":
                    events.append(Event(kind="assistant", text=self.text(part["text"]), line=seq))
            elif ptype == "tool":
                st: dict[str, Any] = part["state"] if isinstance(part.get("state"), dict) else {}
                ev = self.tool_event(
                    str(part.get("tool") or "tool"), st.get("input"), seq, str(part.get("callID"))
                )
                status = st.get("status")
                meta: dict[str, Any] = (
                    st["metadata"] if isinstance(st.get("metadata"), dict) else {}
                )
                code = meta.get("exit") if isinstance(meta.get("exit"), int) else None
                out = st.get("error") if status == "error" else st.get("output")
                events.append(
                    self.complete(ev, str(out or ""), True if status == "error" else None, code)
                )
        return Trajectory(
            id=f"{self.kind}:{sid}", source=self.kind, session=sid, path=str(self.root),
            cwd=self.r.text(directory) if isinstance(directory, str) else None,
            parent=f"{self.kind}:{parent}" if parent else None, events=events,
        )  # fmt: skip


def _json_obj(data: Any) -> dict[str, Any]:
    try:
        value = json.loads(data) if isinstance(data, (str, bytes)) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


ADAPTERS: dict[str, type[Adapter]] = {
    a.kind: a for a in (ClaudeCode, Codex, OpenCode, Cursor, OpenClaw, Bus)
}
assert set(ADAPTERS) == set(SOURCES)


def default_sources(home: Path) -> list[tuple[str, Path]]:
    """The agents' standard stores under ``home`` (present or not)."""
    return [
        ("claude-code", home / ".claude" / "projects"),
        ("codex", home / ".codex" / "sessions"),
        ("opencode", home / ".local" / "share" / "opencode" / "opencode.db"),
        ("cursor", home / ".cursor" / "projects"),
        ("openclaw", home / ".openclaw" / "agents"),
    ]


def read_source(
    kind: str, root: Path, state: State, redactor: Redactor, report: Report
) -> Iterator[Chunk]:
    """Chunks of one source; a missing one is one warning and nothing else."""
    if not root.exists():
        report.warn(f"{kind}: {root} does not exist; skipped")
        return
    report.ingested.setdefault(kind, {"files": 0, "sessions": 0, "new_events": 0})
    adapter = ADAPTERS[kind](root, state, redactor, report)
    try:
        yield from adapter.chunks()
    except OSError as exc:
        report.warn(f"{kind}: {root}: {exc}; the rest of this source is skipped this pass")
