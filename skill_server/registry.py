"""The skills a server serves, and the matcher built over them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from skill_server.llm_matcher import LLMMatcher
from skill_server.matcher import DEFAULT_THRESHOLD, KeywordMatcher
from skillscale.discovery import Catalog, SkillDiscovery, SkillProblem
from skillscale.llm import LLMClient
from skillscale.skill_format import Skill

log = logging.getLogger(__name__)


class SkillRegistry:
    """Loads skills from roots; ``reload()`` swaps in a fresh catalogue atomically."""

    def __init__(
        self,
        roots: Sequence[Path],
        threshold: float = DEFAULT_THRESHOLD,
        llm: LLMClient | None = None,
    ) -> None:
        self.discovery = SkillDiscovery(roots)
        self.threshold = threshold
        self.catalog = Catalog()
        self.matcher = KeywordMatcher([], threshold)
        self.llm = llm
        self.llm_matcher: LLMMatcher | None = None

    def reload(self) -> list[SkillProblem]:
        """Rescan the roots; invalid skills are logged and skipped, never fatal."""
        catalog = self.discovery.scan()
        for problem in catalog.problems:
            log.warning("skipping skill at %s: %s", problem.path, problem.message)
        self.catalog = catalog
        self.matcher = KeywordMatcher(catalog.skills.values(), self.threshold)
        self.llm_matcher = LLMMatcher(self.llm, self.matcher) if self.llm is not None else None
        return catalog.problems

    def get(self, name: str) -> Skill | None:
        """The skill called ``name``, if served."""
        return self.catalog.skills.get(name)

    @property
    def names(self) -> list[str]:
        """Served skill names, sorted."""
        return sorted(self.catalog.skills)
