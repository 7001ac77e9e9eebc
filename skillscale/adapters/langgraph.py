"""LangGraph over the fabric: tools for ``ToolNode`` and a task graph factory.

sg = SkillScaleGraph.from_skills_dir(client, "./skills")
graph = sg.build_graph(llm=my_chat_model)   # ReAct agent over one tool per skill
graph = sg.build_graph()                    # route -> invoke -> format, no LLM needed
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from skillscale.adapters.common import catalog_from
from skillscale.adapters.langchain import AnyClient, SkillScaleToolkit
from skillscale.core.discovery import Catalog
from skillscale.core.errors import SkillScaleError
from skillscale.sdk.client import SkillScaleClient
from skillscale.sdk.router import TopicRouter


class TaskState(TypedDict, total=False):
    """State of the task graph."""

    task: str
    topic: str
    route: str
    """How the topic was chosen: ``llm`` or ``keyword``."""
    result: str
    error: str
    error_code: str
    answer: str


class SkillScaleGraph:
    """Builds LangGraph pieces for a catalogue served by a running fabric."""

    def __init__(self, client: AnyClient, catalog: Catalog) -> None:
        self.client = client
        self.catalog = catalog
        self.toolkit = SkillScaleToolkit.from_catalog(client, catalog)

    # (Each adapter's from_skills_dir is a one-line wrapper over catalog_from.)
    @classmethod
    def from_skills_dir(
        cls, client: AnyClient, path: str | Path | Sequence[str | Path]
    ) -> SkillScaleGraph:
        """For the skills found under ``path``."""
        return cls(client, catalog_from(path))

    def tools(self) -> list[BaseTool]:
        """One tool per skill (works in ``ToolNode``)."""
        return self.toolkit.get_tools()

    def task_tools(self) -> list[BaseTool]:
        """One task-based tool per topic."""
        return self.toolkit.get_task_tools()

    def tool_node(self, task_based: bool = False) -> ToolNode:
        """A ``ToolNode`` that runs the fabric's tools (errors come back as tool messages)."""
        return ToolNode(self.task_tools() if task_based else self.tools(), handle_tool_errors=True)

    def build_graph(self, llm: BaseChatModel | None = None, task_based: bool = False) -> Any:
        """With ``llm``: a ReAct agent over the tools. Without: the task graph."""
        if llm is not None:
            return self.agent_graph(llm, task_based=task_based)
        return self.task_graph()

    def agent_graph(self, llm: BaseChatModel, task_based: bool = False) -> Any:
        """The classic tool-calling loop: ``agent`` -> (tool calls?) ``tools`` -> ``agent``."""
        tools = self.task_tools() if task_based else self.tools()
        model = llm.bind_tools(tools)

        async def agent(state: MessagesState) -> dict[str, Any]:
            return {"messages": [await model.ainvoke(state["messages"])]}

        graph = StateGraph(MessagesState)
        graph.add_node("agent", agent)
        graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
        graph.add_edge(START, "agent")
        graph.add_conditional_edges("agent", tools_condition, ["tools", END])
        graph.add_edge("tools", "agent")
        return graph.compile()

    def task_graph(self, router: TopicRouter | None = None) -> Any:
        """``route`` (topic by LLM or keywords) -> ``invoke`` -> ``format``."""
        if not isinstance(self.client, SkillScaleClient):
            raise TypeError("the task graph runs on an async SkillScaleClient")
        client = self.client
        router = router or TopicRouter(self.catalog)

        async def route(state: TaskState) -> TaskState:
            try:
                chosen = await router.route(state["task"])
            except SkillScaleError as exc:
                return {"error": exc.message, "error_code": exc.code.value}
            return {"topic": chosen.topic, "route": chosen.mode}

        async def invoke(state: TaskState) -> TaskState:
            try:
                return {"result": await client.invoke_task(state["topic"], state["task"])}
            except SkillScaleError as exc:
                return {"error": exc.message, "error_code": exc.code.value}

        def format_answer(state: TaskState) -> TaskState:
            if state.get("error"):
                return {"answer": f"Failed [{state.get('error_code')}]: {state['error']}"}
            return {"answer": f"<!-- {state['topic']} via {state['route']} -->\n{state['result']}"}

        graph = StateGraph(TaskState)
        graph.add_node("route", route)
        graph.add_node("invoke", invoke)
        graph.add_node("format", format_answer)
        graph.add_edge(START, "route")
        graph.add_conditional_edges(
            "route", lambda s: "format" if s.get("error") else "invoke", ["invoke", "format"]
        )
        graph.add_edge("invoke", "format")
        graph.add_edge("format", END)
        return graph.compile()
