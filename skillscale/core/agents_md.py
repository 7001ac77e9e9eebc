"""openskills ``AGENTS.md`` blocks: parse the skill table, resolve locations.

Real openskills output writes ``<location>project</location>`` or
``<location>global</location>`` rather than a path; older hand-written
tables use a path relative to the ``AGENTS.md`` file. Both are resolved.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

TABLE_START = "<!-- SKILLS_TABLE_START -->"
TABLE_END = "<!-- SKILLS_TABLE_END -->"

_SKILL_RE = re.compile(r"<skill>(.*?)</skill>", re.DOTALL)
_FIELD_RE = {
    key: re.compile(rf"<{key}>(.*?)</{key}>", re.DOTALL)
    for key in ("name", "description", "location")
}

PROJECT_ROOTS = (".agents/skills", ".claude/skills", ".agent/skills", "skills")
GLOBAL_ROOTS = (".agents/skills", ".claude/skills", ".agent/skills")


@dataclass(frozen=True)
class AgentsMdEntry:
    """One ``<skill>`` row of an AGENTS.md table."""

    name: str
    description: str
    location: str


def parse_agents_md(text: str) -> list[AgentsMdEntry]:
    """Extract the skill rows, preferring the marked table when present."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if 0 <= start < end:
        text = text[start:end]
    entries: list[AgentsMdEntry] = []
    for block in _SKILL_RE.findall(text):
        fields = {}
        for key, regex in _FIELD_RE.items():
            found = regex.search(block)
            fields[key] = html.unescape(found.group(1).strip()) if found else ""
        if fields["name"]:
            entries.append(AgentsMdEntry(fields["name"], fields["description"], fields["location"]))
    return entries


def resolve_location(
    entry: AgentsMdEntry, agents_md: Path, home: Path | None = None
) -> Path | None:
    """Find the skill directory an entry points at, or None."""
    base = agents_md.parent
    location = entry.location.strip()
    candidates: list[Path] = []
    if location in ("", "project"):
        candidates += [base / root / entry.name for root in PROJECT_ROOTS]
        candidates.append(base / entry.name)
    if location in ("", "global", "project"):
        # openskills falls back to the user's skills when a project has none.
        user_home = home if home is not None else Path.home()
        candidates += [user_home / root / entry.name for root in GLOBAL_ROOTS]
    if location not in ("", "project", "global"):
        path = Path(location).expanduser()
        path = path if path.is_absolute() else base / path
        # A location may name the SKILL.md file itself or its directory.
        candidates.append(path.parent if path.name == "SKILL.md" else path)
    for candidate in candidates:
        if (candidate / "SKILL.md").is_file():
            return candidate
    return None
