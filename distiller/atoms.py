"""Atoms: a trajectory cut into single-intent segments.

Offline the cut is deterministic: a segment starts at each user prompt and
holds the tool calls that followed it, in order. The error-then-fix pairs
(a command that failed, then a later successful command of the same program)
are its gotchas; it succeeded when its last command did. With an LLM
configured, the model chooses the segment bounds and states each intent
(``segment_llm``); anything it answers that does not fit the trajectory falls
back to the deterministic cut, so an LLM can add intents but never commands.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from collections.abc import Sequence

from skillscale.core.llm import LLMClient, LLMError, json_answer
from skillscale.core.redact import Redactor
from skillscale.distiller.model import Atom, Event, Gotcha, Step, Trajectory

log = logging.getLogger("skillscale.distiller")

MAX_INTENT = 1000
MAX_STEPS = 200


def atom_id(trajectory: str, line_start: int) -> str:
    """Stable id of the segment of ``trajectory`` starting at ``line_start``."""
    return hashlib.sha256(f"{trajectory}\0{line_start}".encode()).hexdigest()[:20]


def program(command: str) -> str:
    """A command's program and subcommand (``git push``, ``npm run``), for pairing."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    words = [w for w in words if "=" not in w or w.startswith("-")]  # env assignments
    head = [w for w in words[:3] if not w.startswith("-")]
    return " ".join(head[:2])


def _error_line(step: Step) -> str:
    lines = [ln.strip() for ln in step.error.splitlines() if ln.strip()]
    hits = [
        ln
        for ln in lines
        if any(
            k in ln.lower()
            for k in ("error", "fail", "not ", "denied", "invalid", "unknown", "missing", "cannot")
        )
    ]
    return (hits or lines or [f"exit status {step.exit_code}"])[0][:240]


def _fix_for(failed: Step, after: Sequence[Step]) -> str | None:
    """What made a failed command work: the commands run before it succeeded
    unchanged, else the next success of the same program, else the next success."""
    assert failed.command is not None
    ok = [s.command for s in after if s.ok and s.command]
    if failed.command in ok:
        between = ok[: ok.index(failed.command)]
        return between[0] if between else None
    prog = program(failed.command)
    first = failed.command.split()[0]
    same = [c for c in ok if program(c) == prog] or [c for c in ok if c.split()[0] == first]
    pick = same or ok
    return pick[0] if pick else None


def build_atom(traj: Trajectory, events: Sequence[Event], intent: str) -> Atom:
    """The atom of ``events`` (a segment of ``traj``) with ``intent``."""
    steps: list[Step] = []
    for ev in events:
        if ev.kind != "tool" or len(steps) >= MAX_STEPS:
            continue
        ok = ev.is_error is not True
        steps.append(
            Step(tool=ev.tool or "tool", command=ev.command, ok=ok, exit_code=ev.exit_code,
                 error="" if ok else ev.output[:600], line=ev.line)
        )  # fmt: skip
    gotchas: list[Gotcha] = []
    for i, step in enumerate(steps):
        if step.ok or not step.command:
            continue
        fix = _fix_for(step, steps[i + 1 :])
        if fix is not None:
            gotchas.append(Gotcha(failed=step.command, error=_error_line(step), fix=fix))
    commanded = [s for s in steps if s.command]
    success = bool(commanded) and commanded[-1].ok
    lines = [e.line for e in events]
    start = lines[0] if lines else 0
    return Atom(
        id=atom_id(traj.id, start), trajectory=traj.id, source=traj.source,
        session=traj.parent or traj.id, intent=intent[:MAX_INTENT], steps=steps,
        gotchas=gotchas, success=success, line_start=start, line_end=max(lines, default=0),
    )  # fmt: skip


def segment(traj: Trajectory) -> list[Atom]:
    """The deterministic cut: one atom per user prompt."""
    atoms: list[Atom] = []
    current: list[Event] = []
    for ev in traj.events:
        if ev.kind == "user":
            if current:
                atoms.append(build_atom(traj, current, current[0].text))
            current = [ev]
        elif current:
            current.append(ev)
    if current:
        atoms.append(build_atom(traj, current, current[0].text))
    return atoms


_SYSTEM = (
    "You cut an AI coding agent's session into single-intent segments. You get numbered "
    'events. Answer with JSON only: a list of objects {"start": N, "end": M, "intent": '
    '"what the user wanted, one sentence"}, covering events in order, start <= end, no overlap.'
)


def _listing(events: Sequence[Event]) -> str:
    rows = []
    for i, ev in enumerate(events):
        if ev.kind == "tool":
            state = "error" if ev.is_error else "ok"
            rows.append(f"{i}. [tool {ev.tool}] {(ev.command or ev.text)[:200]} -> {state}")
        else:
            rows.append(f"{i}. [{ev.kind}] {ev.text[:300]}")
    return "\n".join(rows)


def parse_segments(answer: str, n: int) -> list[tuple[int, int, str]] | None:
    """The model's segments if they are well-formed for ``n`` events, else None."""
    data = json_answer(answer)
    if not isinstance(data, list) or not data:
        return None
    out: list[tuple[int, int, str]] = []
    last = -1
    for item in data:
        if not isinstance(item, dict):
            return None
        start, end, intent = item.get("start"), item.get("end"), item.get("intent")
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(intent, str)):
            return None
        if not (last < start <= end < n) or not intent.strip():
            return None
        out.append((start, end, intent.strip()))
        last = end
    return out


async def segment_llm(
    traj: Trajectory, client: LLMClient, redactor: Redactor, problems: list[str] | None = None
) -> list[Atom]:
    """Segments chosen by the LLM (the events sent are already redacted).

    A failed call or an unusable answer falls back to :func:`segment`; the
    problem is appended to ``problems`` when given (the caller warns once
    per pass), else logged. A failed call raises :class:`LLMError` when
    ``problems`` is given, so the caller can stop asking for the pass.
    """
    events = traj.events
    if not events:
        return []
    try:
        answer = await client.complete(_SYSTEM, redactor.text(_listing(events)), max_tokens=800)
    except LLMError as exc:
        if problems is not None:
            raise
        log.warning("LLM segmentation of %s failed (%s); using the offline cut", traj.id, exc)
        return segment(traj)
    spans = parse_segments(answer, len(events))
    if spans is None:
        if problems is not None:
            problems.append(traj.id)
        else:
            log.warning(
                "LLM segmentation of %s was not usable JSON; using the offline cut", traj.id
            )
        return segment(traj)
    return [build_atom(traj, events[s : e + 1], redactor.text(intent)) for s, e, intent in spans]
