"""LangChain tools over the fabric, and a callback handler that captures agent runs.

    toolkit = SkillScaleToolkit.from_skills_dir(client, "./skills")
    tools = toolkit.get_tools()            # one tool per skill
    task_tools = toolkit.get_task_tools()  # one tool per topic

Tools are asynchronous (``ainvoke``) with an async ``SkillScaleClient``; with
a ``SyncSkillScaleClient`` they also run synchronously. Failures raise
:class:`SkillScaleToolException` (a ``ToolException``) carrying the reply's
error code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.tools import BaseTool, BaseToolkit, StructuredTool, ToolException
from pydantic import ConfigDict

from skillscale.adapters.common import ToolSpec, catalog_from, skill_specs, task_specs
from skillscale.core.discovery import Catalog
from skillscale.core.errors import ErrorCode, SkillScaleError
from skillscale.core.events import AgentTrajectory, TrajectoryStep
from skillscale.sdk.client import SkillScaleClient, SyncSkillScaleClient

AnyClient = SkillScaleClient | SyncSkillScaleClient


class SkillScaleToolException(ToolException):
    """A failed skill call; ``code`` is the reply's error code."""

    def __init__(self, error: SkillScaleError) -> None:
        super().__init__(f"[{error.code.value}] {error.message}")
        self.code: ErrorCode = error.code


def make_tool(client: AnyClient, spec: ToolSpec) -> BaseTool:
    """A LangChain tool for one :class:`ToolSpec`."""

    async def arun(**arguments: Any) -> str:
        try:
            if isinstance(client, SyncSkillScaleClient):
                return await asyncio.to_thread(client.invoke, spec.topic, spec.intent(arguments))
            return await client.invoke(spec.topic, spec.intent(arguments))
        except SkillScaleError as exc:
            raise SkillScaleToolException(exc) from exc

    def run(**arguments: Any) -> str:
        if not isinstance(client, SyncSkillScaleClient):
            raise ToolException(
                f"{spec.name} runs on an async SkillScaleClient: use ainvoke, or build the "
                "toolkit with a SyncSkillScaleClient"
            )
        try:
            return client.invoke(spec.topic, spec.intent(arguments))
        except SkillScaleError as exc:
            raise SkillScaleToolException(exc) from exc

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=spec.name,
        description=spec.description,
        args_schema=spec.schema,
    )


class SkillScaleToolkit(BaseToolkit):
    """The fabric's skills as LangChain tools."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Any
    catalog: Any

    @classmethod
    def from_catalog(cls, client: AnyClient, catalog: Catalog) -> SkillScaleToolkit:
        """Tools for the skills of a scanned catalogue."""
        return cls(client=client, catalog=catalog)

    @classmethod
    def from_skills_dir(
        cls, client: AnyClient, path: str | Path | Sequence[str | Path]
    ) -> SkillScaleToolkit:
        """Tools for the skills found under ``path`` (one root or several)."""
        return cls.from_catalog(client, catalog_from(path))

    @classmethod
    async def from_fabric(
        cls, client: SkillScaleClient, topics: Sequence[str]
    ) -> SkillScaleToolkit:
        """Tools for the skills a running fabric serves on ``topics``."""
        return cls.from_catalog(client, await client.fetch_catalog(topics))

    def get_tools(self) -> list[BaseTool]:
        """One tool per skill (kebab-case names, description from SKILL.md)."""
        return [make_tool(self.client, spec) for spec in skill_specs(self.catalog)]

    def get_task_tools(self) -> list[BaseTool]:
        """One tool per topic, taking a task text; the server matches the skill."""
        return [make_tool(self.client, spec) for spec in task_specs(self.catalog)]


class SkillScaleTrajectoryHandler(AsyncCallbackHandler):
    """Publishes each top-level agent run as a trajectory event on the bus.

    Records the prompt, every model answer and tool call (inputs, outputs,
    errors) and the final answer; the client redacts before publishing.
    """

    def __init__(self, client: SkillScaleClient, agent: str = "langchain") -> None:
        self.client = client
        self.agent = agent
        self._runs: dict[UUID, AgentTrajectory] = {}
        self._open: dict[UUID, TrajectoryStep] = {}
        self._root_of: dict[UUID, UUID] = {}
        self.published: list[AgentTrajectory] = []

    def _root(self, run_id: UUID, parent_run_id: UUID | None) -> UUID:
        root = self._root_of.get(parent_run_id, parent_run_id) if parent_run_id else run_id
        self._root_of[run_id] = root
        return root

    async def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
        parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        root = self._root(run_id, parent_run_id)
        if root == run_id:
            self._runs[run_id] = AgentTrajectory(agent=self.agent, prompt=_text(inputs))

    async def on_llm_end(
        self, response: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        run = self._runs.get(self._root(run_id, parent_run_id))
        if run is None:
            return
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                calls = getattr(message, "tool_calls", None) or []
                run.steps.append(
                    TrajectoryStep(
                        type="llm",
                        output=generation.text or None,
                        input=None,
                        name=", ".join(c["name"] for c in calls) or None,
                    )
                )

    async def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
        parent_run_id: UUID | None = None, inputs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        root = self._root(run_id, parent_run_id)
        if root in self._runs:
            name = (serialized or {}).get("name") or kwargs.get("name")
            step = TrajectoryStep(type="tool", name=name, input=inputs or input_str,
                                  started=time.time())  # fmt: skip
            self._runs[root].steps.append(step)
            self._open[run_id] = step

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        step = self._open.pop(run_id, None)
        if step is not None:
            step.output = _text(getattr(output, "content", output))
            step.ended = time.time()

    async def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        step = self._open.pop(run_id, None)
        if step is not None:
            step.error = str(error)
            step.ended = time.time()

    async def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run.final_answer = _text(outputs)
            self._finish(run)

    async def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run.outcome, run.error = "error", str(error)
            self._finish(run)

    def _finish(self, run: AgentTrajectory) -> None:
        self.published.append(self.client.submit_trajectory(run))
        self._root_of = {k: v for k, v in self._root_of.items() if v in self._runs}


def _text(value: Any) -> str:
    """A readable string of chain inputs/outputs (messages, dicts, strings)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("messages", "output", "input", "task", "result"):
            if key in value:
                return _text(value[key])
        return str(value)
    if isinstance(value, (list, tuple)):
        return _text(value[-1]) if value else ""
    content = getattr(value, "content", None)
    if content is not None:
        return content if isinstance(content, str) else str(content)
    return str(value)
