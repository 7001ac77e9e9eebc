"""The skills a server serves, and the matcher built over them.

The matcher is whichever :mod:`skillscale.core.matchers` has registered under
the server's ``--matcher`` setting, rebuilt over each new catalogue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from skillscale.core.discovery import Catalog, SkillDiscovery, SkillProblem
from skillscale.core.llm import LLMClient
from skillscale.core.matchers import AUTO, Matcher, MatcherSetup, create_matcher, resolve_matcher
from skillscale.core.matching import DEFAULT_THRESHOLD
from skillscale.core.skill_format import Skill

log = logging.getLogger(__name__)


class SkillRegistry:
    """Loads skills from roots; ``reload()`` swaps in a fresh catalogue atomically."""

    def __init__(
        self,
        roots: Sequence[Path],
        threshold: float = DEFAULT_THRESHOLD,
        llm: LLMClient | None = None,
        matcher: str = AUTO,
    ) -> None:
        self.discovery = SkillDiscovery(roots)
        self.threshold = threshold
        self.catalog = Catalog()
        self.llm = llm
        self.matcher_name = resolve_matcher(matcher, llm_configured=llm is not None)
        """The registered matcher in use (``auto`` already resolved)."""
        self.matcher: Matcher = create_matcher(self.matcher_name, MatcherSetup((), threshold, llm))
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """``(path, mtime, size)`` of every SKILL.md and AGENTS.md below the roots.

        Stat-ing a few dozen files every couple of seconds costs next to
        nothing and needs no file-watching dependency; entry scripts are not
        included because they are read afresh on every run anyway.
        """
        found = []
        for root in self.discovery.roots:
            for pattern in ("SKILL.md", "AGENTS.md", "*/SKILL.md", "*/AGENTS.md", "*/*/SKILL.md"):
                for path in root.glob(pattern):
                    try:
                        st = path.stat()
                    except OSError:
                        continue
                    found.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(sorted(found))

    def reload_if_changed(self) -> bool:
        """Reload when a skill was added, removed or its SKILL.md changed."""
        current = self.fingerprint()
        if current == self._fingerprint:
            return False
        self.reload()
        return True

    def reload(self) -> list[SkillProblem]:
        """Rescan the roots; invalid skills are logged and skipped, never fatal."""
        self._fingerprint = self.fingerprint()
        catalog = self.discovery.scan()
        for problem in catalog.problems:
            log.warning("skipping skill at %s: %s", problem.path, problem.message)
        self.catalog = catalog
        self.matcher = create_matcher(
            self.matcher_name,
            MatcherSetup(tuple(catalog.skills.values()), self.threshold, self.llm),
        )
        return catalog.problems

    def get(self, name: str) -> Skill | None:
        """The skill called ``name``, if served."""
        return self.catalog.skills.get(name)

    def problem_for(self, name: str) -> SkillProblem | None:
        """Why a skill folder called ``name`` was found but not loaded, if it was."""
        for problem in self.catalog.problems:
            path = problem.path
            folder = path.parent if path.name in ("SKILL.md", "AGENTS.md") else path
            if folder.name == name:
                return problem
        return None

    @property
    def names(self) -> list[str]:
        """Served skill names, sorted."""
        return sorted(self.catalog.skills)
