"""LangGraph over the fabric. Run `skillscale up` first, then: python examples/langgraph_graph.py

1. The task graph (route -> invoke -> format) needs no LLM at all.
2. The tool-calling agent graph runs here on a scripted fake chat model.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage

from skillscale import SkillScaleClient
from skillscale.adapters.langgraph import SkillScaleGraph
from skillscale.core.discovery import default_skills_dirs


class ScriptedModel(FakeMessagesListChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


async def main() -> None:
    async with SkillScaleClient(timeout=30) as client:
        sg = SkillScaleGraph.from_skills_dir(client, default_skills_dirs())
        state = await sg.task_graph().ainvoke({"task": "analyze this CSV:\na,b\n1,2\n3,4\n"})
        print(state["answer"])
        model = ScriptedModel(
            responses=[
                AIMessage(
                    content="",
                    tool_calls=[
                        {
                            "name": "code-complexity",
                            "args": {"data": "def f(x):\n    return x\n"},
                            "id": "call-1",
                        }
                    ],
                ),
                AIMessage(content="f is as simple as it gets."),
            ]
        )
        result = await sg.build_graph(llm=model).ainvoke({"messages": [HumanMessage("Rate f")]})
        for message in result["messages"]:
            print(f"{type(message).__name__}: {str(message.content)[:200]}")


if __name__ == "__main__":
    asyncio.run(main())
