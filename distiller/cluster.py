"""Clustering and routing: which atoms are one recurring procedure.

An atom's *signature* is the set of its successful commands, normalised
(variable arguments such as paths, numbers, hashes and quoted text become
placeholders; programs, subcommands, flags and plain-word arguments stay, so
``deploy --env staging`` and ``deploy --env production`` stay apart).
Atoms are grouped greedily by signature overlap (Jaccard), near-duplicate
groups merge, and a group becomes a skill only when it recurs: by default
at least 3 atoms across at least 2 sessions.

Noise is not the procedure: a plain word in the slot where other runs of
the same command line had a path (``eslint src`` beside ``eslint
src/pages``) is a placeholder too, and look-around commands (``git status``,
``ls``, ``pwd``...) run between a procedure's steps are left out of its
signature. A signature that recurs on its own seeds a group; a variant seen
less often joins the nearest seed, unless it is itself seen more than once
always with a command that seed never ran, or always without one the seed
always ran (``pytest`` then ``coverage report`` is not ``pytest`` alone;
``alembic downgrade`` is not ``alembic upgrade``).

What appears in most sessions is not a procedure: prompt lines present in
more than ``boilerplate_share`` of the sessions (shared templates, house
rules) are removed from intents before anything is grouped, and an atom
whose prompt was nothing else is not a task.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from skillscale.core.matching import tokenize
from skillscale.distiller.model import Atom

_VARIABLE = re.compile(
    r"""^(?:
        ['"].*['"]                      # quoted text
      | -?\d+(?:\.\d+)?[a-z%]*           # numbers, 10s, 5%
      | [0-9a-f]{7,40}                  # hashes
      | .*[/\\].* | .*\.[A-Za-z0-9]{1,5}  # paths and file names
      | \[REDACTED:[a-z_]+\].*
    )$""",
    re.X,
)


# Commands that only look around (state, listings, the folder): noise between
# a procedure's steps, not one of them.
LOOK_AROUND = ("git status", "git diff", "git log", "git branch", "ls", "pwd", "cat", "head",
               "tail", "wc", "which", "echo", "env", "date", "whoami", "tree")  # fmt: skip


def is_look_around(normalized: str) -> bool:
    """Whether a (normalised) command only looks around."""
    return any(normalized == p or normalized.startswith(p + " ") for p in LOOK_AROUND)


@dataclass(frozen=True)
class Config:
    """Clustering settings (the defaults are the issue's)."""

    min_occurrences: int = 3
    min_sessions: int = 2
    boilerplate_share: float = 0.5
    boilerplate_min_sessions: int = 5
    join: float = 0.5
    """Signature overlap at which an atom joins a group."""
    merge: float = 0.8
    """Overlap at which two groups are near-duplicates."""


def normalize_command(command: str) -> str:
    """A command with its variable arguments replaced by placeholders."""
    try:
        words = shlex.split(command, posix=True)
    except ValueError:
        words = command.split()
    out = []
    for w in words[:40]:
        if w.startswith("-") and "=" in w:
            flag, _, value = w.partition("=")
            out.append(f"{flag}=<v>" if _VARIABLE.match(value) else w)
        elif w.startswith("-") or not _VARIABLE.match(w):
            out.append(w)
        else:
            out.append("<v>")
    return " ".join(out)


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """|a & b| / |a | b| (0 for two empty sets)."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


@dataclass
class Group:
    """Atoms judged to be one procedure."""

    atoms: list[Atom] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def core(self) -> frozenset[str]:
        """Normalised commands present in at least half of the atoms."""
        n = len(self.atoms)
        return frozenset(c for c, k in self.counts.items() if 2 * k >= n)

    @property
    def always(self) -> frozenset[str]:
        """Normalised commands every atom of the group ran."""
        n = len(self.atoms)
        return frozenset(c for c, k in self.counts.items() if k == n)

    @property
    def sessions(self) -> set[str]:
        """Distinct sessions the atoms come from."""
        return {a.session for a in self.atoms}

    def add(self, atom: Atom, signature: frozenset[str]) -> None:
        """Take ``atom`` in."""
        self.atoms.append(atom)
        self.counts.update(signature)


@dataclass
class Corpus:
    """What is common to most sessions, computed over all atoms."""

    boilerplate_lines: set[str]
    sessions: int
    general: dict[str, str] = field(default_factory=dict)
    """Normalised command -> its more general form seen elsewhere (see :func:`generalize`)."""

    def intent(self, atom: Atom) -> str:
        """The atom's prompt without boilerplate lines."""
        kept = [
            ln for ln in atom.intent.splitlines() if _line_key(ln) not in self.boilerplate_lines
        ]
        return "\n".join(ln for ln in kept if ln.strip()).strip()

    def signature(self, atom: Atom) -> frozenset[str]:
        """The atom's normalised commands.

        Commands are kept even when most sessions run them: a user who runs
        the tests in every session has a procedure. What is dropped is an atom
        whose prompt is nothing but boilerplate (:func:`group_atoms`).
        """
        norm = [self.general.get(n, n) for n in (normalize_command(c) for c in atom.commands) if n]
        kept = [n for n in norm if not is_look_around(n)]
        return frozenset(kept or norm)


def _line_key(line: str) -> str:
    return " ".join(line.lower().split())


def generalize(commands: Iterable[str]) -> dict[str, str]:
    """For normalised commands that differ from another in one slot only,
    where the other has a placeholder: the general form (``pnpm exec eslint
    src`` -> ``pnpm exec eslint <v>`` when ``eslint src/pages`` was seen)."""
    buckets: dict[tuple[int, str], list[list[str]]] = {}
    for cmd in sorted(set(commands)):
        words = cmd.split()
        if words:
            buckets.setdefault((len(words), words[0]), []).append(words)
    out: dict[str, str] = {}
    for group in buckets.values():
        if len(group) > 200:  # a program with that many shapes: leave it be
            continue
        general = [w for w in group if "<v>" in w]
        for words in group:
            for other in general:
                diff = [i for i, (a, b) in enumerate(zip(words, other, strict=True)) if a != b]
                if (
                    len(diff) == 1
                    and other[diff[0]] == "<v>"
                    and not words[diff[0]].startswith("-")
                ):
                    out[" ".join(words)] = " ".join(other)
                    break
    return out


def corpus_of(atoms: Sequence[Atom], config: Config) -> Corpus:
    """Find the boilerplate (prompt lines present in most sessions) and the
    general forms of the commands (:func:`generalize`)."""
    line_sessions: dict[str, set[str]] = {}
    sessions = {a.session for a in atoms}
    for atom in atoms:
        for line in atom.intent.splitlines():
            key = _line_key(line)
            if key:
                line_sessions.setdefault(key, set()).add(atom.session)
    general = generalize(x for a in atoms for c in a.commands if (x := normalize_command(c)))
    n = len(sessions)
    if n < config.boilerplate_min_sessions:
        return Corpus(set(), n, general)
    limit = config.boilerplate_share * n
    return Corpus({k for k, s in line_sessions.items() if len(s) > limit}, n, general)


def intent_terms(text: str) -> list[str]:
    """Content words of an intent (the matcher's own tokenizer: stemmed, no stop words)."""
    return tokenize(text)


def group_atoms(atoms: Iterable[Atom], corpus: Corpus, config: Config) -> list[Group]:
    """Group by signature: seeds, variants, then near-duplicate merging.

    Atoms with the same signature form one variant. A variant that recurs
    on its own (``min_occurrences``) seeds a group. The other variants, most
    frequent first, join the seed (or earlier group) their signature overlaps
    most, at least ``join``; a variant seen more than once that always ran a
    command its best group never ran is a procedure of its own and stays apart.
    """
    variants: dict[frozenset[str], list[Atom]] = {}
    for atom in atoms:
        sig = corpus.signature(atom)
        # A prompt that is all boilerplate (house rules, a shared template) is
        # not a task: what follows it is the agent obeying the template.
        if not sig or not atom.success or not corpus.intent(atom):
            continue
        variants.setdefault(sig, []).append(atom)
    order = sorted(variants.items(), key=lambda kv: (-len(kv[1]), sorted(kv[0])))
    groups: list[Group] = []
    index: dict[str, list[int]] = {}

    def place(gi: int, sig: frozenset[str], members: list[Atom]) -> None:
        for atom in members:
            groups[gi].add(atom, sig)
        for c in sig:
            if gi not in index.setdefault(c, []):
                index[c].append(gi)

    seeds = [(sig, m) for sig, m in order if len(m) >= config.min_occurrences]
    rest = [(sig, m) for sig, m in order if len(m) < config.min_occurrences]
    for sig, members in seeds:
        groups.append(Group())
        place(len(groups) - 1, sig, members)
    for sig, members in rest:
        candidates = {g for c in sig for g in index.get(c, [])}
        best, best_score = None, 0.0
        for gi in sorted(candidates):
            score = jaccard(sig, groups[gi].core or frozenset(groups[gi].counts))
            if score > best_score:
                best, best_score = gi, score
        # Seen more than once, always with a command the group never ran, or
        # always without one every run of the group had: its own procedure.
        own = (
            best is not None
            and len(members) > 1
            and bool(sig - set(groups[best].counts) or groups[best].always - sig)
        )
        if best is None or best_score < config.join or own:
            groups.append(Group())
            best = len(groups) - 1
        place(best, sig, members)
    merged: list[Group] = []
    for g in sorted(groups, key=lambda g: -len(g.atoms)):
        twin = next((m for m in merged if jaccard(m.core, g.core) >= config.merge), None)
        if twin is None:
            merged.append(g)
        else:
            for a in g.atoms:
                twin.add(a, corpus.signature(a))
    return merged


def recurs(group: Group, config: Config) -> bool:
    """Whether ``group`` is frequent enough to become a skill."""
    return len(group.atoms) >= config.min_occurrences and len(group.sessions) >= config.min_sessions


@dataclass(frozen=True)
class KnownSkill:
    """A distilled skill, as routing sees it."""

    name: str
    signature: frozenset[str]
    terms: frozenset[str]
    atoms: frozenset[str]


def route(
    signature: frozenset[str], terms: Iterable[str], skills: Sequence[KnownSkill], join: float
) -> KnownSkill | None:
    """The skill an atom (or group) belongs to: best signature overlap, ties by intent words."""
    words = set(terms)
    tokens = _tokens(signature)
    best, best_key = None, (0.0, 0.0)
    for skill in skills:
        commands = jaccard(signature, skill.signature)
        said = jaccard(words, set(skill.terms))
        # The same request with a changed command line (a flag added after a
        # new failure) is the same procedure, improved: near-identical words
        # and most command words shared. Confusable pairs (staging/production)
        # differ in their words and stay apart.
        if commands < join and said >= 0.8 and jaccard(tokens, _tokens(skill.signature)) >= 0.5:
            commands = join
        key = (commands, said)
        if key > best_key:
            best, best_key = skill, key
    if best is None or best_key[0] < join:
        return None
    return best


def _tokens(signature: Iterable[str]) -> frozenset[str]:
    return frozenset(w for c in signature for w in c.split())
