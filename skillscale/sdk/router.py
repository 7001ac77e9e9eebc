"""Topic routing for ``client.invoke_auto``: which topic should take a task?

The choice is made by a matcher from :mod:`skillscale.core.matchers`, the same
registry and the same code the servers use, with topics as the options (each
topic offered with its skills). By default (``auto``), with an LLM configured
the model picks one exact topic name; anything else it answers, and any
failure, falls back to keyword matching over every skill of every topic,
taking the topic of the best skill. Without an LLM, keywords decide.
"""

from __future__ import annotations

from dataclasses import dataclass

from skillscale.core.discovery import Catalog
from skillscale.core.errors import ErrorCode, SkillNotFoundError
from skillscale.core.llm import LLMClient
from skillscale.core.matchers import AUTO, MatcherSetup, create_matcher, resolve_matcher
from skillscale.core.protocol import topic_for_category


@dataclass(frozen=True)
class Route:
    """The chosen topic and how it was chosen (``llm`` or ``keyword``)."""

    topic: str
    mode: str
    detail: str = ""


class TopicRouter:
    """Routes task texts to topics of a catalogue.

    ``matcher`` is a name from :func:`skillscale.core.matchers.matcher_names`;
    ``auto`` uses ``llm`` when it is given, else keywords.
    """

    def __init__(self, catalog: Catalog, llm: LLMClient | None = None, matcher: str = AUTO) -> None:
        self.catalog = catalog
        self.llm = llm
        self.topics = catalog.topics()
        self.matcher_name = resolve_matcher(matcher, llm_configured=llm is not None)
        topic_of = {name: topic_for_category(c) for name, c in catalog.category_of.items()}
        self._matcher = create_matcher(
            self.matcher_name,
            MatcherSetup(tuple(catalog.skills.values()), llm=llm, topic_of=topic_of),
        )

    async def route(self, task: str) -> Route:
        """The topic for ``task``; :class:`SkillNotFoundError` if nothing fits."""
        decision = await self._matcher.decide(task)
        # Route.mode keeps its two values: how the topic was found, not whether
        # the model's answer came from the cache or keywords stood in for it.
        by_keywords = decision.keyword is not None
        if decision.choice is None:
            message = (
                "no topic matched the task; topics: " + ", ".join(self.topics)
                if by_keywords
                else decision.detail or f"the {self.matcher_name} matcher found no topic"
            )
            raise SkillNotFoundError(message, code=ErrorCode.NO_MATCH)
        mode = (
            "keyword"
            if by_keywords
            else "llm"
            if decision.mode.startswith("llm")
            else decision.mode
        )
        return Route(decision.choice, mode, decision.detail)
