"""CrewAI tools over the fabric (extra ``crewai``).

    client = SyncSkillScaleClient()
    tools = SkillScaleCrewTools.from_skills_dir(client, "./skills").get_all_tools()
    agent = Agent(role="analyst", tools=tools, ...)

CrewAI runs tools synchronously, so they take a ``SyncSkillScaleClient``.
Failures are returned the CrewAI way: as the tool's text result
(``Error [code]: message``), which the agent reads and can react to.
CrewAI shows kebab-case skill names with ``_``; the skill is still called
by its real name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crewai.tools import BaseTool
from pydantic import BaseModel, Field, PrivateAttr

from skillscale.adapters.common import ToolSpec, catalog_from, skill_specs, task_specs
from skillscale.core.discovery import Catalog
from skillscale.core.errors import SkillScaleError
from skillscale.sdk.client import SyncSkillScaleClient


class SkillData(BaseModel):
    """Input of a skill tool."""

    data: str = Field(description="The skill's input: the text, CSV, code or JSON it works on.")


class TaskText(BaseModel):
    """Input of a topic tool."""

    task: str = Field(description="What to do, in words, followed by the data to do it on.")


class SkillScaleCrewTool(BaseTool):  # type: ignore[misc]
    """One skill or one topic of the fabric as a CrewAI tool."""

    name: str
    description: str
    args_schema: type[BaseModel] = SkillData
    _client: Any = PrivateAttr()
    _spec: Any = PrivateAttr()

    @classmethod
    def for_spec(cls, client: SyncSkillScaleClient, spec: ToolSpec) -> SkillScaleCrewTool:
        """A tool for ``spec`` (a skill, or a topic when ``spec.skill`` is None)."""
        tool = cls(
            name=spec.name.replace("-", "_"),
            description=spec.description,
            args_schema=SkillData if spec.skill else TaskText,
        )
        tool._client = client
        tool._spec = spec
        return tool

    def _run(self, **arguments: Any) -> str:
        spec: ToolSpec = self._spec
        try:
            return str(self._client.invoke(spec.topic, spec.intent(arguments)))
        except SkillScaleError as exc:
            return f"Error [{exc.code.value}]: {exc.message}"


class SkillScaleCrewTools:
    """The fabric's skills (and topics) as CrewAI tools."""

    def __init__(self, client: SyncSkillScaleClient, catalog: Catalog) -> None:
        self.client = client
        self.catalog = catalog

    @classmethod
    def from_skills_dir(
        cls, client: SyncSkillScaleClient, path: str | Path | Sequence[str | Path]
    ) -> SkillScaleCrewTools:
        """For the skills found under ``path``."""
        return cls(client, catalog_from(path))

    def get_tools(self) -> list[SkillScaleCrewTool]:
        """One tool per skill."""
        return [SkillScaleCrewTool.for_spec(self.client, s) for s in skill_specs(self.catalog)]

    def get_task_tools(self) -> list[SkillScaleCrewTool]:
        """One tool per topic."""
        return [SkillScaleCrewTool.for_spec(self.client, s) for s in task_specs(self.catalog)]

    def get_all_tools(self) -> list[SkillScaleCrewTool]:
        """Both kinds."""
        return self.get_tools() + self.get_task_tools()
