"""The SDK without a framework. Run `skillscale up` first, then: python examples/direct_client.py"""

from __future__ import annotations

import asyncio
import json

from skillscale import SkillScaleClient, SkillScaleError

ARTICLE = (
    "ZeroMQ is a messaging library. It gives sockets that carry whole messages. "
    "Publish-subscribe is one of its patterns. Many trading systems use it for low latency."
)


async def main() -> None:
    async with SkillScaleClient(timeout=30) as client:
        # Task text: the server matches the skill.
        print(await client.invoke("TOPIC_DATA_PROCESSING", "summarize: " + ARTICLE))
        # Explicit skill with its input.
        print(
            await client.invoke_skill("TOPIC_DATA_PROCESSING", "csv-analyzer", "a,b\n1,2\n3,40\n")
        )
        # Let the client choose the topic too.
        print(
            await client.invoke_auto(
                "find unused imports in: import os\nimport sys\nprint(sys.argv)"
            )
        )
        # The whole reply, with the trace; errors as typed exceptions.
        reply = await client.call(
            "TOPIC_CODE_ANALYSIS", json.dumps({"skill": "code-complexity", "data": "def f(): pass"})
        )
        print(reply.status, reply.skill, reply.trace.matcher_mode if reply.trace else None)
        try:
            await client.invoke("TOPIC_DATA_PROCESSING", "book a flight to Rome")
        except SkillScaleError as exc:
            print("as expected:", exc)


if __name__ == "__main__":
    asyncio.run(main())
