"""Topic routing for ``client.invoke_auto``: which topic should take a task?

With an LLM configured, the model picks one exact topic name from the
catalogue (each topic listed with its skills); anything else it answers, and
any failure, falls back to keyword matching over every skill of every topic,
taking the topic of the best skill.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from skillscale.core.discovery import Catalog
from skillscale.core.errors import ErrorCode, SkillNotFoundError
from skillscale.core.llm import LLMClient, LLMError
from skillscale.core.matching import KeywordMatcher
from skillscale.core.protocol import topic_for_category

SYSTEM_PROMPT = (
    "You route a user's task to exactly one topic of a skill fabric. Answer with the exact "
    "topic name that fits best, or with the single word none. Answer with nothing else."
)


@dataclass(frozen=True)
class Route:
    """The chosen topic and how it was chosen (``llm`` or ``keyword``)."""

    topic: str
    mode: str
    detail: str = ""


class TopicRouter:
    """Routes task texts to topics of a catalogue."""

    def __init__(self, catalog: Catalog, llm: LLMClient | None = None) -> None:
        self.catalog = catalog
        self.llm = llm
        self.topics = catalog.topics()
        self._keyword = KeywordMatcher(catalog.skills.values())
        self._menu = "\n".join(
            f"- {topic}: " + "; ".join(f"{s.name} ({s.description})" for s in skills)
            for topic, skills in self.topics.items()
        )

    async def route(self, task: str) -> Route:
        """The topic for ``task``; :class:`SkillNotFoundError` if nothing fits."""
        detail = ""
        if self.llm is not None:
            try:
                answer = await self.llm.complete(
                    SYSTEM_PROMPT, f"Topics:\n{self._menu}\n\nTask:\n{task[:2000]}\n\nTopic:"
                )
            except LLMError as exc:
                detail = f"llm failed: {exc}"
            else:
                found = [t for t in self.topics if re.search(rf"\b{re.escape(t)}\b", answer)]
                if len(found) == 1:
                    return Route(found[0], "llm")
                if answer.strip().strip(".").lower() == "none":
                    raise SkillNotFoundError(
                        "the model found no topic for this task", code=ErrorCode.NO_MATCH
                    )
                detail = f"llm answered {answer[:80]!r}, not a topic"
        best = self._keyword.match(task).best
        if best is None:
            raise SkillNotFoundError(
                "no topic matched the task; topics: " + ", ".join(self.topics),
                code=ErrorCode.NO_MATCH,
            )
        topic = topic_for_category(self.catalog.category_of[best.skill.name])
        return Route(topic, "keyword", detail)
