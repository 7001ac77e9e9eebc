"""Per-skill git history, kept with dulwich (no git binary needed).

Each skill folder is its own repository (``<skill>/.git``). Every change the
distiller makes is a commit whose message carries its provenance; a hand
edit (the working tree differs from ``HEAD``) is committed as the user's own
change, and the skill is then marked hand-edited: the distiller never
rewrites it automatically again. ``.git`` and ``.skillscale`` (rollout
state, candidates) are not part of the history.

``skillscale skills log|diff|rollback NAME`` work on this history.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from skillscale.core.errors import ConfigError

DISTILLER = b"skillscale-distill <distill@skillscale.invalid>"
USER = b"user <user@skillscale.invalid>"
HAND_EDIT_TRAILER = "Skillscale-Change: hand-edit"
IGNORED = (".git", ".skillscale", "__pycache__")
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One commit of a skill's history."""

    sha: str
    time: float
    author: str
    message: str

    @property
    def hand_edit(self) -> bool:
        """Whether this commit recorded the user's own edit."""
        return HAND_EDIT_TRAILER in self.message


def _files(skill_dir: Path) -> dict[str, bytes]:
    """The working tree's files (relative POSIX path -> content), bounded."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(skill_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED)
        for name in sorted(filenames):
            if name.endswith(".skillscale-tmp"):
                continue  # a write cut short (see _write_atomically), not the skill's
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                continue
            out[path.relative_to(skill_dir).as_posix()] = path.read_bytes()
    return out


def _open(skill_dir: Path, *, create: bool) -> Repo | None:
    try:
        return Repo(str(skill_dir))
    except NotGitRepository:
        if not create:
            return None
        return Repo.init(str(skill_dir))


def _tree_files(repo: Repo, tree_id: bytes, prefix: str = "") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    tree = repo[tree_id]
    assert isinstance(tree, Tree)
    for item in tree.items():
        name = prefix + item.path.decode()
        obj = repo[item.sha]
        if isinstance(obj, Tree):
            out.update(_tree_files(repo, item.sha, name + "/"))
        elif isinstance(obj, Blob):
            out[name] = obj.data
    return out


def _head(repo: Repo) -> Commit | None:
    try:
        commit = repo[repo.head()]
    except KeyError:
        return None
    return commit if isinstance(commit, Commit) else None


def head_files(skill_dir: Path) -> dict[str, bytes] | None:
    """The files of ``HEAD``, or None when the skill has no history yet."""
    repo = _open(skill_dir, create=False)
    if repo is None:
        return None
    with repo:
        head = _head(repo)
        return None if head is None else _tree_files(repo, head.tree)


def has_uncommitted_edit(skill_dir: Path) -> bool:
    """The working tree differs from ``HEAD`` (someone edited the skill)."""
    committed = head_files(skill_dir)
    return committed is not None and committed != _files(skill_dir)


def commit(skill_dir: Path, message: str, *, author: bytes = DISTILLER) -> str | None:
    """Commit the working tree as it is; the new sha, or None when nothing changed."""
    repo = _open(skill_dir, create=True)
    assert repo is not None
    with repo:
        head = _head(repo)
        current = _files(skill_dir)
        if head is not None and _tree_files(repo, head.tree) == current:
            return None
        worktree = repo.get_worktree()
        index = repo.open_index()
        tracked = {p.decode() for p in index}
        paths = sorted(set(current) | tracked)
        if paths:
            worktree.stage(paths)
        now = time.time()
        sha = worktree.commit(
            message=message.encode(), committer=DISTILLER, author=author,
            commit_timestamp=now, author_timestamp=now, commit_timezone=0, author_timezone=0,
        )  # fmt: skip
        return sha.decode()


def record_hand_edit(skill_dir: Path) -> str | None:
    """Commit an uncommitted edit as the user's change; its sha, or None if none."""
    if not has_uncommitted_edit(skill_dir):
        return None
    return commit(
        skill_dir,
        f"Hand edit of {skill_dir.name}, recorded by the distiller\n\n{HAND_EDIT_TRAILER}\n",
        author=USER,
    )


def log(skill_dir: Path, limit: int = 100) -> list[Entry]:
    """The history, newest first."""
    repo = _open(skill_dir, create=False)
    if repo is None:
        return []
    with repo:
        if _head(repo) is None:
            return []
        out = []
        for walk in repo.get_walker(max_entries=limit):
            c = walk.commit
            out.append(
                Entry(c.id.decode(), float(c.commit_time), c.author.decode(errors="replace"),
                      c.message.decode(errors="replace"))
            )  # fmt: skip
        return out


def is_hand_edited(skill_dir: Path) -> bool:
    """The user edited this skill (now, or in a recorded commit): never rewrite it."""
    return has_uncommitted_edit(skill_dir) or any(e.hand_edit for e in log(skill_dir))


def _resolve(repo: Repo, rev: str) -> Commit:
    head = _head(repo)
    if head is None:
        raise ConfigError("the skill has no history yet")
    if rev in ("HEAD", ""):
        return head
    if rev.startswith("HEAD~") and rev[5:].isdigit():
        entries = list(repo.get_walker(max_entries=int(rev[5:]) + 1))
        if len(entries) <= int(rev[5:]):
            raise ConfigError(f"{rev}: the history has only {len(entries)} commits")
        return entries[-1].commit
    matches = [w.commit for w in repo.get_walker() if w.commit.id.decode().startswith(rev)]
    if len(matches) != 1:
        raise ConfigError(
            f"{rev!r} names {'no' if not matches else 'more than one'} commit of this skill "
            "(give a sha prefix from `skillscale skills log NAME`, or HEAD~N)"
        )
    return matches[0]


def diff(skill_dir: Path, old: str = "HEAD~1", new: str | None = None) -> str:
    """Unified diff between two commits (``new`` None: the working tree)."""
    repo = _open(skill_dir, create=False)
    if repo is None:
        raise ConfigError(f"{skill_dir} has no history")
    with repo:
        a = _tree_files(repo, _resolve(repo, old).tree)
        b = _files(skill_dir) if new is None else _tree_files(repo, _resolve(repo, new).tree)
    lines: list[str] = []
    for path in sorted(set(a) | set(b)):
        before = a.get(path, b"").decode(errors="replace").splitlines(keepends=True)
        after = b.get(path, b"").decode(errors="replace").splitlines(keepends=True)
        lines += difflib.unified_diff(before, after, f"a/{path}", f"b/{path}")
    return "".join(lines)


def _write_atomically(dest: Path, data: bytes) -> None:
    """Write beside ``dest`` and rename over it: a skill running meanwhile reads
    the old file or the new one, never a truncated one (an empty reply, "ok")."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.skillscale-tmp")
    tmp.write_bytes(data)
    with contextlib.suppress(FileNotFoundError):
        os.chmod(tmp, stat.S_IMODE(dest.stat().st_mode))  # the history keeps no modes
    os.replace(tmp, dest)


def rollback(skill_dir: Path, rev: str = "HEAD~1") -> str:
    """Restore the files of ``rev`` as a new commit (history is kept); its sha.

    An uncommitted hand edit is committed first, so a rollback never loses it.
    """
    record_hand_edit(skill_dir)
    repo = _open(skill_dir, create=False)
    if repo is None:
        raise ConfigError(f"{skill_dir} has no history")
    with repo:
        target = _resolve(repo, rev)
        files = _tree_files(repo, target.tree)
        short = target.id.decode()[:10]
    for path in _files(skill_dir):
        if path not in files:
            (skill_dir / path).unlink()
    # SKILL.md last: servers reload on its change, and by then scripts are new.
    for path in sorted(files, key=lambda p: p == "SKILL.md"):
        _write_atomically(skill_dir / path, files[path])
    sha = commit(
        skill_dir, f"Rollback of {skill_dir.name} to {short}\n\nSkillscale-Rollback: {short}\n"
    )
    return sha or target.id.decode()
