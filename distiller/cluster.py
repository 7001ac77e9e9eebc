"""Clustering and routing: which atoms are one recurring procedure.

An atom's *signature* is the set of its successful commands, normalised
(variable arguments such as paths, numbers, hashes and quoted text become
placeholders; programs, subcommands, flags and plain-word arguments stay, so
``deploy --env staging`` and ``deploy --env production`` stay apart).
Atoms are grouped greedily by signature overlap (Jaccard), near-duplicate
groups merge, and a group becomes a skill only when it recurs: by default
at least 3 atoms across at least 2 sessions.

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
        return frozenset(n for n in (normalize_command(c) for c in atom.commands) if n)


def _line_key(line: str) -> str:
    return " ".join(line.lower().split())


def corpus_of(atoms: Sequence[Atom], config: Config) -> Corpus:
    """Find the boilerplate: prompt lines present in most sessions."""
    line_sessions: dict[str, set[str]] = {}
    sessions = {a.session for a in atoms}
    for atom in atoms:
        for line in atom.intent.splitlines():
            key = _line_key(line)
            if key:
                line_sessions.setdefault(key, set()).add(atom.session)
    n = len(sessions)
    if n < config.boilerplate_min_sessions:
        return Corpus(set(), n)
    limit = config.boilerplate_share * n
    return Corpus({k for k, s in line_sessions.items() if len(s) > limit}, n)


def intent_terms(text: str) -> list[str]:
    """Content words of an intent (the matcher's own tokenizer: stemmed, no stop words)."""
    return tokenize(text)


def group_atoms(atoms: Iterable[Atom], corpus: Corpus, config: Config) -> list[Group]:
    """Greedy grouping by signature overlap, then near-duplicate merging."""
    groups: list[Group] = []
    index: dict[str, list[int]] = {}
    for atom in atoms:
        sig = corpus.signature(atom)
        # A prompt that is all boilerplate (house rules, a shared template) is
        # not a task: what follows it is the agent obeying the template.
        if not sig or not atom.success or not corpus.intent(atom):
            continue
        candidates = {g for c in sig for g in index.get(c, [])}
        best, best_score = None, 0.0
        for gi in sorted(candidates):
            score = jaccard(sig, groups[gi].core or frozenset(groups[gi].counts))
            if score > best_score:
                best, best_score = gi, score
        if best is None or best_score < config.join:
            groups.append(Group())
            best = len(groups) - 1
        groups[best].add(atom, sig)
        for c in sig:
            if best not in index.setdefault(c, []):
                index[c].append(best)
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
