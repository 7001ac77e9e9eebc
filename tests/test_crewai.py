"""CrewAI tools (runs only where the optional ``crewai`` extra is installed)."""

from __future__ import annotations

import os

import pytest

crewai = pytest.importorskip("crewai", reason="the crewai extra (~1 GB) is not installed")

from skillscale import SyncSkillScaleClient  # noqa: E402
from skillscale.adapters.crewai import SkillScaleCrewTools  # noqa: E402
from tests.helpers import BUNDLED_SKILLS, RoleProcess  # noqa: E402

pytestmark = pytest.mark.integration
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")


def test_crewai_tools_run_skills_and_return_errors_as_text(
    proxy: RoleProcess, bundled_servers: list[RoleProcess]
) -> None:
    with SyncSkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as client:
        tools = {
            t.name: t
            for t in SkillScaleCrewTools.from_skills_dir(client, BUNDLED_SKILLS).get_all_tools()
        }
        assert "csv_analyzer" in tools and "topic_data_processing" in tools
        assert "2 rows x 2 columns" in tools["csv_analyzer"].run(data="a,b\n1,2\n3,4\n")
        assert tools["csv_analyzer"].run(data="no table").startswith("Error [bad_request]")
