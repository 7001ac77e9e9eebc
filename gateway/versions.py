"""What changed between two versions of a skill, for ``GET .../diff`` and the console.

Two kinds of revision name a skill's files:

* a **version** (``"1"``, ``"2"``, ...) of :mod:`skillscale.core.rollout`: the
  active one is the skill folder itself, every other one the folder
  ``.skillscale/candidates/<version>/`` (drafts, the canary, retired versions);
* a **commit** of the skill's own git history
  (:mod:`skillscale.core.skill_history`), written ``git:HEAD``, ``git:HEAD~2``
  or ``git:<sha prefix>``.

Files are read bounded (count and size) and compared with :mod:`difflib`;
the diff is plain text that the console shows escaped. A ``SKILL.md``'s
frontmatter is compared as data: both sides are re-emitted as YAML the same
way first, because storing a version rewrites its frontmatter (new line
breaks, quoting) and that rewrite would otherwise bury the real change.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import yaml

from skillscale.core import rollout, skill_history
from skillscale.core.errors import ConfigError
from skillscale.core.skill_format import split_frontmatter
from skillscale.gateway.models import FileDiff, HistoryEntry

REVISION_PATTERN = r"^(?:[0-9]{1,12}|git:(?:HEAD(?:~[0-9]{1,3})?|[0-9a-f]{4,40}))$"
MAX_FILES = 200
MAX_FILE_BYTES = 256 * 1024
MAX_DIFF_CHARS = 200_000
SKIPPED = frozenset({".git", rollout.STATE_DIR, "__pycache__"})


class RevisionError(ConfigError):
    """A revision that names no files of this skill (unknown version or commit)."""


def folder_files(folder: Path) -> dict[str, bytes]:
    """A version folder's files (relative POSIX path -> bytes), bounded; no symlinks."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(folder).as_posix()
            with path.open("rb") as fh:
                out[rel] = fh.read(MAX_FILE_BYTES + 1)
            if len(out) >= MAX_FILES:
                return out
    return out


def version_files(skill_dir: Path, state: rollout.Rollout | None, version: str) -> dict[str, bytes]:
    """The files of rollout ``version`` of the skill at ``skill_dir`` (see the module doc)."""
    active = state.active if state is not None else (rollout.folder_version(skill_dir) or "1")
    if version == active:
        return folder_files(skill_dir)
    folder = rollout.candidate_dir(skill_dir, version)
    if not folder.is_dir():
        known = "" if state is None else ", ".join(state.versions)
        raise RevisionError(
            f"version {version} of {skill_dir.name} has no stored files"
            + (f" (versions: {known})" if known else "")
        )
    return folder_files(folder)


def diff_revisions(skill_dir: Path, old: str, new: str) -> tuple[list[FileDiff], bool]:
    """Per-file unified diffs from ``old`` to ``new``; and whether the text was cut."""
    if old.startswith("git:") != new.startswith("git:"):
        raise RevisionError("compare two versions, or two git: revisions, not one of each")
    if old.startswith("git:"):
        try:
            text = skill_history.diff(skill_dir, old[4:], new[4:])
        except ConfigError as exc:
            raise RevisionError(str(exc)) from None
        return _split_git_diff(text)
    state = rollout.read_rollout(skill_dir)
    a = version_files(skill_dir, state, old)
    b = version_files(skill_dir, state, new)
    files: list[FileDiff] = []
    budget = MAX_DIFF_CHARS
    truncated = False
    for path in sorted(set(a) | set(b)):
        before, after = a.get(path), b.get(path)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "modified"
        if _binary(before) or _binary(after):
            files.append(FileDiff(path=path, change=change, binary=True, diff=""))
            continue
        lines = difflib.unified_diff(
            _lines(before, path), _lines(after, path), f"a/{path}", f"b/{path}", n=3
        )
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        if not text:
            continue  # a SKILL.md whose frontmatter was only re-emitted: the same data
        if len(text) > budget:
            text, truncated = text[: max(budget, 0)], True
        budget -= len(text)
        files.append(FileDiff(path=path, change=change, diff=text))
    return files, truncated


def _binary(data: bytes | None) -> bool:
    return data is not None and (b"\0" in data[:8192] or len(data) > MAX_FILE_BYTES)


def _lines(data: bytes | None, path: str) -> list[str]:
    if data is None:
        return []
    text = data.decode("utf-8", "replace")
    if path == "SKILL.md":
        try:
            front, body = split_frontmatter(text)
        except ValueError:
            pass  # not parseable: compared as it is
        else:
            dumped = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1 << 20)
            text = f"---\n{dumped}---\n{body}"
    return text.splitlines(keepends=True)


_FILE_HEADER = re.compile(r"^--- a/(.+)\n\+\+\+ b/(.+)$", re.MULTILINE)


def _split_git_diff(text: str) -> tuple[list[FileDiff], bool]:
    truncated = len(text) > MAX_DIFF_CHARS
    text = text[:MAX_DIFF_CHARS]
    heads = list(_FILE_HEADER.finditer(text))
    files: list[FileDiff] = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        chunk = text[head.start() : end]
        change = (
            "added" if "\n@@ -0,0 " in chunk else "removed" if " +0,0 @@" in chunk else "modified"
        )
        files.append(FileDiff(path=head.group(2), change=change, diff=chunk))
    return files, truncated


def history(skill_dir: Path, limit: int = 50) -> list[HistoryEntry]:
    """The skill's commits, newest first (empty when it has no history)."""
    return [
        HistoryEntry(
            sha=e.sha,
            time=e.time,
            author=e.author[:200],
            message=e.message[:2000],
            hand_edit=e.hand_edit,
        )
        for e in skill_history.log(skill_dir, limit)
    ]
