"""Execution traces and agent trajectories on the bus, schema-valid and redacted."""

from __future__ import annotations

import asyncio
import json

import pytest

from skillscale import SkillScaleClient
from skillscale.core.events import (
    TRACE_TOPIC,
    TRAJECTORY_TOPIC,
    AgentTrajectory,
    ExecutionTrace,
    caller_id,
)
from skillscale.core.redact import redact, redact_obj
from tests.helpers import EventSubscriber, RoleProcess

KEY = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz012345"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (f"my key is {KEY}", "openai_key"),
        ("AKIAIOSFODNN7EXAMPLE in the config", "aws_key"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github_token"),
        ("Authorization: Bearer abcdef0123456789abcdef", "bearer"),
        ('{"api_key": "hunter2hunter2"}', "secret"),
        ("password=correct-horse", "secret"),
        ("mail jane.doe@example.com now", "email"),
        ("connect to 10.1.2.3 please", "ip"),
        ("file at /home/alice/project/x.py", "user"),
    ],
)
def test_redaction(text: str, kind: str) -> None:
    out = redact(text)
    assert f"[REDACTED:{kind}]" in out
    for secret in (
        KEY,
        "AKIAIOSFODNN7EXAMPLE",
        "hunter2hunter2",
        "correct-horse",
        "jane.doe",
        "10.1.2.3",
        "alice",
    ):
        assert secret not in out


def test_redaction_keeps_ordinary_text() -> None:
    text = "Summarize the quarterly report for the sales team (version 2.1)."
    assert redact(text) == text
    assert redact_obj({"a": [KEY, 3]}) == {"a": ["[REDACTED:openai_key]", 3]}


@pytest.mark.integration
async def test_execution_traces_are_published(
    proxy: RoleProcess, testing_server: RoleProcess
) -> None:
    events = EventSubscriber(proxy.ready["xsub"], proxy.ready["xpub"], TRACE_TOPIC)
    try:
        async with SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as client:
            reply = await client.call("TOPIC_TESTING", json.dumps({"skill": "echo", "data": KEY}))
            failed = await client.call("TOPIC_TESTING", json.dumps({"skill": "crash"}))
            loop = asyncio.get_running_loop()
            got = [await loop.run_in_executor(None, events.next) for _ in range(2)]
    finally:
        events.close()
    traces = {e.request_id: e for e in (ExecutionTrace.model_validate(p) for t, p in got)}
    assert all(t == TRACE_TOPIC for t, _ in got)
    ok = traces[reply.request_id]
    assert ok.outcome == "success" and ok.skill == "echo" and ok.skill_version == "1.2.3"
    assert ok.topic == "TOPIC_TESTING" and ok.server_id == testing_server.ready["server_id"]
    assert ok.caller == caller_id(client.reply_topic) and ok.exit_code == 0
    assert ok.input_bytes > len(KEY)
    assert traces[failed.request_id].outcome == "exec_failed"
    assert KEY not in json.dumps([p for _, p in got])  # inputs are counted, never copied


@pytest.mark.integration
async def test_trajectories_are_redacted_and_published(proxy: RoleProcess) -> None:
    events = EventSubscriber(proxy.ready["xsub"], proxy.ready["xpub"], TRAJECTORY_TOPIC)
    try:
        async with SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as client:
            sent = client.submit_trajectory(
                {
                    "agent": "plain-python",
                    "prompt": f"use {KEY} to summarize",
                    "steps": [{"type": "tool", "name": "text-summarizer",
                               "input": {"data": "x", "api_key": KEY}, "output": "## Summary"}],
                    "final_answer": "done",
                }
            )  # fmt: skip
            topic, payload = await asyncio.get_running_loop().run_in_executor(None, events.next)
    finally:
        events.close()
    assert topic == TRAJECTORY_TOPIC
    event = AgentTrajectory.model_validate(payload)
    assert event.run_id == sent.run_id and event.agent == "plain-python"
    assert KEY not in json.dumps(payload)
    assert "[REDACTED:openai_key]" in event.prompt
    assert event.steps[0].name == "text-summarizer" and event.final_answer == "done"
