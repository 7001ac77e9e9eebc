"""The skills a server serves, and the matcher built over them.

The matcher is whichever :mod:`skillscale.core.matchers` has registered under
the server's ``--matcher`` setting, rebuilt over each new catalogue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from skillscale.core import rollout
from skillscale.core.discovery import Catalog, SkillDiscovery, SkillProblem
from skillscale.core.events import SKILLS_CHANGED_TOPIC, SkillsChangedEvent
from skillscale.core.llm import LLMClient
from skillscale.core.matchers import AUTO, Matcher, MatcherSetup, create_matcher, resolve_matcher
from skillscale.core.matching import DEFAULT_THRESHOLD
from skillscale.core.skill_format import Skill, SkillFormatError
from skillscale.core.transport import BusSocket, Frames, pump

log = logging.getLogger(__name__)

ROLLOUT = f"{rollout.STATE_DIR}/{rollout.ROLLOUT_FILE}"


@dataclass(frozen=True)
class CanaryRoute:
    """A skill's candidate version and the share of callers it serves."""

    version: str
    share: float
    skill: Skill


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
        self.canaries: dict[str, CanaryRoute] = {}
        """Skill name -> its running canary (from ``.skillscale/rollout.json``)."""

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """``(path, mtime, size)`` of every SKILL.md and AGENTS.md below the roots.

        Stat-ing a few dozen files every couple of seconds costs next to
        nothing and needs no file-watching dependency; entry scripts are not
        included because they are read afresh on every run anyway.
        """
        found = []
        for root in self.discovery.roots:
            for pattern in ("SKILL.md", "AGENTS.md", "*/SKILL.md", "*/AGENTS.md", "*/*/SKILL.md",
                            ROLLOUT, f"*/{ROLLOUT}", f"*/*/{ROLLOUT}"):  # fmt: skip
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
        self.canaries = self._canaries(catalog)
        self.matcher = create_matcher(
            self.matcher_name,
            MatcherSetup(tuple(catalog.skills.values()), self.threshold, self.llm),
        )
        return catalog.problems

    @staticmethod
    def _canaries(catalog: Catalog) -> dict[str, CanaryRoute]:
        routes = {}
        for name, skill in catalog.skills.items():
            state = rollout.read_rollout(skill.path)
            if state is None or state.canary is None or state.canary.share <= 0:
                continue
            version = state.canary.version
            try:
                candidate = rollout.load_version(skill.path, version)
            except (SkillFormatError, rollout.RolloutError) as exc:
                log.warning("not routing to candidate %s of %s: %s", version, name, exc)
                continue
            routes[name] = CanaryRoute(version, state.canary.share, candidate)
        return routes

    def route(self, skill: Skill, caller: str) -> tuple[Skill, bool]:
        """The version of ``skill`` that ``caller`` gets, and whether it is the candidate.

        Stable per caller (:func:`skillscale.core.rollout.in_canary`).
        """
        canary = self.canaries.get(skill.name)
        if canary is None or not rollout.in_canary(caller, skill.name, canary.version,
                                                   canary.share):  # fmt: skip
            return skill, False
        return canary.skill, True

    async def follow_changes(
        self, sub: BusSocket, on_reload: Callable[[], None] | None = None
    ) -> None:
        """Reload on every ``_SKILLS_CHANGED`` event arriving on ``sub``, forever;
        ``on_reload`` is called after each reload that succeeded.

        The reload swaps the catalogue between requests: a request already
        running keeps the :class:`Skill` it resolved, the next one sees the
        change. The periodic :meth:`reload_if_changed` stays the fallback for
        events missed (events are best-effort) and for hand edits.
        """

        def on_event(frames: Frames) -> None:
            if len(frames) != 2 or bytes(frames[0]) != SKILLS_CHANGED_TOPIC.encode():
                return
            try:
                event = SkillsChangedEvent.model_validate_json(bytes(frames[1])[:65536])
            except ValidationError:
                log.warning("ignoring a malformed skills-changed event")
                return
            try:
                self.reload()
            except Exception:
                log.exception("reload after %s of %s failed", event.change, event.skill)
                return
            log.info("skill %s %s (version %s): reloaded", event.skill, event.change,
                     event.version)  # fmt: skip
            if on_reload is not None:
                try:
                    on_reload()
                except Exception:
                    log.exception("after the reload for %s", event.skill)

        await pump(sub, on_event)

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
