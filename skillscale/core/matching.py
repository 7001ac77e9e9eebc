"""Keyword matching: BM25F over a skill's name, ``metadata.keywords`` and description.

Written here rather than taken from ``bm25s``: a server's catalogue is a few
to a few hundred skills, where what decides correctness is *field weighting*
(a word in the name or keywords means more than one in the description) and
an absolute decision rule that behaves the same with 1 skill as with 100.
``bm25s`` scores one flat field, is built for millions of documents, and its
import pulls in scipy; the scorer below is a few dozen lines. The body of a
SKILL.md is not read: it explains how a skill works ("syntax tree", "JSON",
"exit status"), and matching on it picked incidental words; the catalogue
entry (name, description, keywords) is what says when to use a skill.

How a task text is read:

* :func:`skillscale.skillkit.split_request` separates the request from the
  data it carries (code, a table, or prose, found by the same parsers the
  skills use). Only the request's words are scored; the data adds one or two
  *shape* terms (``python code``, ``csv table``, ``text prose``) at
  ``SHAPE_WEIGHT``, so ``"<a table> what stands out?"`` reaches the skill
  whose catalogue entry speaks of tables. Quoted words (``'age'``,
  ```_helper```) are the caller's names, not vocabulary, and are dropped.
* Words are lowercased, accents folded, stop words and generic request words
  ("please", "tell", "find", "analyse") dropped, then stemmed with Snowball,
  with British and American spellings folded together. Adjacent word pairs
  also match keyword phrases ("key points", "decision points").

How it decides:

* Each skill gets a BM25F score for the request's terms. IDF is computed as
  if the catalogue had ``VIRTUAL_DOCS`` extra documents containing none of
  the words, so a word unique to the only skill still counts. Skills are
  ranked by this score.
* With no foreign word in the request, the best skill is taken when its
  score reaches the threshold. A request word the catalogue does not state
  anywhere ("flight", "convert", "deploy") is evidence that the task is
  about something else: it costs ``UNKNOWN_PENALTY`` (less for words after
  the first, which are more often the caller's own nouns, and less for a
  skill that says little about itself). Against that cost, words that are
  the skill's *task words* (its keywords) count in full and the others
  ("csv", "document", "function": what it works on) count at
  ``OBJECT_SHARE``. So "find outliers" and "tl;dr" are taken on one word,
  while "convert this CSV to JSON" is refused, on any topic.
* Not every foreign word weighs the same. A request word that also occurs in
  the data the task carries ("which *cities* ..." over a table with a ``city``
  column) is the caller's own name and costs nothing. One after a preposition
  ("the typical age *of the customers*") is what the task is done to and
  costs ``PREPOSITION_SHARE``. The request's first word, when it is an unknown
  content word, is usually the task itself ("*translate* this summary",
  "*merge* the branches") and costs ``LEADING_SHARE``.

The constants were chosen on the tuning split of the labelled benchmark
(``python bench/matching.py``; batch 4 of it is tuning data only), in a flat
region of a small grid, without looking at the held-out tasks' answers.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import snowballstemmer

from skillscale.core.skill_format import Skill
from skillscale.skillkit import split_request

FIELD_WEIGHTS = {"name": 3.0, "keywords": 2.5, "description": 2.0}
OBJECT_SHARE = 0.5
"""Share of a matched word's score that counts against unknown words when the word
is not one of the skill's task words (``metadata.keywords``): "csv" in "convert this
CSV to JSON" says what the task is about, not that the skill does it."""
VIRTUAL_DOCS = 4
SHAPE_WEIGHT = 0.5
"""Query weight of each shape term the data adds (a request word weighs 1)."""
PHRASE_WEIGHT = 1.0
"""Query weight of a pair of adjacent request words (matches keyword phrases)."""
SHAPE_TERMS = {"python": ("python", "code"), "table": ("csv", "table"), "text": ("text", "prose")}
UNKNOWN_PENALTY = 1.0
"""Score taken off for each request word the catalogue does not know, for a skill
whose name, keywords and description hold ``FULL_VOCABULARY`` terms or more."""
ARGUMENT_SHARE = 0.75
"""Share of the penalty for unknown words after the request's first word ("summarise
the *customer feedback*"): the first word is usually the verb, the task itself."""
FULL_VOCABULARY = 60
"""Vocabulary size at which an unknown word costs the full penalty. A skill that
says little about itself (a one-line description) cannot be expected to know
the words of every task it fits, so an unknown word costs it proportionally less."""
DATA_CHARS = 4000
"""How much of the data is read for the caller's own names."""
PREPOSITION_SHARE = 0.5
"""Share of the penalty for an unknown word after a preposition (see ``Query``)."""
LEADING_SHARE = 1.5
"""Share of the penalty for an unknown first word of the request (see ``Query``)."""
PREPOSITIONS = "of in for from with into to about on at by"
HEAD_CHARS = 200
INSTRUCTION_CHARS = 600
"""A request longer than this is cut: a long text without data is mostly data."""
NAME_MENTION_BONUS = 2.5
DEFAULT_THRESHOLD = 0.75
K1 = 1.2
B = 0.75

_WORD_RE = re.compile(r"[a-z0-9]+")
_QUOTED_RE = re.compile(r"`[^`\n]{1,60}`|(?<![\w])'[^'\n]{1,40}'(?![\w])|\"[^\"\n]{1,40}\"")
_PREPOSITION_RE = re.compile(rf"\b(?:{'|'.join(PREPOSITIONS.split())})\b")
_FILLERS = frozenset(
    "please pls plz kindly can could would will you hey hi ok okay so now just".split()
)
_TLDR_RE = re.compile(r"\btl\s*;\s*dr\b")
_STEMMER = snowballstemmer.stemmer("english")

STOPWORDS = frozenset(
    """
    a about above after again all also am an and any are as at be been before being
    below between both but by can could did do does doing done down during each either
    etc few for from further get gets give given go had has have having he her here hers
    him his how i if in into is it its itself just let lets like make me mine more most
    much must my need needs no nor not now of off on once one only or other our ours out
    over own per please same shall she should show so some such tell than thank thanks that
    the their them then there these they this those through to too under until up us use
    using very via want was way we were what when where which while who whom why will with
    would yes yet you your yours
    pls plz kindly cheers hi hey ok okay quick quickly little bit really actually maybe
    whole entire every ever whether something anything everything thing things stuff lot
    lots sure able know see say says said got going gonna wanna let us
    isn aren doesn don didn won wouldn couldn shouldn haven hasn wasn weren ain ll ve re
    following attached provided pasted included enclosed given
    find finding check checking look looking help analyse analyze analysing analyzing
    analysis examine inspect review assess evaluate audit scan investigate study run
    identify detect spot locate point list pull tell show give provide
    take takes many file files part parts piece snippet content contents input
    without within across against among toward towards around upon onto
    two three four five six seven eight nine ten
    basically essentially generally overall piece few several start looks seems flag
    """.split()
)
"""Words that say nothing about which skill is meant: grammar, politeness, and
generic request verbs that fit every skill equally ("find", "check", "analyse")."""


@lru_cache(maxsize=65536)
def normalize(word: str) -> str:
    """Stem a lowercase word and fold British/American spelling variants.

    Snowball leaves ``summary``/``summarize`` as ``summari``/``summar`` and
    ``analysis``/``analyze`` as ``analysi``/``analyz``; folding ``z`` to ``s``
    and dropping a final ``i``/``y``/``is`` brings each family together.
    ``colour``/``color``, ``programme``/``program``, ``centre``/``center``,
    ``catalogue``/``catalog`` and ``distil``/``distill`` are folded before or
    after stemming.
    """
    if len(word) > 5 and word.endswith("our"):
        word = word[:-3] + "or"
    elif (len(word) > 6 and word.endswith("mme")) or (len(word) > 5 and word.endswith("ogue")):
        word = word[:-2]
    elif len(word) > 4 and word.endswith("tre"):
        word = word[:-2] + "er"
    stem: str = _STEMMER.stemWord(word)
    stem = stem.replace("z", "s")
    if len(stem) > 6 and stem.endswith("is"):
        stem = stem[:-2]
    elif len(stem) > 4 and stem[-1] in "iy":
        stem = stem[:-1]
    if len(stem) > 4 and stem.endswith("ll"):
        stem = stem[:-1]
    return stem


def _fold(text: str) -> str:
    # "précis" -> "precis", "tl;dr" -> "tldr": one word, as users type it both ways.
    text = text.lower()
    if not text.isascii():  # the per-character pass is most of a match's time on long data
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    return _TLDR_RE.sub("tldr", text)


def words(text: str) -> list[tuple[str, str]]:
    """(surface word, normalised term) pairs of ``text``, minus stop words and numbers."""
    return [
        (w, normalize(w))
        for w in _WORD_RE.findall(_fold(text))
        if w not in STOPWORDS and not w.isdigit() and len(w) > 1
    ]


def tokenize(text: str) -> list[str]:
    """Lowercase words minus stopwords and bare numbers, normalised."""
    return [term for _, term in words(text)]


def keyword_terms(keywords: str) -> tuple[list[str], set[str]]:
    """Index terms of ``metadata.keywords`` and the words it makes known.

    Comma-separated entries (``"key points, gist, reading time"``) may be
    phrases: a phrase is indexed as its word pairs (``"key point"``), so
    "reading time" matches a request for the reading time and not every
    request that says "time". Its single words still count as known. An
    entry of one word, or a keywords string without commas, is single words.
    """
    entries = keywords.split(",") if "," in keywords else keywords.split()
    terms: list[str] = []
    known: set[str] = set()
    for entry in entries:
        tokens = tokenize(entry)
        known.update(tokens)
        if len(tokens) == 1:
            terms.append(tokens[0])
        terms.extend(f"{a} {b}" for a, b in pairwise(tokens))
    return terms, known


@dataclass(frozen=True)
class Query:
    """How a task text is read: weighted terms, their surface words, the data's shape."""

    terms: dict[str, float]
    surface: dict[str, str]
    words: tuple[str, ...]
    """The request's single-word terms: the ones that can be unknown to a catalogue."""
    instruction: str
    shape: str | None
    after_preposition: frozenset[str] = frozenset()
    """Request terms that follow a preposition ("the typical age *of the customers*",
    "this memo *into French*"): the things a task is done to or with, which a
    catalogue cannot be expected to name, so unknown ones cost ``PREPOSITION_SHARE``."""
    leading: str | None = None
    """The request's first word when it is a content word ("*translate* this memo",
    "*merge* the branches"): in an imperative that is the task itself, so when a
    catalogue does not know it, it costs ``LEADING_SHARE`` of the penalty."""
    data_terms: frozenset[str] = frozenset()
    """Terms of the data the task carries: a request word found there ("cities" with
    a ``city`` column, ``walk`` with ``def walk``) is the caller's own name, not a
    word of some other task, so it is not held against a skill as unknown."""


def read_query(text: str) -> Query:
    """Split ``text`` into request and data and weigh the request's terms."""
    parts = split_request(text)
    instruction = _QUOTED_RE.sub(" ", parts.instruction[:INSTRUCTION_CHARS])
    terms: dict[str, float] = {}
    surface: dict[str, str] = {}
    pairs = words(instruction)
    for word, term in pairs:
        terms[term] = 1.0
        surface.setdefault(term, word)
    for (w1, t1), (w2, t2) in pairwise(pairs):
        # Word pairs meet keyword phrases ("key points", "decision points").
        terms.setdefault(f"{t1} {t2}", PHRASE_WEIGHT)
        surface.setdefault(f"{t1} {t2}", f"{w1} {w2}")
    if parts.kind is not None:
        for word in SHAPE_TERMS[parts.kind]:
            term = normalize(word)
            if term not in terms:
                terms[term] = SHAPE_WEIGHT
                surface[term] = f"[{parts.kind}]"
    singles = tuple(dict.fromkeys(term for _, term in pairs))
    tail = _PREPOSITION_RE.split(_fold(instruction), maxsplit=1)
    after = frozenset(tokenize(tail[1])) if len(tail) > 1 else frozenset()
    raw = [w for w in _WORD_RE.findall(_fold(instruction)) if w not in _FILLERS]
    leading = normalize(raw[0]) if raw and raw[0] not in STOPWORDS and len(raw[0]) > 1 else None
    data_terms = frozenset(
        normalize(w) for w in set(_WORD_RE.findall(_fold(parts.data[:DATA_CHARS]))) if len(w) > 1
    )
    return Query(terms, surface, singles, parts.instruction, parts.kind, after, leading, data_terms)


def query_terms(text: str) -> dict[str, float]:
    """Weighted unique terms of a task text (request words 1.0, data shape less)."""
    return read_query(text).terms


@dataclass(frozen=True)
class Candidate:
    """A skill and its score for one task text, with the request words it matched."""

    skill: Skill
    score: float
    terms: tuple[str, ...] = ()
    evidence: float = 0.0
    """What weighs against unknown words: task-word score in full, other words at
    ``OBJECT_SHARE``."""


@dataclass(frozen=True)
class MatchResult:
    """The best candidate if it clears the threshold, plus the runners-up and why."""

    best: Candidate | None
    ranked: list[Candidate]
    threshold: float
    unknown: tuple[str, ...] = ()
    """Request words no skill of the catalogue states (name, keywords, description)."""
    penalty: float = 0.0
    """What the unknown words cost the best candidate."""
    shape: str | None = None
    """The kind of data found in the task text (``python``, ``table``, ``text``)."""

    def explain(self, limit: int = 3) -> dict[str, object]:
        """A JSON-ready account of the decision, for ``_trace``."""
        return {
            "threshold": self.threshold,
            "penalty": round(self.penalty, 4),
            "unknown_terms": list(self.unknown),
            "data_shape": self.shape,
            "chosen": self.best.skill.name if self.best else None,
            "candidates": [
                {
                    "skill": c.skill.name,
                    "score": c.score,
                    "evidence": c.evidence,
                    "terms": list(c.terms),
                }
                for c in self.ranked[:limit]
            ],
        }


class KeywordMatcher:
    """Ranks skills for a task text; immutable once built."""

    def __init__(self, skills: Iterable[Skill], threshold: float = DEFAULT_THRESHOLD) -> None:
        self.skills: list[Skill] = list(skills)
        self.threshold = threshold
        self._fields: list[dict[str, Counter[str]]] = []
        self._lengths: list[dict[str, int]] = []
        df: Counter[str] = Counter()
        self._vocabulary: set[str] = set()
        """Terms the skills state about themselves (name, keywords, description)."""
        self._coverage: list[float] = []
        self._task: list[set[str]] = []
        for skill in self.skills:
            keywords, known = keyword_terms(skill.keywords)
            fields = {
                "name": Counter(tokenize(skill.name.replace("-", " "))),
                "keywords": Counter(keywords),
                "description": Counter(tokenize(skill.description)),
            }
            # Task words: what a skill lists as keywords, or, without keywords,
            # everything it states about itself.
            self._task.append(
                set(fields["keywords"])
                if fields["keywords"]
                else set(fields["name"]) | set(fields["description"])
            )
            stated = set(fields["name"]) | known | set(fields["description"])
            self._vocabulary |= stated
            self._coverage.append(min(1.0, len(stated) / FULL_VOCABULARY))
            self._fields.append(fields)
            self._lengths.append({f: sum(c.values()) for f, c in fields.items()})
            df.update({t for c in fields.values() for t in c})
        n = len(self.skills)
        self._avg = {
            f: max(1.0, sum(lens[f] for lens in self._lengths) / n) if n else 1.0
            for f in FIELD_WEIGHTS
        }
        total = n + VIRTUAL_DOCS
        self._idf = {t: math.log(1 + (total - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        self._name_patterns = [
            re.compile(rf"(?<![a-z0-9-]){re.escape(s.name)}(?![a-z0-9-])") for s in self.skills
        ]

    def rank(self, text: str) -> list[Candidate]:
        """Every skill with a positive score, best first (ties by name)."""
        return self._rank(text, read_query(text))

    def match(self, text: str) -> MatchResult:
        """The best skill for ``text`` if its score, less the unknown-word cost, clears the bar."""
        query = read_query(text)
        ranked = self._rank(text, query)
        foreign = [
            (i, t)
            for i, t in enumerate(query.words)
            if t not in self._vocabulary and t not in query.data_terms
        ]
        unknown = tuple(query.surface[t] for _, t in foreign)
        best: Candidate | None = None
        penalty = 0.0
        if ranked:
            index = self.skills.index(ranked[0].skill)
            weight = sum(
                LEADING_SHARE
                if t == query.leading
                else 1.0
                if i == 0
                else PREPOSITION_SHARE
                if t in query.after_preposition
                else ARGUMENT_SHARE
                for i, t in foreign
            )
            penalty = UNKNOWN_PENALTY * self._coverage[index] * weight
            # Nothing foreign in the request: any word the skill states is enough.
            # Otherwise its task words must outweigh the foreign ones.
            evidence = ranked[0].score if not unknown else ranked[0].evidence
            if evidence - penalty >= self.threshold:
                best = ranked[0]
        return MatchResult(best, ranked, self.threshold, unknown, penalty, query.shape)

    def _rank(self, text: str, query: Query) -> list[Candidate]:
        lowered = text[: HEAD_CHARS * 2].lower()
        out: list[Candidate] = []
        for i, skill in enumerate(self.skills):
            score, task, matched = self._score(i, query.terms)
            if self._name_patterns[i].search(lowered):
                score += NAME_MENTION_BONUS
                task += NAME_MENTION_BONUS
                matched.append(skill.name)
            if score > 0:
                terms = tuple(dict.fromkeys(query.surface.get(t, t) for t in matched))
                evidence = task + OBJECT_SHARE * (score - task)
                out.append(Candidate(skill, round(score, 4), terms, round(evidence, 4)))
        out.sort(key=lambda c: (-c.score, c.skill.name))
        return out

    def _score(self, index: int, terms: dict[str, float]) -> tuple[float, float, list[str]]:
        """BM25F score, the part of it from task words, and the terms matched."""
        fields, lengths = self._fields[index], self._lengths[index]
        score = task = 0.0
        matched: list[str] = []
        for term, q_weight in terms.items():
            idf = self._idf.get(term)
            if idf is None:
                continue
            tf = 0.0
            for name, weight in FIELD_WEIGHTS.items():
                count = fields[name].get(term)
                if count:
                    norm = 1 - B + B * lengths[name] / self._avg[name]
                    tf += weight * count / norm
            if tf:
                matched.append(term)
                gain = q_weight * idf * tf * (K1 + 1) / (tf + K1)
                score += gain
                if term in self._task[index]:
                    task += gain
        return score, task, matched


def closest(result: MatchResult, limit: int = 3) -> Sequence[Candidate]:
    """The top candidates, for ``no_match`` replies."""
    return result.ranked[:limit]
