"""Keyword matching: BM25F over a skill's name, keywords, description and body.

Written here rather than taken from ``bm25s``: a server's catalogue is a few
to a few hundred skills, where what decides correctness is *field weighting*
(a word in the name or description means far more than one in the body) and
an absolute score threshold that behaves the same with 1 skill as with 100.
``bm25s`` scores one flat field, is built for millions of documents, and its
import pulls in scipy; the whole scorer below is a few dozen lines.

Two adjustments make the threshold meaningful on tiny catalogues:

* IDF is computed as if the catalogue had ``VIRTUAL_DOCS`` extra documents
  that contain none of the words, so a word unique to the only skill still
  counts, while a word every skill shares counts little.
* A coordination factor scales the score by the share of the instruction's
  words the skill matches, so one shared word cannot carry a long request.
* In ``"summarize: <long text>"`` the instruction before the first colon or
  line break is what names the task; words from the payload after it count
  at ``PAYLOAD_WEIGHT`` and only the first ``PAYLOAD_CHARS`` are read.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from skillscale.skill_format import Skill

FIELD_WEIGHTS = {"name": 3.0, "keywords": 2.5, "description": 2.0, "body": 0.5}
VIRTUAL_DOCS = 4
PAYLOAD_WEIGHT = 0.3
PAYLOAD_CHARS = 4000
HEAD_CHARS = 200
NAME_MENTION_BONUS = 2.5
DEFAULT_THRESHOLD = 1.5
K1 = 1.2
B = 0.75

_WORD_RE = re.compile(r"[a-z0-9]+")
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
    """.split()
)


@lru_cache(maxsize=65536)
def normalize(word: str) -> str:
    """Stem a lowercase word and fold spelling variants.

    Snowball leaves ``summary``/``summarize`` as ``summari``/``summar`` and
    ``analysis``/``analyze`` as ``analysi``/``analyz``; folding ``z`` to ``s``
    and dropping a final ``i``/``y``/``is`` brings each family together.
    """
    stem: str = _STEMMER.stemWord(word)
    stem = stem.replace("z", "s")
    if len(stem) > 6 and stem.endswith("is"):
        stem = stem[:-2]
    elif len(stem) > 4 and stem[-1] in "iy":
        stem = stem[:-1]
    return stem


def tokenize(text: str) -> list[str]:
    """Lowercase words minus stopwords and bare numbers, normalised."""
    return [
        normalize(w)
        for w in _WORD_RE.findall(text.lower())
        if w not in STOPWORDS and not w.isdigit() and len(w) > 1
    ]


def query_terms(text: str) -> dict[str, float]:
    """Weighted unique terms of a task text (instruction head vs payload)."""
    head_end = len(text)
    for sep in (":", "\n"):
        pos = text.find(sep, 0, HEAD_CHARS)
        if pos != -1:
            head_end = min(head_end, pos)
    head_end = min(head_end, HEAD_CHARS * 2)
    head, tail = text[:head_end], text[head_end : head_end + PAYLOAD_CHARS]
    if not tokenize(head):  # e.g. text starting with ":" or a blank line
        head, tail = text[: HEAD_CHARS * 2], text[HEAD_CHARS * 2 : PAYLOAD_CHARS]
    weights: dict[str, float] = {}
    for term in tokenize(tail):
        weights[term] = PAYLOAD_WEIGHT
    for term in tokenize(head):
        weights[term] = 1.0
    return weights


@dataclass(frozen=True)
class Candidate:
    """A skill and its score for one task text."""

    skill: Skill
    score: float


@dataclass(frozen=True)
class MatchResult:
    """The best candidate if it clears the threshold, plus the runners-up."""

    best: Candidate | None
    ranked: list[Candidate]
    threshold: float


class KeywordMatcher:
    """Ranks skills for a task text; immutable once built."""

    def __init__(self, skills: Iterable[Skill], threshold: float = DEFAULT_THRESHOLD) -> None:
        self.skills: list[Skill] = list(skills)
        self.threshold = threshold
        self._fields: list[dict[str, Counter[str]]] = []
        self._lengths: list[dict[str, int]] = []
        df: Counter[str] = Counter()
        for skill in self.skills:
            fields = {
                "name": Counter(tokenize(skill.name.replace("-", " "))),
                "keywords": Counter(tokenize(skill.keywords)),
                "description": Counter(tokenize(skill.description)),
                "body": Counter(tokenize(skill.body)),
            }
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
        terms = query_terms(text)
        lowered = text[: HEAD_CHARS * 2].lower()
        out: list[Candidate] = []
        for i, skill in enumerate(self.skills):
            score = self._score(i, terms)
            if self._name_patterns[i].search(lowered):
                score += NAME_MENTION_BONUS
            if score > 0:
                out.append(Candidate(skill, round(score, 4)))
        out.sort(key=lambda c: (-c.score, c.skill.name))
        return out

    def match(self, text: str) -> MatchResult:
        """The best skill for ``text`` if its score reaches the threshold."""
        ranked = self.rank(text)
        best = ranked[0] if ranked and ranked[0].score >= self.threshold else None
        return MatchResult(best, ranked, self.threshold)

    def _score(self, index: int, terms: dict[str, float]) -> float:
        fields, lengths = self._fields[index], self._lengths[index]
        score = 0.0
        head_total = head_matched = 0
        for term, q_weight in terms.items():
            is_head = q_weight == 1.0
            head_total += is_head
            idf = self._idf.get(term)
            if idf is None:
                continue
            tf = 0.0
            for field, weight in FIELD_WEIGHTS.items():
                count = fields[field].get(term)
                if count:
                    norm = 1 - B + B * lengths[field] / self._avg[field]
                    tf += weight * count / norm
            if tf:
                head_matched += is_head
                score += q_weight * idf * tf * (K1 + 1) / (tf + K1)
        # Lucene's classic "coord" factor: a skill that explains one word of a
        # five-word instruction is a weaker match than one that explains all.
        return score * (head_matched / head_total if head_total else 1.0)


def closest(result: MatchResult, limit: int = 3) -> Sequence[Candidate]:
    """The top candidates, for ``no_match`` replies."""
    return result.ranked[:limit]
