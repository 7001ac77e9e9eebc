"""Envelopes, intent forms and error mapping (no sockets)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from skillscale.core.errors import (
    ErrorCode,
    ExecutionError,
    RequestError,
    SkillNotFoundError,
    SkillTimeoutError,
    UnavailableError,
    error_for_code,
)
from skillscale.core.protocol import (
    IntentMode,
    Reply,
    Request,
    Trace,
    is_reply_topic,
    is_valid_id,
    is_valid_skill_name,
    new_reply_topic,
    parse_intent,
    topic_for_category,
)


def test_reference_request_parses_without_extensions() -> None:
    raw = json.dumps(
        {
            "request_id": "a1b2c3d4",
            "reply_to": "AGENT_REPLY_9f8e7d6c",
            "intent": "hi",
            "timestamp": 1739836800.123,
        }
    ).encode()
    request = Request.from_bytes(raw)
    assert request.request_id == "a1b2c3d4"
    assert request.deadline is None
    assert json.loads(request.to_bytes()) == json.loads(raw)


def test_unknown_request_fields_are_kept_for_forward_compatibility() -> None:
    raw = b'{"request_id":"1","reply_to":"AGENT_REPLY_x","intent":"t","timestamp":1,"future":7}'
    assert json.loads(Request.from_bytes(raw).to_bytes())["future"] == 7


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "payload"),
        (b'{"reply_to":"AGENT_REPLY_x","intent":"t"}', "request_id"),
        (b'{"request_id":"1","intent":"t"}', "reply_to"),
        (b'{"request_id":"1","reply_to":"bad topic with spaces","intent":"t"}', "reply_to"),
        (b'{"request_id":"1","reply_to":"AGENT_REPLY_x","intent":5}', "intent"),
    ],
)
def test_malformed_requests_raise_request_error(payload: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        Request.from_bytes(payload)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert fragment in info.value.message


def test_intent_object_is_stored_as_json_string() -> None:
    request = Request(request_id="1", reply_to="AGENT_REPLY_x", intent={"skill": "echo"})  # type: ignore[arg-type]
    assert json.loads(request.intent) == {"skill": "echo"}


def test_reply_wire_form_uses_trace_alias_and_omits_none() -> None:
    reply = Reply(request_id="1", status="success", content="ok", trace=Trace(exit_code=0))
    wire = json.loads(reply.to_bytes())
    assert wire["_trace"] == {"exit_code": 0}
    assert "error" not in wire and "error_code" not in wire
    assert Reply.from_bytes(reply.to_bytes()).trace == Trace(exit_code=0)


def test_reference_reply_without_extensions_parses() -> None:
    reply = Reply.from_bytes(b'{"request_id":"a","status":"success","content":"## x"}')
    assert reply.ok and reply.content == "## x" and reply.error_code is None


def test_failure_reply_carries_code_and_sentence() -> None:
    reply = Reply.failure("r", ErrorCode.NO_MATCH, "nothing matched")
    wire = json.loads(reply.to_bytes())
    assert wire["status"] == "error"
    assert wire["error_code"] == "no_match"
    assert wire["error"] == "nothing matched"


def test_plain_text_intent_is_a_task() -> None:
    parsed = parse_intent("summarize: some text")
    assert parsed.mode is IntentMode.TASK
    assert parsed.skill is None
    assert parsed.input == parsed.task == "summarize: some text"


def test_structured_intent_data_wins_over_task() -> None:
    parsed = parse_intent(json.dumps({"skill": "csv-analyzer", "task": "look", "data": "a,b"}))
    assert parsed.mode is IntentMode.EXPLICIT
    assert parsed.skill == "csv-analyzer"
    assert parsed.input == "a,b"
    assert parsed.task == "look"


def test_structured_intent_non_string_data_is_json_encoded() -> None:
    parsed = parse_intent(json.dumps({"skill": "echo", "data": {"k": [1, 2]}}))
    assert json.loads(parsed.input) == {"k": [1, 2]}


def test_structured_task_only_is_matched() -> None:
    parsed = parse_intent(json.dumps({"task": "summarize this"}))
    assert parsed.mode is IntentMode.TASK
    assert parsed.task == parsed.input == "summarize this"


def test_json_without_known_keys_is_plain_text() -> None:
    text = '{"a": 1}'
    parsed = parse_intent(text)
    assert parsed.mode is IntentMode.TASK and parsed.input == text


def test_slash_activation() -> None:
    parsed = parse_intent("/text-summarizer The rest\nof the text")
    assert parsed.mode is IntentMode.SLASH
    assert parsed.skill == "text-summarizer"
    assert parsed.input == "The rest\nof the text"
    assert parse_intent("/echo").input == ""


def test_slash_with_non_name_is_plain_text() -> None:
    assert parse_intent("/usr/bin/env is a path").mode is IntentMode.TASK


@pytest.mark.parametrize("bad", ["../x", "x; rm -rf /", "A", "-x", "x-", "a--b", "x" * 65, "é"])
def test_invalid_explicit_skill_names_are_rejected(bad: str) -> None:
    with pytest.raises(RequestError):
        parse_intent(json.dumps({"skill": bad, "data": ""}))


def test_skill_name_rule() -> None:
    assert is_valid_skill_name("a")
    assert is_valid_skill_name("csv-analyzer2")
    assert is_valid_skill_name("x" * 64)
    assert not is_valid_skill_name("x" * 65)
    assert not is_valid_skill_name("a--b")
    assert not is_valid_skill_name("echo\n")  # `$` alone would match before a final newline


def test_ids_and_reply_topics_take_no_trailing_newline() -> None:
    # An id with a newline could forge a log line; a reply topic one a new frame's text.
    assert is_valid_id("req-1") and not is_valid_id("req-1\n")
    assert is_reply_topic(b"AGENT_REPLY_abc") and not is_reply_topic(b"AGENT_REPLY_abc\n")
    request = {"request_id": "r1", "reply_to": "AGENT_REPLY_abc", "intent": "{}"}
    assert Request.model_validate(request).reply_to == "AGENT_REPLY_abc"
    for field, bad in (("reply_to", "AGENT_REPLY_abc\n"), ("request_id", "r1\n")):
        with pytest.raises(ValidationError):
            Request.model_validate({**request, field: bad})


def test_topic_for_category() -> None:
    assert topic_for_category("data-processing") == "TOPIC_DATA_PROCESSING"
    assert topic_for_category("code analysis") == "TOPIC_CODE_ANALYSIS"
    with pytest.raises(RequestError):
        topic_for_category("---")


def test_reply_topics_are_unguessable_and_unique() -> None:
    topics = {new_reply_topic() for _ in range(100)}
    assert len(topics) == 100
    assert all(t.startswith("AGENT_REPLY_") and len(t) == 12 + 32 for t in topics)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("bad_request", RequestError),
        ("no_match", SkillNotFoundError),
        ("skill_not_found", SkillNotFoundError),
        ("timeout", SkillTimeoutError),
        ("exec_failed", ExecutionError),
        ("output_too_large", ExecutionError),
        ("overloaded", UnavailableError),
        ("no_server", UnavailableError),
        (None, ExecutionError),
        ("something_new", ExecutionError),
    ],
)
def test_error_codes_map_to_exception_classes(code: str | None, cls: type) -> None:
    exc = error_for_code(code, "msg", request_id="r")
    assert isinstance(exc, cls)
    assert exc.request_id == "r"
    assert "msg" in str(exc)


def test_catalog_intent() -> None:
    assert parse_intent('{"catalog": true}').mode is IntentMode.CATALOG
    assert parse_intent('{"catalog": "yes"}').mode is IntentMode.TASK


def test_reply_to_must_be_a_reply_topic_and_ids_a_safe_alphabet() -> None:
    base = {"request_id": "r1", "reply_to": "AGENT_REPLY_ab", "intent": "x"}
    for bad in (
        {"reply_to": "TOPIC_DATA_PROCESSING"},
        {"reply_to": "_SKILLSCALE_TRACE"},
        {"request_id": "a\nFAKE LOG LINE"},
        {"request_id": "x" * 129},
        {"deadline": float("inf")},
    ):
        with pytest.raises(RequestError):
            Request.from_bytes(json.dumps({**base, **bad}).encode())
    assert Request.from_bytes(json.dumps(base).encode()).reply_to == "AGENT_REPLY_ab"


def test_structured_intents_that_cannot_be_carried_are_bad_requests() -> None:
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_intent('{"skill": "echo", "data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(RequestError, match="surrogate"):
        parse_intent('{"skill": "echo", "task": "\\ud800 x"}')
