"""Each bundled skill through the bus, on real inputs, matched and explicit."""

from __future__ import annotations

import json

import pytest

from skillscale import ErrorCode, SkillScaleClient
from skillscale.core.discovery import SkillDiscovery
from skillscale.core.protocol import Trace
from skillscale.skill_server.executor import ExecutionLimits, ExecutionResult
from skillscale.skill_server.handler import HandlerConfig, RequestHandler
from tests.helpers import BUNDLED_SKILLS, RoleProcess

pytestmark = pytest.mark.integration
DATA = "TOPIC_DATA_PROCESSING"
CODE = "TOPIC_CODE_ANALYSIS"

ARTICLE = """ZeroMQ is a high-performance asynchronous messaging library. It provides a message
queue, but unlike message-oriented middleware, a ZeroMQ system can run without a dedicated
message broker. The library offers sockets that carry atomic messages across various
transports. Publish-subscribe is one of its core patterns. In that pattern, publishers send
messages to topics and subscribers receive the topics they subscribed to. Many trading
systems use ZeroMQ for its low latency. The library is written in C++ and has bindings for
many languages, including Python."""

CSV = """id,region,revenue,units
1,north,1200,10
2,south,1350,12
3,north,1100,9
4,east,,11
5,west,98000,10
6,south,1300,12
3,north,1100,9
"""

CODE_SAMPLE = """
import os
import json


def tangled(a, b, c, d, e, f):
    if a:
        for x in range(b):
            if x and c or d:
                while e:
                    try:
                        e -= 1
                    except ValueError:
                        if f:
                            return 1
    return 0


def _unused_helper():
    return json.dumps({})
    print("unreachable")


def simple():
    temp = 5
    return os.getcwd()
"""


async def test_text_summarizer_by_task(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    reply = await client.call(DATA, "summarize: " + ARTICLE)
    assert reply.ok, reply.error
    assert (
        reply.skill == "text-summarizer" and reply.trace and reply.trace.matcher_mode == "keyword"
    )
    summary = reply.content.split("## Statistics")[0]
    assert "## Summary" in summary and "ZeroMQ" in summary
    assert summary.count(".") < ARTICLE.count(".")
    assert "| Sentences | 7 |" in reply.content
    assert "`zeromq`" in reply.content


async def test_text_summarizer_fixed_length(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    content = await client.invoke_skill(DATA, "text-summarizer", {"text": ARTICLE, "sentences": 1})
    assert "1 of 7 sentences" in content


async def test_text_summarizer_empty_input_is_an_error(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    reply = await client.call(DATA, json.dumps({"skill": "text-summarizer", "data": "   "}))
    assert reply.error_code is ErrorCode.BAD_REQUEST and "no text" in (reply.error or "")


async def test_csv_analyzer(client: SkillScaleClient, bundled_servers: list[RoleProcess]) -> None:
    reply = await client.call(DATA, "analyze this CSV:\n" + CSV)
    assert reply.ok and reply.skill == "csv-analyzer", reply.error
    content = reply.content
    assert "**7 rows x 4 columns**" in content
    assert "| revenue | integer | 6 | 1 | 5 |" in content
    assert "98000 (row 6)" in content  # outlier found by IQR
    assert "duplicate row(s): row 8 = row 4" in content
    assert "**revenue**: 1 missing value(s)" in content
    assert "north (3)" in content


async def test_csv_analyzer_rejects_non_tables(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    reply = await client.call(DATA, json.dumps({"skill": "csv-analyzer", "data": "just words"}))
    assert reply.error_code is ErrorCode.BAD_REQUEST


async def test_code_complexity(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    reply = await client.call(CODE, "analyze the complexity of this code:\n" + CODE_SAMPLE)
    assert reply.ok and reply.skill == "code-complexity", reply.error
    # tangled: 1 + if + for + if + and/or(2) + while + except + if = 9; the if in the
    # except handler sits 6 deep. Line 5: the lead-in line and blank line are dropped.
    assert "| `tangled` | 5 | 9 | B | 6 |" in reply.content
    assert "nesting depth 6" in reply.content
    assert "6 parameters" in reply.content


async def test_code_complexity_rejects_non_python(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    reply = await client.call(CODE, json.dumps({"skill": "code-complexity", "data": "def (:"}))
    assert reply.error_code is ErrorCode.BAD_REQUEST and "could not parse" in (reply.error or "")


async def test_dead_code_detector(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    reply = await client.call(
        CODE, "find dead code in this file:\n```python\n" + CODE_SAMPLE + "```"
    )
    assert reply.ok and reply.skill == "dead-code-detector", reply.error
    content = reply.content
    assert "| 21 | unreachable code |" in content
    assert "`_unused_helper`" in content and "unused function" in content
    assert "`temp`" in content and "unused variable" in content
    assert "unused import | `os`" not in content  # os is used in simple()
    assert "unused import | `json`" not in content


async def test_slash_activation_across_topics(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    content = await client.invoke(CODE, "/code-complexity def f():\n    return 1\n")
    assert "`f`" in content


async def test_a_request_without_data_is_the_callers_mistake(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    reply = await client.call(DATA, "Find duplicate rows in the CSV below.")
    assert reply.error_code is ErrorCode.BAD_REQUEST and reply.skill == "csv-analyzer"
    assert (reply.error or "").startswith(
        "no CSV table found in the input; send the table after the request or in `data`"
    )
    assert "header row" in (reply.model_extra or {}).get("hint", "")
    assert reply.trace and reply.trace.exit_code == 65


async def test_issue_11_inputs_through_the_bus(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    dead = await client.call(
        CODE,
        "detect unreachable statements in this python code: def h():\n    y = 3\n"
        "    return 0\n    z = 1",
    )
    assert dead.ok and dead.skill == "dead-code-detector", dead.error
    assert "| 4 | unreachable code |" in dead.content
    simple = await client.call(CODE, "how complex is this? def f(x): return x+1")
    assert simple.ok and simple.skill == "code-complexity", simple.error
    assert "| `f` | 1 | 1 | A |" in simple.content


async def test_the_match_is_explained_in_the_trace(
    client: SkillScaleClient, bundled_servers: list[RoleProcess]
) -> None:
    reply = await client.call(DATA, "Tally the records per category:\n" + CSV)
    assert reply.ok and reply.trace is not None and reply.trace.match is not None
    match = reply.trace.match
    assert match["chosen"] == "csv-analyzer" and match["data_shape"] == "table"
    top = match["candidates"][0]
    assert top["skill"] == "csv-analyzer" and {"tally", "records"} <= set(top["terms"])
    assert reply.trace.candidates and reply.trace.candidates[0]["terms"] == top["terms"]
    refused = await client.call(DATA, "Convert this CSV to JSON")
    assert refused.error_code is ErrorCode.NO_MATCH
    assert "csv-analyzer" in (refused.error or "") and '"skill"' in (refused.error or "")
    assert refused.trace and refused.trace.match
    assert refused.trace.match["unknown_terms"] == ["convert", "json"]


def _handler() -> RequestHandler:
    return RequestHandler(None, None, HandlerConfig("test", frozenset()))  # type: ignore[arg-type]


def _result(code: int, stderr: str) -> ExecutionResult:
    return ExecutionResult(code, b"", stderr.encode(), 1.0)


def test_exit_65_is_bad_request_and_other_failures_stay_exec_failed() -> None:
    skill = SkillDiscovery([BUNDLED_SKILLS]).scan().skills["csv-analyzer"]
    limits = ExecutionLimits(timeout=1)
    structured = 'skillscale-input-error: {"message": "no table", "hint": "send one"}'
    reply = _handler()._from_result("r", skill, _result(65, "log\n" + structured), limits, Trace())
    assert reply.error_code is ErrorCode.BAD_REQUEST
    assert reply.error == "no table (hint: send one)" and reply.model_extra == {"hint": "send one"}
    plain = _handler()._from_result("r", skill, _result(65, "bad input: x\n"), limits, Trace())
    assert plain.error_code is ErrorCode.BAD_REQUEST and plain.error == "bad input: x"
    other = _handler()._from_result("r", skill, _result(2, structured), limits, Trace())
    assert other.error_code is ErrorCode.EXEC_FAILED  # the exit status is the contract
