"""Matchers behind one protocol, registered in one place.

A matcher decides which option of a catalogue a task text is for. A server's
matcher chooses one of its skills; the SDK's router chooses a topic (each
topic offered with its skills). Every matcher is registered here by name with
a factory, and everything that names matchers reads this registry: the
server's configuration (``ServerConfig.matcher``), the CLI's ``--matcher``
choices and help, and :class:`skillscale.sdk.router.TopicRouter`. A new
matcher (an embedding matcher, say) is one :func:`register_matcher` call::

    register_matcher("embedding", EmbeddingMatcher, help="nearest skill by embedding")

``auto`` is not a matcher: :func:`resolve_matcher` turns it into ``llm`` when
an LLM is configured and ``keyword`` otherwise, here and nowhere else.

Built in:

* ``keyword``: BM25F keyword matching (:mod:`skillscale.core.matching`).
* ``llm``: the model sees the catalogue (each option's name and what it does)
  and must answer with one exact option name or ``none``. An answer that
  names exactly one option (extra words around it are tolerated) is taken;
  ``none`` is a considered no-match. Anything else (an unknown name, garbage,
  a timeout, a rate limit, an HTTP error) falls back to keyword matching, and
  the decision says so. Identical task texts are answered from a bounded
  cache for a bounded time.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from skillscale.core.errors import ConfigError
from skillscale.core.llm import LLMClient, LLMError
from skillscale.core.matching import DEFAULT_THRESHOLD, KeywordMatcher, MatchResult
from skillscale.core.skill_format import Skill

log = logging.getLogger(__name__)

AUTO = "auto"
"""Not a matcher: ``llm`` when an LLM is configured, else ``keyword``."""
TASK_CHARS = 2000
"""How much of a task text the model is shown."""


@dataclass(frozen=True)
class Decision:
    """What a matcher decided for one task text, and how."""

    choice: str | None
    """The option chosen (a skill name, or a topic for the router); None: nothing fits."""
    mode: str
    """How it was decided; a reply's ``_trace.matcher_mode`` (``keyword``, ``llm``,
    ``llm-cache``, ``keyword-fallback``, or a plug-in matcher's own word)."""
    detail: str = ""
    """Why, in words: the reason for a fallback, or for finding nothing."""
    keyword: MatchResult | None = None
    """The keyword ranking when keywords decided (alone or as a fallback), so
    that a reply can list the candidates and explain the decision."""


class Matcher(Protocol):
    """Chooses one option of a catalogue for a task text.

    ``decide`` never raises for anything a caller sends: a matcher that cannot
    decide falls back (as ``llm`` falls back to keywords) or returns a
    :class:`Decision` whose ``choice`` is None.
    """

    async def decide(self, task: str) -> Decision:
        """The option for ``task``."""
        ...


@dataclass(frozen=True)
class MatcherSetup:
    """Everything a matcher factory is given: the catalogue and the means to match it."""

    skills: Sequence[Skill]
    threshold: float = DEFAULT_THRESHOLD
    """The keyword matcher's acceptance threshold."""
    llm: LLMClient | None = None
    """The configured LLM, if any."""
    topic_of: Mapping[str, str] | None = None
    """Skill name -> topic when the options are topics (the SDK router); None:
    the options are the skills themselves (a server)."""

    @property
    def kind(self) -> str:
        """What an option is, in words: ``skill`` or ``topic``."""
        return "skill" if self.topic_of is None else "topic"

    def option_of(self, skill: Skill) -> str:
        """The option ``skill`` stands for: itself, or its topic."""
        return skill.name if self.topic_of is None else self.topic_of[skill.name]

    def options(self) -> dict[str, str]:
        """Option name -> what it does, in the order a model is shown them.

        Skills keep the catalogue's order; topics are sorted, each listing its
        skills by name (as :meth:`Catalog.topics` does).
        """
        if self.topic_of is None:
            return {s.name: s.description for s in self.skills}
        grouped: dict[str, list[Skill]] = {}
        for skill in sorted(self.skills, key=lambda s: s.name):
            grouped.setdefault(self.option_of(skill), []).append(skill)
        return {
            topic: "; ".join(f"{s.name} ({s.description})" for s in skills)
            for topic, skills in sorted(grouped.items())
        }


MatcherFactory = Callable[[MatcherSetup], Matcher]
"""Builds a matcher over a catalogue; called again whenever the catalogue changes."""


@dataclass(frozen=True)
class MatcherSpec:
    """One registered matcher."""

    name: str
    factory: MatcherFactory
    help: str
    """One line for ``--matcher``'s help."""
    needs_llm: bool = False
    """Refuse to start without a configured LLM."""


_REGISTRY: dict[str, MatcherSpec] = {}


def register_matcher(
    name: str, factory: MatcherFactory, *, help: str, needs_llm: bool = False
) -> None:
    """Make ``name`` a matcher everywhere: server config, ``--matcher`` and the router.

    Registering a name again replaces it (a plug-in may wrap a built-in).
    """
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name) or name == AUTO:
        raise ValueError(f"invalid matcher name {name!r}: lowercase letters, digits, _ and -")
    _REGISTRY[name] = MatcherSpec(name, factory, help, needs_llm)


def unregister_matcher(name: str) -> None:
    """Forget ``name`` (for tests and plug-ins that withdraw); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def matcher_names() -> tuple[str, ...]:
    """Every valid matcher setting: ``auto`` first, then the registered matchers."""
    return (AUTO, *_REGISTRY)


def matcher_help() -> str:
    """One help text for ``--matcher``: what ``auto`` and each matcher do."""
    parts = [f"{AUTO}: the LLM when one is configured, keywords otherwise"]
    parts += [f"{spec.name}: {spec.help}" for spec in _REGISTRY.values()]
    return "; ".join(parts)


def matcher_spec(name: str) -> MatcherSpec:
    """The registered matcher ``name`` (not ``auto``); :class:`ConfigError` if unknown."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ConfigError(f"unknown matcher {name!r}: choose from {', '.join(matcher_names())}")
    return spec


def wants_llm(name: str) -> bool:
    """Whether the setting ``name`` uses an LLM when one is configured.

    ``auto`` and matchers that need one do; others do not, so that with
    ``--matcher keyword`` no LLM settings are read at all.
    """
    return name == AUTO or matcher_spec(name).needs_llm


def resolve_matcher(name: str, *, llm_configured: bool) -> str:
    """The registered matcher the setting ``name`` stands for.

    The one place ``auto`` is resolved. Raises :class:`ConfigError` for an
    unknown name and for a matcher that needs an LLM when none is configured.
    """
    if name == AUTO:
        return "llm" if llm_configured else "keyword"
    if matcher_spec(name).needs_llm and not llm_configured:
        raise ConfigError(
            f"--matcher {name} needs an LLM: set SKILLSCALE_LLM_MODEL and "
            "SKILLSCALE_LLM_BASE_URL or SKILLSCALE_LLM_API_KEY (or run "
            "`skillscale config init`)"
        )
    return name


def create_matcher(name: str, setup: MatcherSetup) -> Matcher:
    """Build the matcher the setting ``name`` stands for over ``setup``'s catalogue."""
    resolved = resolve_matcher(name, llm_configured=setup.llm is not None)
    return _REGISTRY[resolved].factory(setup)


# -- keyword ---------------------------------------------------------------------


class KeywordChooser:
    """Keyword matching behind the :class:`Matcher` protocol."""

    def __init__(self, keyword: KeywordMatcher, setup: MatcherSetup) -> None:
        self.keyword = keyword
        self.setup = setup

    async def decide(self, task: str) -> Decision:
        """The option of the best keyword match, if it clears the threshold."""
        return self.from_result(self.keyword.match(task), "keyword")

    def from_result(self, result: MatchResult, mode: str, detail: str = "") -> Decision:
        """A decision taken on a keyword ranking."""
        choice = self.setup.option_of(result.best.skill) if result.best else None
        return Decision(choice, mode, detail, result)


def keyword_matcher(setup: MatcherSetup) -> KeywordChooser:
    """The ``keyword`` factory."""
    return KeywordChooser(KeywordMatcher(setup.skills, setup.threshold), setup)


# -- llm, keywords as the fallback --------------------------------------------------


@dataclass(frozen=True)
class _Prompt:
    system: str
    heading: str
    ask: str
    max_tokens: int


# The router's prompt and token budget are kept as they were when it had its
# own copy of this logic; the choosing and falling back are now shared.
_PROMPTS = {
    "skill": _Prompt(
        "You route a user's task to exactly one skill. Answer with the exact name of the "
        "one skill that fits best, or with the single word none if no skill fits. "
        "Answer with nothing else.",
        "Skills",
        "Skill name",
        20,
    ),
    "topic": _Prompt(
        "You route a user's task to exactly one topic of a skill fabric. Answer with the "
        "exact topic name that fits best, or with the single word none. Answer with "
        "nothing else.",
        "Topics",
        "Topic",
        64,
    ),
}


def parse_choice(answer: str, names: Sequence[str]) -> str | None:
    """The one name of ``names`` in ``answer``, ``"none"``, or None if unusable.

    Case is ignored (topics are upper case, models answer as they like); a
    name counts only as a whole word, so ``TOPIC_A`` is not found in ``TOPIC_AB``.
    """
    folded = {name.lower(): name for name in names}
    cleaned = answer.strip().strip("`'\".*").strip().lower()
    if cleaned in folded:
        return folded[cleaned]
    if cleaned in ("none", "none.", "no skill", "no topic"):
        return "none"
    found = {
        name
        for low, name in folded.items()
        if re.search(rf"(?<![a-z0-9_-]){re.escape(low)}(?![a-z0-9_-])", cleaned)
    }
    if len(found) == 1:
        return found.pop()
    return None


class LLMMatcher:
    """The model picks an option by exact name; keyword matching catches every failure."""

    def __init__(
        self,
        llm: LLMClient,
        keyword: KeywordMatcher,
        *,
        topic_of: Mapping[str, str] | None = None,
        cache_size: int = 1024,
        cache_ttl: float = 300.0,
    ) -> None:
        self.llm = llm
        self.setup = MatcherSetup(keyword.skills, keyword.threshold, llm, topic_of)
        self.fallback = KeywordChooser(keyword, self.setup)
        options = self.setup.options()
        self.names = list(options)
        self.prompt = _PROMPTS[self.setup.kind]
        self.catalogue = "\n".join(f"- {name}: {what}" for name, what in options.items())
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl

    async def decide(self, task: str) -> Decision:
        """Pick the option for ``task``; never raises."""
        now = time.monotonic()
        cached = self._cache.get(task)
        if cached is not None and now - cached[0] < self._cache_ttl:
            self._cache.move_to_end(task)
            return self._decided(cached[1], "llm-cache")
        p = self.prompt
        user = f"{p.heading}:\n{self.catalogue}\n\nTask:\n{task[:TASK_CHARS]}\n\n{p.ask}:"
        try:
            answer = await self.llm.complete(p.system, user, max_tokens=p.max_tokens)
        except LLMError as exc:
            return self._fall_back(task, f"llm failed: {exc}")
        choice = parse_choice(answer, self.names)
        if choice is None:
            return self._fall_back(
                task, f"llm answered {answer[:80]!r}, not a {self.setup.kind} name"
            )
        self._cache[task] = (now, choice)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return self._decided(choice, "llm")

    def _decided(self, choice: str, mode: str) -> Decision:
        if choice == "none":
            return Decision(None, mode, f"the model found no {self.setup.kind} for this task")
        return Decision(choice, mode)

    def _fall_back(self, task: str, why: str) -> Decision:
        log.info("keyword fallback: %s", why)
        return self.fallback.from_result(self.fallback.keyword.match(task), "keyword-fallback", why)


def llm_matcher(setup: MatcherSetup) -> LLMMatcher:
    """The ``llm`` factory (registered with ``needs_llm``, so ``setup.llm`` is set)."""
    if setup.llm is None:  # create_matcher refuses first; a direct call must not pass
        raise ConfigError("the llm matcher needs an LLM")
    keyword = KeywordMatcher(setup.skills, setup.threshold)
    return LLMMatcher(setup.llm, keyword, topic_of=setup.topic_of)


# Registered in this order so that ``--matcher``'s choices read as before:
# auto, llm, keyword.
register_matcher(
    "llm",
    llm_matcher,
    help="require an LLM (keywords still catch its failures)",
    needs_llm=True,
)
register_matcher("keyword", keyword_matcher, help="keyword matching only, no LLM")
