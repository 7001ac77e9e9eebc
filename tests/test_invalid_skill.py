"""Naming a skill whose SKILL.md is invalid says so, and why."""

from __future__ import annotations

import json
from pathlib import Path

from skillscale.core.protocol import Request
from skillscale.skill_server.executor import SubprocessExecutor
from skillscale.skill_server.handler import HandlerConfig, RequestHandler
from skillscale.skill_server.registry import SkillRegistry


async def test_an_invalid_skill_is_named_with_its_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken-skill"
    broken.mkdir()
    (broken / "SKILL.md").write_text("---\nname: broken-skill\n---\nno description\n")
    registry = SkillRegistry([tmp_path], matcher="keyword")
    registry.reload()
    handler = RequestHandler(
        registry, SubprocessExecutor(), HandlerConfig(server_id="s", topics=frozenset({"T"}))
    )
    request = Request(
        request_id="r1", reply_to="AGENT_REPLY_x", intent=json.dumps({"skill": "broken-skill"})
    )
    reply = await handler.process(request)
    assert reply.error_code is not None and reply.error_code.value == "skill_not_found"
    assert reply.error is not None
    assert "is here but invalid" in reply.error and "description" in reply.error
    missing = await handler.process(
        Request(request_id="r2", reply_to="AGENT_REPLY_x", intent=json.dumps({"skill": "nope"}))
    )
    assert missing.error is not None and "no skill named 'nope'" in missing.error
