"""The distiller's memory: a small SQLite file beside the skills.

``<skills-dir>/.skillscale/distill.sqlite`` holds how far each source file
was read (so a pass reads only what was appended), a marker per SQLite or
snapshot session (so a session is re-read only when it grew), and every atom
cut so far (content-addressed: a segment read twice is stored once), and
the LLM's (redacted) answers by the procedure they were asked about, so an
unchanged procedure is not asked again. Nothing in it is unredacted.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skillscale.distiller.model import Atom

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  path TEXT PRIMARY KEY, source TEXT NOT NULL, inode INTEGER NOT NULL,
  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  offset INTEGER NOT NULL, line INTEGER NOT NULL, seen INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS markers (
  key TEXT PRIMARY KEY, marker TEXT NOT NULL, events INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS atoms (
  id TEXT PRIMARY KEY, trajectory TEXT NOT NULL, session TEXT NOT NULL,
  source TEXT NOT NULL, line_start INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS skills (
  name TEXT PRIMARY KEY, path TEXT NOT NULL, version TEXT NOT NULL,
  signature TEXT NOT NULL, terms TEXT NOT NULL, atoms TEXT NOT NULL,
  procedure TEXT NOT NULL, rendered TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS llm_drafts (
  key TEXT PRIMARY KEY, answer TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS atoms_by_trajectory ON atoms(trajectory, line_start);
"""


@dataclass
class FileMark:
    """How far one file was read: its identity when last read, the resume point."""

    inode: int
    size: int
    mtime_ns: int
    offset: int
    line: int
    seen: int
    """Byte offset up to which lines were read at least once (for counting new lines)."""


@dataclass(frozen=True)
class SkillRecord:
    """A skill the distiller wrote: where, which version, what it was made of."""

    name: str
    path: str
    version: str
    signature: frozenset[str]
    terms: frozenset[str]
    atoms: frozenset[str]
    procedure: str
    """Hash of the procedure last written (a change of it is a new version)."""
    rendered: str
    """Hash of every file last written (equal: nothing to do)."""


class State:
    """The distiller's SQLite state; one per skills folder. Not thread-safe."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=timeout)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        """Commit and close."""
        self.db.commit()
        self.db.close()

    def commit(self) -> None:
        """Make everything so far durable."""
        self.db.commit()

    def file_mark(self, path: str) -> FileMark | None:
        """Where reading ``path`` resumes, if it was read before."""
        row = self.db.execute(
            "SELECT inode, size, mtime_ns, offset, line, seen FROM files WHERE path = ?", (path,)
        ).fetchone()
        return FileMark(*row) if row else None

    def set_file_mark(self, path: str, source: str, mark: FileMark) -> None:
        """Record how far ``path`` was read."""
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (path, source, mark.inode, mark.size, mark.mtime_ns, mark.offset, mark.line, mark.seen),
        )

    def marker(self, key: str) -> tuple[str, int] | None:
        """The change marker and event count last seen for a session."""
        row = self.db.execute("SELECT marker, events FROM markers WHERE key = ?", (key,)).fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def set_marker(self, key: str, marker: str, events: int) -> None:
        """Record a session's change marker and event count."""
        self.db.execute("INSERT OR REPLACE INTO markers VALUES (?, ?, ?)", (key, marker, events))

    def put_atom(self, atom: Atom) -> bool:
        """Store ``atom``; True when it is new or its content changed."""
        body = atom.model_dump_json()
        row = self.db.execute("SELECT body FROM atoms WHERE id = ?", (atom.id,)).fetchone()
        if row is not None and row[0] == body:
            return False
        self.db.execute(
            "INSERT OR REPLACE INTO atoms VALUES (?, ?, ?, ?, ?, ?)",
            (atom.id, atom.trajectory, atom.session, atom.source, atom.line_start, body),
        )
        return True

    def atoms(self) -> list[Atom]:
        """Every atom stored, in a stable order."""
        rows = self.db.execute("SELECT body FROM atoms ORDER BY trajectory, line_start").fetchall()
        return [Atom.model_validate_json(r[0]) for r in rows]

    def count_atoms(self) -> int:
        """How many atoms are stored."""
        return int(self.db.execute("SELECT count(*) FROM atoms").fetchone()[0])

    def skills(self) -> list[SkillRecord]:
        """Every skill the distiller wrote."""
        rows = self.db.execute("SELECT * FROM skills ORDER BY name").fetchall()
        return [
            SkillRecord(r[0], r[1], r[2], frozenset(json.loads(r[3])), frozenset(json.loads(r[4])),
                        frozenset(json.loads(r[5])), r[6], r[7])
            for r in rows
        ]  # fmt: skip

    def put_skill(self, rec: SkillRecord) -> None:
        """Record (or update) a written skill."""
        self.db.execute(
            "INSERT OR REPLACE INTO skills VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.name, rec.path, rec.version, dumps(sorted(rec.signature)),
             dumps(sorted(rec.terms)), dumps(sorted(rec.atoms)), rec.procedure, rec.rendered),
        )  # fmt: skip

    def llm_draft(self, key: str) -> str | None:
        """The LLM's answer cached under ``key``, if any."""
        row = self.db.execute("SELECT answer FROM llm_drafts WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def put_llm_draft(self, key: str, answer: str) -> None:
        """Cache the LLM's (already redacted) ``answer`` under ``key``."""
        self.db.execute("INSERT OR REPLACE INTO llm_drafts VALUES (?, ?)", (key, answer))

    def info(self) -> dict[str, Any]:
        """Counts for status output."""
        files = int(self.db.execute("SELECT count(*) FROM files").fetchone()[0])
        return {"files": files, "atoms": self.count_atoms(), "path": str(self.path)}


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys) for stored and compared values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
