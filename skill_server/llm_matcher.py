"""LLM matching: the model picks a skill by exact name, keywords catch every failure.

The model sees the catalogue (name and description of each skill) and must
answer with one exact skill name or ``none``. An answer that names exactly one
catalogue skill (extra words around it are tolerated) is taken; ``none`` is a
considered ``no_match``. Anything else (an unknown name, garbage, a timeout,
a rate limit, an HTTP error) falls back to keyword matching, and the reply's
``_trace`` says so. Identical task texts are answered from a bounded cache
for a bounded time.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

from skillscale.core.llm import LLMClient, LLMError
from skillscale.core.matching import KeywordMatcher, MatchResult
from skillscale.core.skill_format import Skill

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You route a user's task to exactly one skill. Answer with the exact name of the "
    "one skill that fits best, or with the single word none if no skill fits. "
    "Answer with nothing else."
)
TASK_CHARS = 2000


@dataclass(frozen=True)
class LLMDecision:
    """What the matcher decided and how."""

    skill: Skill | None
    mode: str
    """``llm``, ``llm-cache`` or ``keyword-fallback``."""
    detail: str = ""
    keyword: MatchResult | None = None


def parse_choice(answer: str, names: list[str]) -> str | None:
    """The one catalogue name in ``answer``, ``"none"``, or None if unusable."""
    cleaned = answer.strip().strip("`'\".*").strip().lower()
    if cleaned in names:
        return cleaned
    if cleaned in ("none", "none.", "no skill"):
        return "none"
    found = {
        name
        for name in names
        if re.search(rf"(?<![a-z0-9-]){re.escape(name)}(?![a-z0-9-])", cleaned)
    }
    if len(found) == 1:
        return found.pop()
    return None


class LLMMatcher:
    """Chooses skills with an LLM; keyword matching is the fallback."""

    def __init__(
        self,
        llm: LLMClient,
        keyword: KeywordMatcher,
        *,
        cache_size: int = 1024,
        cache_ttl: float = 300.0,
    ) -> None:
        self.llm = llm
        self.keyword = keyword
        self.names = [s.name for s in keyword.skills]
        self.by_name = {s.name: s for s in keyword.skills}
        self.catalogue = "\n".join(f"- {s.name}: {s.description}" for s in keyword.skills)
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl

    async def match(self, text: str) -> LLMDecision:
        """Pick the skill for ``text``; never raises."""
        now = time.monotonic()
        cached = self._cache.get(text)
        if cached is not None and now - cached[0] < self._cache_ttl:
            self._cache.move_to_end(text)
            return self._decide(cached[1], "llm-cache")
        user = f"Skills:\n{self.catalogue}\n\nTask:\n{text[:TASK_CHARS]}\n\nSkill name:"
        try:
            answer = await self.llm.complete(SYSTEM_PROMPT, user, max_tokens=20)
        except LLMError as exc:
            return self._fallback(text, f"llm failed: {exc}")
        choice = parse_choice(answer, self.names)
        if choice is None:
            return self._fallback(text, f"llm answered {answer[:80]!r}, not a skill name")
        self._cache[text] = (now, choice)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return self._decide(choice, "llm")

    def _decide(self, choice: str, mode: str) -> LLMDecision:
        if choice == "none":
            return LLMDecision(None, mode, "the model chose none")
        return LLMDecision(self.by_name[choice], mode)

    def _fallback(self, text: str, why: str) -> LLMDecision:
        log.info("keyword fallback: %s", why)
        result = self.keyword.match(text)
        skill = result.best.skill if result.best else None
        return LLMDecision(skill, "keyword-fallback", why, result)
