"""LangChain and LangGraph agents on fake chat models, running real skills over the bus."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from skillscale import SkillScaleClient, SyncSkillScaleClient
from skillscale.adapters.langchain import (
    SkillScaleToolException,
    SkillScaleToolkit,
    SkillScaleTrajectoryHandler,
)
from skillscale.adapters.langgraph import SkillScaleGraph
from skillscale.core.errors import ErrorCode
from skillscale.core.events import TRAJECTORY_TOPIC, AgentTrajectory
from tests.helpers import BUNDLED_SKILLS, FIXTURE_SKILLS, EventSubscriber, RoleProcess

pytestmark = pytest.mark.integration
ARTICLE = "summarize: Cats sleep a lot. Cats purr when content. Dogs bark at strangers."


class ToolCallingFake(FakeMessagesListChatModel):
    """Scripted answers; binding tools changes nothing (the script decides)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCallingFake:
        return self


def scripted(tool: str, args: dict[str, Any], final: str = "All done.") -> ToolCallingFake:
    return ToolCallingFake(
        responses=[
            AIMessage(content="", tool_calls=[{"name": tool, "args": args, "id": "call-1"}]),
            AIMessage(content=final),
        ]
    )


@pytest.fixture
async def client(proxy: RoleProcess, bundled_servers: list[RoleProcess]) -> Any:
    async with SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], timeout=30) as c:
        yield c


async def test_toolkit_tools_mirror_the_catalogue(client: SkillScaleClient) -> None:
    toolkit = SkillScaleToolkit.from_skills_dir(client, BUNDLED_SKILLS)
    tools = {t.name: t for t in toolkit.get_tools()}
    assert sorted(tools) == [
        "code-complexity",
        "csv-analyzer",
        "dead-code-detector",
        "text-summarizer",
    ]
    assert "summar" in tools["text-summarizer"].description.lower()
    assert "data" in tools["csv-analyzer"].args
    task_tools = [t.name for t in toolkit.get_task_tools()]
    assert task_tools == ["topic_code_analysis", "topic_data_processing"]
    content = await tools["csv-analyzer"].ainvoke({"data": "a,b\n1,2\n3,4\n"})
    assert "2 rows x 2 columns" in content
    content = await toolkit.get_task_tools()[0].ainvoke({"task": "find unused imports: import os"})
    assert "Dead Code Report" in content


async def test_langchain_agent_loop_with_trajectory_capture(
    proxy: RoleProcess, client: SkillScaleClient
) -> None:
    tools = {
        t.name: t for t in SkillScaleToolkit.from_skills_dir(client, BUNDLED_SKILLS).get_tools()
    }
    model = scripted("text-summarizer", {"data": ARTICLE}, final="Cats sleep; dogs bark.")
    handler = SkillScaleTrajectoryHandler(client, agent="langchain-test")
    events = EventSubscriber(proxy.ready["xsub"], proxy.ready["xpub"], TRAJECTORY_TOPIC)
    try:
        # A plain tool-calling loop, the shape every LangChain agent has.
        from langchain_core.runnables import RunnableLambda

        async def agent(question: str) -> str:
            messages: list[Any] = [HumanMessage(question)]
            while True:
                answer = await model.ainvoke(messages)
                messages.append(answer)
                if not answer.tool_calls:
                    return str(answer.content)
                for call in answer.tool_calls:
                    output = await tools[call["name"]].ainvoke(call["args"])
                    messages.append(ToolMessage(output, tool_call_id=call["id"]))

        final = await RunnableLambda(agent).ainvoke(
            "Summarize my notes", config={"callbacks": [handler]}
        )
        topic, payload = await asyncio.get_running_loop().run_in_executor(None, events.next)
    finally:
        events.close()
    assert final == "Cats sleep; dogs bark."
    event = AgentTrajectory.model_validate(payload)
    assert topic == TRAJECTORY_TOPIC and event.agent == "langchain-test"
    assert event.prompt == "Summarize my notes" and event.final_answer == "Cats sleep; dogs bark."
    tool_steps = [s for s in event.steps if s.type == "tool"]
    assert tool_steps and tool_steps[0].name == "text-summarizer"
    assert "## Summary" in str(tool_steps[0].output)


async def test_tool_errors_carry_the_code(proxy: RoleProcess, testing_server: RoleProcess) -> None:
    async with SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as client:
        tools = {
            t.name: t
            for t in SkillScaleToolkit.from_skills_dir(
                client, FIXTURE_SKILLS / "testing"
            ).get_tools()
        }
        with pytest.raises(SkillScaleToolException) as info:
            await tools["crash"].ainvoke({"data": ""})
    assert info.value.code is ErrorCode.EXEC_FAILED and "exec_failed" in str(info.value)


def test_tools_run_synchronously_on_a_sync_client(
    proxy: RoleProcess, bundled_servers: list[RoleProcess]
) -> None:
    with SyncSkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as client:
        tool = {
            t.name: t for t in SkillScaleToolkit.from_skills_dir(client, BUNDLED_SKILLS).get_tools()
        }
        assert "## Summary" in tool["text-summarizer"].invoke({"data": ARTICLE})


async def test_langgraph_react_agent_and_tool_node(client: SkillScaleClient) -> None:
    sg = SkillScaleGraph.from_skills_dir(client, BUNDLED_SKILLS)
    graph = sg.build_graph(llm=scripted("code-complexity", {"data": "def f(x):\n    return x\n"}))
    result = await graph.ainvoke({"messages": [HumanMessage("How complex is f?")]})
    tool_messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert tool_messages and "`f`" in tool_messages[0].content
    assert result["messages"][-1].content == "All done."
    # A tool failure comes back to the model as a message, not an exception.
    failing = sg.build_graph(llm=scripted("csv-analyzer", {"data": "just words"}))
    result = await failing.ainvoke({"messages": [HumanMessage("Profile this")]})
    errors = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert errors and "bad_request" in errors[0].content
    assert sg.tool_node().name == "tools"


async def test_langgraph_task_graph_needs_no_llm(client: SkillScaleClient) -> None:
    graph = SkillScaleGraph.from_skills_dir(client, BUNDLED_SKILLS).task_graph()
    state = await graph.ainvoke({"task": "find unused imports in: import os\nx = 1\n"})
    assert state["topic"] == "TOPIC_CODE_ANALYSIS" and state["route"] == "keyword"
    assert "Dead Code Report" in state["answer"]
    failed = await graph.ainvoke({"task": "book me a flight to Rome"})
    assert failed["error_code"] == "no_match" and failed["answer"].startswith("Failed")


async def test_toolkit_from_a_running_fabric(client: SkillScaleClient) -> None:
    toolkit = await SkillScaleToolkit.from_fabric(
        client, ["TOPIC_DATA_PROCESSING", "TOPIC_CODE_ANALYSIS"]
    )
    tools = {t.name: t for t in toolkit.get_tools()}
    assert sorted(tools) == [
        "code-complexity",
        "csv-analyzer",
        "dead-code-detector",
        "text-summarizer",
    ]
    assert [t.name for t in toolkit.get_task_tools()] == [
        "topic_code_analysis",
        "topic_data_processing",
    ]
    assert "2 rows x 2 columns" in await tools["csv-analyzer"].ainvoke({"data": "a,b\n1,2\n3,4\n"})


def test_a_missing_skills_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    from skillscale.adapters.common import catalog_from
    from skillscale.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no-such-dir"):
        catalog_from(tmp_path / "no-such-dir")
    assert catalog_from([BUNDLED_SKILLS]).skills
