"""The skill server's per-request CPU (issue 14): the same bytes and answers, less work.

Each speed-up of the server's decode -> match -> encode path keeps what goes on
the wire and every answer to a hostile request; these cases compare with the
pydantic wrappers and the parser the fast paths replaced (kept here as oracles),
and check the bounds of every cache the fast paths added.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from skillscale.core import protocol
from skillscale.core.errors import ErrorCode, RequestError
from skillscale.core.protocol import (
    NOT_PARSED,
    IntentMode,
    ParsedIntent,
    Reply,
    Request,
    Trace,
    is_valid_skill_name,
    parse_intent,
)
from skillscale.core.skill_format import Skill
from skillscale.skill_server import handler as handler_module
from skillscale.skill_server.dedupe import DedupeConfig, DedupeWindow
from skillscale.skill_server.executor import ExecutionLimits, ExecutionResult, SubprocessExecutor
from skillscale.skill_server.handler import (
    KEPT_INTENT_CHARS,
    KEPT_INTENTS,
    HandlerConfig,
    RequestHandler,
    input_shape,
)
from skillscale.skill_server.registry import SkillRegistry
from tests.helpers import FIXTURE_SKILLS

pytestmark = pytest.mark.timeout(120)

T = "TOPIC_TESTING"
TESTING = FIXTURE_SKILLS / "testing"
REPLY_TO = "AGENT_REPLY_" + "d" * 32
EXAMPLES = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


# -- oracles: what the fast paths replaced ------------------------------------------------


def old_parse_intent(intent: str) -> ParsedIntent:
    """``parse_intent`` as it was before the single-scan version (json.loads, every check)."""
    stripped = intent.strip()
    if stripped.startswith("{"):
        structured = _old_structured(stripped)
        if structured is not None:
            return structured
    slash = re.match(r"^/([a-z0-9][a-z0-9-]{0,63})(?:[ \t\r\n]+(.*))?$", stripped, re.DOTALL)
    if slash:
        rest = slash.group(2) or ""
        return ParsedIntent(IntentMode.SLASH, slash.group(1), rest, rest)
    return ParsedIntent(IntentMode.TASK, None, intent, intent)


def _old_structured(text: str) -> ParsedIntent | None:
    try:
        obj = json.loads(text)
    except RecursionError:
        raise RequestError("the intent's JSON is nested too deeply") from None
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("catalog") is True:
        return ParsedIntent(IntentMode.CATALOG, None, "", "")
    if not isinstance(obj, dict) or not ({"skill", "data", "task"} & obj.keys()):
        return None
    skill, task, data = obj.get("skill"), obj.get("task"), obj.get("data")
    for name, value in (("skill", skill), ("task", task), ("data", data)):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(
                    f"intent field {name!r} holds an unpaired UTF-16 surrogate"
                ) from None
    if skill is not None and not isinstance(skill, str):
        raise RequestError("intent field 'skill' must be a string")
    if task is not None and not isinstance(task, str):
        raise RequestError("intent field 'task' must be a string")
    if data is None:
        payload = task or ""
    elif isinstance(data, str):
        payload = data
    else:
        payload = json.dumps(data, ensure_ascii=False)
    if skill:
        if not is_valid_skill_name(skill):
            raise RequestError(
                f"invalid skill name {skill[:80]!r}: skill names are 1-64 lowercase "
                "letters, digits and single hyphens"
            )
        return ParsedIntent(IntentMode.EXPLICIT, skill, task or "", payload)
    return ParsedIntent(IntentMode.TASK, None, task if task else payload, payload)


def outcome(parse: Any, intent: str) -> tuple[str, Any]:
    try:
        parsed = parse(intent)
    except RequestError as exc:
        return ("error", exc.message)
    return ("ok", (parsed.mode, parsed.skill, parsed.task, parsed.input))


def old_request_error(payload: bytes) -> str | None:
    """The message ``Request.from_bytes`` raised through ``model_validate_json``."""
    try:
        Request.model_validate_json(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        return f"malformed request: {problems}"
    return None


# -- strategies -------------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "é ✓", "\u2028", "\x00\x1f", 'q " \\ \n', "x" * 300]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["echo", "guide", "a", "x--y", "-x", "Echo", "abc\n", "a" * 64,
                         "a" * 65, "../x", "x; rm -rf /", "é"]) | texts  # fmt: skip


@st.composite
def intents(draw: st.DrawFn) -> str:
    """Intent texts of every form, structured ones with odd members and odd spacing."""
    kind = draw(st.sampled_from(["object", "object", "object", "slash", "text", "raw"]))
    if kind == "slash":
        return "/" + draw(names) + draw(st.sampled_from(["", " ", "\n", "\t"])) + draw(texts)
    if kind == "text":
        return draw(texts)
    if kind == "raw":  # almost JSON: escapes, surrogates, junk after the object, nesting
        return draw(st.sampled_from([
            '{"skill": "echo", "data": "\\ud800"}', '{"skill": "\\ud83d\\ude00"}',
            '{"task": "\\u00e9"}', '{"skill": "echo"} trailing', '{"skill": "echo"}}',
            '{"skill": "echo",}', "{", "{}", '{"catalog": true}', '{"catalog": 1}',
            '{"skill": null}', '{"data": null}', '{"skill": "echo", "data": NaN}',
            '  {"skill": "echo"}\u3000', '{"skill": "echo"}\n\x1c', "[1, 2]",
            '{"a": ' * 3000 + "1" + "}" * 3000, '{"data": ' + "[" * 3000 + "]" * 3000 + "}",
        ]))  # fmt: skip
    members: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(["skill", "data", "task", "catalog", "other"]),
                             max_size=4, unique=True)):  # fmt: skip
        members[key] = draw(names if key == "skill" else json_values)
    text = json.dumps(members, ensure_ascii=draw(st.booleans()))
    space = st.sampled_from(["", " ", "\n", "\t ", "\u00a0"])
    return draw(space) + text + draw(space)


# -- envelopes ---------------------------------------------------------------------------


@EXAMPLES
@given(
    intent=texts | intents(),
    timestamp=st.floats(min_value=0, max_value=4e9),
    deadline=st.none() | st.floats(min_value=0, max_value=4e9),
    extra=st.dictionaries(st.sampled_from(["future", "x_y"]), json_values, max_size=2),
)
def test_request_bytes_are_the_models_json(
    intent: str, timestamp: float, deadline: float | None, extra: dict[str, Any]
) -> None:
    try:
        request = Request(request_id="r-1", reply_to=REPLY_TO, intent=intent,
                          timestamp=timestamp, deadline=deadline, **extra)  # fmt: skip
        old = request.model_dump_json(exclude_none=True).encode()
    except ValueError:  # a lone surrogate: neither encoding can carry it
        return
    assert request.to_bytes() == old
    assert Request.from_bytes(old) == Request.model_validate_json(old)


traces = st.builds(
    Trace,
    matcher_mode=st.none() | st.sampled_from(["explicit", "keyword"]),
    skill_name=st.none() | texts,
    score=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    candidates=st.none()
    | st.lists(st.fixed_dictionaries({"skill": texts, "score": st.floats(0, 1)}), max_size=2),
    exit_code=st.none() | st.integers(-9, 255),
    queue_ms=st.none() | st.floats(0, 1e6),
    stderr=st.none() | texts,
    attempt=st.none() | st.integers(1, 5),
    redelivered_from=st.none() | st.lists(texts, max_size=2),
    deduplicated=st.none() | st.booleans(),
)


@EXAMPLES
@given(
    status=st.sampled_from(["success", "error"]),
    content=texts,
    error_code=st.none() | st.sampled_from(list(ErrorCode)),
    trace=st.none() | traces,
    elapsed=st.none() | st.floats(0, 1e6),
    hint=st.none() | texts,
)
def test_reply_bytes_are_the_models_json(
    status: str, content: str, error_code: ErrorCode | None, trace: Trace | None,
    elapsed: float | None, hint: str | None,
) -> None:  # fmt: skip
    extra = {"hint": hint} if hint is not None else {}
    try:
        reply = Reply(request_id="r-1", status=status, content=content, error_code=error_code,
                      trace=trace, elapsed_ms=elapsed, skill="echo", **extra)  # fmt: skip
        old = reply.model_dump_json(by_alias=True, exclude_none=True).encode()
    except ValueError:
        return
    assert reply.to_bytes() == old
    assert Reply.from_bytes(old) == Reply.model_validate_json(old)
    assert Reply.from_bytes(old).to_bytes() == old


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b"{}", b'{"request_id": "1"', b'{"request_id": 5}',
     b'{"request_id":"1","reply_to":"AGENT_REPLY_x\\n","intent":"t"}',
     b'{"request_id":"1","reply_to":"AGENT_REPLY_' + b"x" * 244 + b'","intent":"t"}',
     b'{"request_id":"1","reply_to":"AGENT_REPLY_' + b"x" * 245 + b'","intent":"t"}',
     b'{"request_id":"1","reply_to":"AGENT_REPLY_' + b"x" * 5000 + b'","intent":"t"}',
     b'{"request_id":"1","reply_to":"TOPIC_X","intent":"t"}',
     b'{"request_id":"1","reply_to":"AGENT_REPLY_x","intent":{"skill":"echo"}}',
     b'{"request_id":"1","reply_to":"AGENT_REPLY_x","intent":"t","timestamp":"NaN"}',
     b'{"request_id":"a\\nb","reply_to":"AGENT_REPLY_x","intent":"t"}',
     b'{"request_id":"1","reply_to":"AGENT_REPLY_x","intent":' + b"[" * 5000 + b"]" * 5000 + b"}",
     b'{"request_id":"1","reply_to":"AGENT_REPLY_x","intent":"\\ud800"}'],
)  # fmt: skip
def test_hostile_request_payloads_get_the_same_answer(payload: bytes) -> None:
    expected = old_request_error(payload)
    try:
        Request.from_bytes(payload)
    except RequestError as exc:
        assert exc.message == expected
    else:
        assert expected is None
    # Twice: the second answer comes from the reply_to cache, and must not differ.
    try:
        Request.from_bytes(payload)
    except RequestError as exc:
        assert exc.message == expected


# -- intents ------------------------------------------------------------------------------


@EXAMPLES
@given(intent=intents())
def test_intents_resolve_as_the_old_parser_resolved_them(intent: str) -> None:
    assert outcome(parse_intent, intent) == outcome(old_parse_intent, intent)
    # and again, now that the name cache has seen this skill name
    assert outcome(parse_intent, intent) == outcome(old_parse_intent, intent)


@EXAMPLES
@given(intent=intents())
def test_a_kept_value_is_the_input_parsed(intent: str) -> None:
    try:
        parsed = parse_intent(intent)
    except RequestError:
        return
    if parsed.value is not NOT_PARSED:
        assert json.dumps(parsed.value) == json.dumps(json.loads(parsed.input))  # NaN too
        assert input_shape(parsed.input, parsed.value) == input_shape(parsed.input)


@pytest.mark.parametrize(
    ("intent", "message"),
    [('{"skill": "echo", "data": ' + "[" * 100_000 + "]" * 100_000 + "}",
      "the intent's JSON is nested too deeply"),
     ('{"skill": "echo", "data": "\\udc00"}',
      "intent field 'data' holds an unpaired UTF-16 surrogate"),
     ('{"skill": "\\ud800x"}', "intent field 'skill' holds an unpaired UTF-16 surrogate"),
     ('{"skill": "../etc"}', "invalid skill name '../etc'"),
     ('{"skill": "' + "a" * 200 + '"}', "invalid skill name"),
     ('{"skill": ["echo"]}', "intent field 'skill' must be a string")],
)  # fmt: skip
def test_hostile_intents_are_bad_requests_as_before(intent: str, message: str) -> None:
    with pytest.raises(RequestError, match=re.escape(message)):
        parse_intent(intent)
    reply = handler().process_now(request(intent), time.monotonic())
    assert reply is not None and reply.error_code is ErrorCode.BAD_REQUEST
    assert reply.error is not None and message in reply.error


def test_a_parsed_intent_is_the_frozen_value_it_always_was() -> None:
    parsed = parse_intent(json.dumps({"skill": "echo", "data": {"k": [1]}}))
    built = ParsedIntent(IntentMode.EXPLICIT, "echo", "", '{"k": [1]}')
    assert parsed == built and hash(parsed) == hash(built) and repr(parsed) == repr(built)
    assert parsed.value == {"k": [1]} and built.value is NOT_PARSED
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.skill = "other"  # type: ignore[misc]


def test_the_name_and_reply_topic_caches_hold_only_short_values() -> None:
    names_before = protocol._cached_name_check.cache_info().currsize
    topics_before = protocol._cached_reply_to_check.cache_info().currsize
    long_name = "a" * 81
    with pytest.raises(RequestError):
        parse_intent(json.dumps({"skill": long_name}))
    hostile = {"request_id": "1", "reply_to": REPLY_TO + "x" * 300, "intent": "t"}
    with pytest.raises(RequestError):
        Request.from_bytes(json.dumps(hostile).encode())
    assert protocol._cached_name_check.cache_info().currsize == names_before
    assert protocol._cached_reply_to_check.cache_info().currsize == topics_before
    assert protocol._cached_name_check.cache_info().maxsize == 1024
    assert protocol._cached_reply_to_check.cache_info().maxsize == 4096


# -- the handler ----------------------------------------------------------------------


class CountingExecutor(SubprocessExecutor):
    """Runs nothing: answers every run with its input, and counts the runs."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    async def run(self, skill: Skill, stdin: bytes, limits: ExecutionLimits,
                  env: dict[str, str] | None = None) -> ExecutionResult:  # fmt: skip
        self.runs += 1
        return ExecutionResult(exit_code=0, stdout=stdin, stderr=b"", elapsed_ms=0.1)


def handler(executor: SubprocessExecutor | None = None) -> RequestHandler:
    registry = SkillRegistry([TESTING], 1.0, None, "keyword")
    registry.reload()
    config = HandlerConfig(server_id="s1", topics=frozenset([T]))
    return RequestHandler(registry, executor or SubprocessExecutor(), config)


def request(intent: str, rid: str = "r1") -> Request:
    return Request(request_id=rid, reply_to=REPLY_TO, intent=intent, deadline=time.time() + 30)


def test_oversized_and_malformed_payloads_keep_their_codes() -> None:
    h = handler()
    big = request("x" * (h.config.max_request_bytes + 1)).to_bytes()
    too_large = h.decode(big)
    assert not isinstance(too_large, Request)
    assert too_large.reply.error_code is ErrorCode.PAYLOAD_TOO_LARGE
    assert too_large.reply_to == REPLY_TO
    for payload in (b"{", b'{"request_id":"r9","reply_to":"' + REPLY_TO.encode() + b'"}'):
        bad = h.decode(payload)
        assert not isinstance(bad, Request) and bad.reply.error_code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("version", [None, "2.0.1"])
def test_an_instruction_reply_is_what_the_models_gave(tmp_path: Path, version: str | None) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    meta = f"metadata:\n  version: '{version}'\n" if version else ""
    (folder / "SKILL.md").write_text(
        f"---\nname: notes\ndescription: Instruction-only notes.\n{meta}---\nBe brief. é\n"
    )
    registry = SkillRegistry([tmp_path], 1.0, None, "keyword")
    registry.reload()
    h = RequestHandler(registry, SubprocessExecutor(), HandlerConfig("s1", frozenset([T])))
    reply = h.process_now(request(json.dumps({"skill": "notes", "data": "[1]"})), time.monotonic())
    assert reply is not None and reply.trace is not None
    assert reply.skill_version == version
    # The reply as the handler built it before: constructors, then one setattr per field.
    trace = Trace(matcher_mode="explicit", skill_name="notes")
    trace.skill_version = version
    trace.input_shape = "json:array[int]"
    notes = registry.get("notes")
    assert notes is not None and "é" in notes.body
    expected = Reply(request_id="r1", status="success", content=notes.body, skill="notes",
                     skill_version=version, server_id="s1", trace=trace)  # fmt: skip
    expected.elapsed_ms = reply.elapsed_ms
    expected.timestamp = reply.timestamp
    trace.server_id = "s1"
    trace.queue_ms = reply.trace.queue_ms
    assert reply.to_bytes() == expected.to_bytes()
    assert reply == expected
    assert reply.trace.queue_ms is not None and reply.elapsed_ms is not None


async def test_a_script_intent_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting(intent: str) -> ParsedIntent:
        calls.append(intent)
        return parse_intent(intent)

    monkeypatch.setattr(handler_module, "parse_intent", counting)
    executor = CountingExecutor()
    h = handler(executor)
    job = request(json.dumps({"skill": "echo", "data": "hi"}))
    assert h.process_now(job, time.monotonic()) is None  # a script: a worker's job
    reply = await h.process(job, time.monotonic())
    assert reply.ok and reply.content == "hi" and executor.runs == 1
    assert len(calls) == 1
    assert len(h._kept) == 0  # taken by the worker


async def test_a_data_object_is_not_parsed_again_for_its_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[str] = []
    real = json.loads

    def counting(text: Any, **kw: Any) -> Any:
        loads.append(text)
        return real(text, **kw)

    monkeypatch.setattr(json, "loads", counting)
    h = handler(CountingExecutor())
    job = request(json.dumps({"skill": "echo", "data": {"b": 1, "a": [1, "x"]}}))
    assert h.process_now(job, time.monotonic()) is None
    reply = await h.process(job, time.monotonic())
    assert reply.ok and reply.content == '{"b": 1, "a": [1, "x"]}'
    assert reply.trace is not None and reply.trace.input_shape == "json:object{a,b}"
    assert loads == []


def test_intents_kept_for_workers_are_bounded() -> None:
    h = handler(CountingExecutor())
    kept: list[Request] = []
    for i in range(KEPT_INTENTS * 3):  # handed back, never run: never taken
        job = request(json.dumps({"skill": "echo", "data": str(i)}), rid=f"r{i}")
        assert h.process_now(job, time.monotonic()) is None
        kept.append(job)
    assert len(h._kept) == KEPT_INTENTS
    assert h._kept.take(kept[0]) is None  # the oldest went first
    assert h._kept.take(kept[-1]) is not None
    huge = request(json.dumps({"skill": "echo", "data": "x" * KEPT_INTENT_CHARS}))
    assert h.process_now(huge, time.monotonic()) is None
    assert h._kept.take(huge) is None  # too large to keep: parsed again by its worker
    halves = [request(json.dumps({"skill": "echo", "data": "y" * (KEPT_INTENT_CHARS // 2)}),
                      rid=f"h{i}") for i in range(3)]  # fmt: skip
    for job in halves:
        assert h.process_now(job, time.monotonic()) is None
    assert h._kept._chars <= KEPT_INTENT_CHARS
    assert h._kept.take(halves[0]) is None and h._kept.take(halves[2]) is not None


# -- the dedupe window -----------------------------------------------------------------


def payload(text: str) -> bytes:
    return Reply(request_id="r", status="success", content=text).to_bytes()


def test_an_answer_stored_again_is_counted_once() -> None:
    window: DedupeWindow[str] = DedupeWindow()
    key = (REPLY_TO, "r1")
    first, second = payload("a" * 100), payload("b" * 10)
    for reply, now in ((first, 1.0), (second, 2.0)):
        window.start(key, now)  # through the API, without a lookup first
        window.finish(key, reply, now)
    assert len(window) == 1
    assert window._bytes == len(second)
    answer = window.lookup(key, "dup", 3.0)
    assert isinstance(answer, bytes) and Reply.from_bytes(answer).content == "b" * 10


def test_the_window_holds_its_bounds_under_a_stream_of_answers() -> None:
    window: DedupeWindow[str] = DedupeWindow(DedupeConfig(max_entries=50, max_bytes=4000))
    sizes: dict[str, int] = {}
    for i in range(5000):
        key = (REPLY_TO, f"r{i}")
        assert window.lookup(key, "job", float(i)) is False
        window.start(key, float(i))
        reply = payload("z" * (i % 90))
        sizes[key[1]] = len(reply)
        window.finish(key, reply, float(i))
        assert len(window._answered) <= 50 and window._bytes <= 4000
    kept = list(window._answered)
    assert window._bytes == sum(sizes[rid] for _, rid in kept)
    assert kept[-1] == (REPLY_TO, "r4999")  # the newest stays, the oldest went


def test_an_expired_answer_is_not_given_even_before_it_is_evicted() -> None:
    window: DedupeWindow[str] = DedupeWindow(DedupeConfig(max_age=10.0))
    old, young = (REPLY_TO, "old"), (REPLY_TO, "young")
    window.start(old, 0.0)
    window.finish(old, payload("old"), 0.0)
    window.start(young, 9.0)
    window.finish(young, payload("young"), 9.0)
    assert window.lookup(young, "dup", 15.0) is not False  # answerable, and no eviction yet
    assert len(window) == 2
    assert window.lookup(old, "dup", 15.0) is False  # 15 s old: past max_age
    assert len(window) == 1  # and it went, with anything else expired


def test_duplicates_of_a_running_request_are_handed_its_reply() -> None:
    window: DedupeWindow[str] = DedupeWindow()
    key = (REPLY_TO, "r1")
    window.start(key, 0.0)
    assert window.finish(key, payload("a"), 0.1) == []  # nobody waited
    other = (REPLY_TO, "r2")
    window.start(other, 0.2)
    assert window.lookup(other, "d1", 0.3) is True
    assert window.lookup(other, "d2", 0.3) is True
    assert window.abandon(other) == ["d1", "d2"]
    assert window.abandon(other) == []
