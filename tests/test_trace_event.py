"""The server's execution-trace event: written without the model, read as the model.

``execution_trace_json`` writes the event from a plain dict (issue 14: building
and dumping the pydantic model was a third of the server's Python per
request). The distiller, the gateway and the tests read it with
:class:`ExecutionTrace`, so it must be the model's bytes, whatever the values.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from skillscale.core.errors import ErrorCode
from skillscale.core.events import (
    ExecutionTrace,
    caller_id,
    execution_trace_json,
    payload_fields,
)
from skillscale.core.protocol import Reply, Request, Trace
from skillscale.skill_server.handler import EVENT_STDERR_CHARS
from skillscale.skill_server.server import TRACE_BATCH, TRACE_DELAY, Job, ServerConfig, SkillServer
from tests.helpers import FIXTURE_SKILLS

pytestmark = pytest.mark.timeout(30)

T = "TOPIC_TESTING"
REPLY_TO = "AGENT_REPLY_" + "d" * 32
BASE: dict[str, Any] = {
    "request_id": "r1",
    "caller": caller_id(REPLY_TO),
    "server_id": "s1",
    "topic": T,
}

CASES: dict[str, dict[str, Any]] = {
    "success": {**BASE, "skill": "guide", "skill_version": "3", "matcher_mode": "explicit",
                "input_bytes": 12, "outcome": "success", "exit_code": None,
                "elapsed_ms": 0.041, "attempt": 1, "candidate": None, "input_shape": "text"},
    "failure with stderr": {**BASE, "skill": "boom", "matcher_mode": "keyword",
                            "input_bytes": 3, "outcome": "exec_failed", "exit_code": 2,
                            "elapsed_ms": 12.5, "attempt": 2, "candidate": False,
                            "input_shape": "json:object{a,b}",
                            "stderr": 'Traceback\n  File "run.py"\nValueError: token=[REDACTED]'},
    "canary with payloads": {**BASE, "skill": "guide", "skill_version": "4", "outcome": "success",
                             "candidate": True, "task": '{"skill": "guide", "data": "x"}',
                             "output": "a reply\nwith lines", "payload_truncated": False},
    "unicode": {**BASE, "request_id": "r-é", "skill": "ünï", "outcome": "success",
                "task": "é ✓ \u2028 \x00 \x1f \"q\" \\ 𝄞", "output": "日本語", "stderr": "\t\r\n"},
    "not answered": {**BASE, "outcome": "deadline_exceeded"},
    "an int where the model keeps a float": {**BASE, "outcome": "success", "elapsed_ms": 3},
    "inf and nan": {**BASE, "outcome": "success", "elapsed_ms": float("nan"),
                    "extra_float": float("inf")},
    "an extra scalar": {**BASE, "outcome": "success", "redelivered": True},
    # Not the fast path's types: these go through the model, with the same result.
    "a bool for an int": {**BASE, "outcome": "success", "exit_code": True},
    "an extra list": {**BASE, "outcome": "success", "history": ["a", "b"]},
    "a str subclass": {**BASE, "outcome": ErrorCode.TIMEOUT},
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_fast_encoding_is_the_models_encoding(name: str) -> None:
    fields = {**CASES[name], "timestamp": 1796281334.9284241}
    fast = execution_trace_json(fields)
    model = ExecutionTrace(**fields)
    assert fast == model.model_dump_json().encode()
    parsed = ExecutionTrace.model_validate_json(fast)
    assert parsed.model_dump() == json.loads(model.model_dump_json())
    assert parsed == ExecutionTrace.model_validate_json(model.model_dump_json())


def test_the_timestamp_is_now_when_not_given() -> None:
    before = time.time()
    event = ExecutionTrace.model_validate_json(execution_trace_json(CASES["success"]))
    assert before <= event.timestamp <= time.time()


@pytest.mark.parametrize(
    "fields",
    [{**BASE}, {**BASE, "outcome": None}, {**BASE, "outcome": "x", "event": "trajectory"},
     {**BASE, "outcome": "x", "input_bytes": "many"}],
)  # fmt: skip
def test_invalid_fields_fail_as_the_model_does(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ExecutionTrace(**fields)
    with pytest.raises(ValueError):
        execution_trace_json(fields)


def test_a_lone_surrogate_fails_as_the_model_does() -> None:
    fields = {**BASE, "outcome": "success", "output": "\ud800"}
    with pytest.raises(ValueError, match="surrogate"):
        ExecutionTrace(**fields).model_dump_json()
    with pytest.raises(ValueError, match="surrogate"):
        execution_trace_json(fields)


# -- the server's event, against the model built as the server did before ---------------


class Captured:
    """A publisher that keeps what is sent."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.arrived = asyncio.Event()

    def send(self, frames: list[bytes], *, copy: bool = True) -> None:
        self.sent.append(list(frames))
        self.arrived.set()

    def close(self, linger_ms: int | None = None) -> None:
        self.closed = True


def model_event(server: SkillServer, job: Job, reply: Reply) -> ExecutionTrace:
    """The event as ``_emit_trace`` built it with the model (before issue 14's third pass)."""
    trace = reply.trace
    event = ExecutionTrace(
        request_id=job.request.request_id,
        caller=caller_id(job.request.reply_to),
        server_id=server.config.server_id,
        topic=job.topic,
        skill=reply.skill,
        skill_version=reply.skill_version,
        matcher_mode=trace.matcher_mode if trace else None,
        input_bytes=len(job.request.intent.encode()),
        outcome="success" if reply.ok else (reply.error_code or ErrorCode.INTERNAL).value,
        exit_code=trace.exit_code if trace else None,
        elapsed_ms=reply.elapsed_ms,
        attempt=job.attempt if job.dispatch_id is not None else None,
        **server.handler.event_details(reply),
    )
    if reply.skill is not None and (
        server.config.trace_payloads or (trace is not None and trace.candidate is not None)
    ):
        payload = payload_fields(job.request.intent, reply.content if reply.ok
                                 else (reply.error or ""))  # fmt: skip
        event.task, event.output = payload["task"], payload["output"]
        event.payload_truncated = payload["payload_truncated"]
    return event


def replies() -> dict[str, Reply]:
    long_err = "Traceback\n" + "x" * 2000 + "\nKeyError: api_key=sk-abcdefghijklmnop1234"
    return {
        "success": Reply(request_id="r1", status="success", content="done", skill="guide",
                         skill_version="2", elapsed_ms=0.05, server_id="s1",
                         trace=Trace(matcher_mode="explicit", input_shape="text")),
        "failure with stderr": Reply.failure(
            "r1", ErrorCode.EXEC_FAILED, "exit 1", server_id="s1", skill="boom",
            trace=Trace(exit_code=1, stderr=long_err)),
        "canary": Reply(request_id="r1", status="success", content="é ✓ 𝄞 " * 1000,
                        skill="guide", skill_version="5", elapsed_ms=1.5,
                        trace=Trace(matcher_mode="keyword", candidate=True, input_shape="text")),
        "no trace": Reply.failure("r1", ErrorCode.BAD_REQUEST, "bad intent"),
    }  # fmt: skip


@pytest.mark.parametrize("payloads", [False, True])
@pytest.mark.parametrize("case", list(replies()))
@pytest.mark.parametrize("group", [False, True])
async def test_server_event_is_the_models_event(case: str, payloads: bool, group: bool) -> None:
    config = ServerConfig(topics=[T], skills_dirs=[FIXTURE_SKILLS / "testing"],
                          trace_payloads=payloads)  # fmt: skip
    server = SkillServer(config)
    pub = Captured()
    server._pub = pub  # type: ignore[assignment]
    request = Request(request_id="r1", reply_to=REPLY_TO,
                      intent='{"skill": "guide", "data": "password=hunter2hunter2 ✓"}')  # fmt: skip
    job = Job(request, time.monotonic(), b"d1" if group else None, 3, [], T)
    reply = replies()[case]
    expected = model_event(server, job, reply)
    server._emit_trace(job, reply)
    server._flush_traces()
    assert len(pub.sent) == 1
    topic, payload = pub.sent[0]
    assert topic == b"_SKILLSCALE_TRACE"
    got = ExecutionTrace.model_validate_json(payload)
    assert got.model_dump(exclude={"timestamp"}) == expected.model_dump(exclude={"timestamp"})
    assert abs(got.timestamp - expected.timestamp) < 5
    if case == "failure with stderr":
        assert got.stderr and len(got.stderr) <= EVENT_STDERR_CHARS
        assert "sk-abcdefghijklmnop1234" not in payload.decode()
    if (payloads and case != "no trace") or case == "canary":
        assert got.task is not None and "hunter2hunter2" not in got.task


async def test_events_leave_together_and_none_waits_long() -> None:
    server = SkillServer(ServerConfig(topics=[T], skills_dirs=[FIXTURE_SKILLS / "testing"]))
    pub = Captured()
    server._pub = pub  # type: ignore[assignment]
    reply = replies()["success"]

    def job(i: int) -> Job:
        request = Request(request_id=f"r{i}", reply_to=REPLY_TO, intent="/guide x")
        return Job(request, time.monotonic(), b"d", 1, [], T)

    # A few wait for company, at most TRACE_DELAY (then they go, in order).
    started = time.monotonic()
    for i in range(3):
        server._emit_trace(job(i), reply)
    assert pub.sent == []
    await asyncio.wait_for(pub.arrived.wait(), 5)
    assert time.monotonic() - started >= TRACE_DELAY * 0.9
    assert [ExecutionTrace.model_validate_json(p).request_id for _, p in pub.sent] == [
        "r0",
        "r1",
        "r2",
    ]
    # A full batch goes at once: the held events are bounded.
    pub.sent.clear()
    for i in range(TRACE_BATCH):
        server._emit_trace(job(i), reply)
    assert len(pub.sent) == TRACE_BATCH
    assert server._traces == [] and server._traces_timer is None
    # What waits at stop is sent before the PUB closes.
    server._emit_trace(job(99), reply)
    await server.stop(grace=0)
    assert len(pub.sent) == TRACE_BATCH + 1 and pub.closed
