"""A LangChain tool-calling agent over the fabric's skills.

Run `skillscale up` first, then: python examples/langchain_agent.py

No API key is needed: a scripted fake chat model decides to call the
text-summarizer tool, the real skill runs through the bus, and the run is
captured on the trajectory topic by the callback handler. Swap in any
LangChain chat model (e.g. ChatOpenAI) for a real agent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableLambda

from skillscale import SkillScaleClient
from skillscale.adapters.langchain import SkillScaleToolkit, SkillScaleTrajectoryHandler
from skillscale.core.discovery import default_skills_dirs

NOTES = "summarize: The team shipped the proxy. Replicas now share work. Restarts lose little."


class ScriptedModel(FakeMessagesListChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


async def main() -> None:
    async with SkillScaleClient(timeout=30) as client:
        toolkit = SkillScaleToolkit.from_skills_dir(client, default_skills_dirs())
        tools = {tool.name: tool for tool in toolkit.get_tools()}
        model = ScriptedModel(
            responses=[
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "text-summarizer", "args": {"data": NOTES}, "id": "call-1"}
                    ],
                ),
                AIMessage(content="Here is the summary you asked for."),
            ]
        ).bind_tools(list(tools.values()))

        async def agent(question: str) -> str:
            messages: list[Any] = [HumanMessage(question)]
            while True:
                answer = await model.ainvoke(messages)
                messages.append(answer)
                if not answer.tool_calls:
                    return str(messages[-2].content) + "\n" + str(answer.content)
                for call in answer.tool_calls:
                    result = await tools[call["name"]].ainvoke(call["args"])
                    messages.append(ToolMessage(result, tool_call_id=call["id"]))

        handler = SkillScaleTrajectoryHandler(client, agent="langchain-example")
        print(
            await RunnableLambda(agent).ainvoke(
                "Summarize my notes", config={"callbacks": [handler]}
            )
        )
        print(f"captured {len(handler.published)} trajectory event(s)")


if __name__ == "__main__":
    asyncio.run(main())
