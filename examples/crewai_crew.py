"""CrewAI over the fabric (needs the extra: pip install -e ".[crewai]").

Run `skillscale up` first, then: python examples/crewai_crew.py

A crew needs a real LLM; with SKILLSCALE_LLM_MODEL (and base URL or key) set,
this runs one. Without one it shows the tools a crew would get, calling them
directly as the crew's agent would.
"""

from __future__ import annotations

import os

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")

from skillscale import SyncSkillScaleClient
from skillscale.adapters.crewai import SkillScaleCrewTools
from skillscale.core.discovery import default_skills_dirs
from skillscale.core.llm import LLMSettings


def main() -> None:
    with SyncSkillScaleClient(timeout=60) as client:
        tools = SkillScaleCrewTools.from_skills_dir(client, default_skills_dirs()).get_all_tools()
        settings = LLMSettings.load()
        if settings is None:
            by_name = {tool.name: tool for tool in tools}
            print("tools:", ", ".join(by_name))
            print(by_name["csv_analyzer"].run(data="region,sales\nnorth,10\nsouth,12\neast,300\n"))
            return
        from crewai import LLM, Agent, Crew, Task

        llm = LLM(
            model=f"openai/{settings.model}", base_url=settings.base_url, api_key=settings.api_key
        )
        analyst = Agent(
            role="Data analyst", goal="Explain datasets", backstory="Careful.", tools=tools, llm=llm
        )
        task = Task(
            description="Profile this CSV and name its anomaly: region,sales\nnorth,10\n"
            "south,12\neast,300",
            expected_output="A short profile",
            agent=analyst,
        )
        print(Crew(agents=[analyst], tasks=[task]).kickoff())


if __name__ == "__main__":
    main()
