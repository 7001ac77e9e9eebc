"""End to end over real ZeroMQ: proxy and servers as processes, SDK and bare clients."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from skillscale import (
    ErrorCode,
    ExecutionError,
    RequestError,
    SkillNotFoundError,
    SkillScaleClient,
    SkillTimeoutError,
    SyncSkillScaleClient,
    UnavailableError,
)
from tests.helpers import (
    FIXTURE_SKILLS,
    ReferenceClient,
    RoleProcess,
    start_server,
    wait_pid_gone,
)

pytestmark = pytest.mark.integration
T = "TOPIC_TESTING"


def skill(name: str, data: str = "") -> str:
    return json.dumps({"skill": name, "data": data})


async def test_explicit_skill(client: SkillScaleClient, testing_server: RoleProcess) -> None:
    reply = await client.call(T, skill("echo", "hello bus"))
    assert reply.ok and reply.content == "hello bus"
    assert reply.skill == "echo" and reply.skill_version == "1.2.3"
    assert reply.server_id == testing_server.ready["server_id"]
    assert reply.trace is not None
    assert reply.trace.matcher_mode == "explicit" and reply.trace.exit_code == 0
    assert reply.trace.elapsed_ms is not None and reply.trace.elapsed_ms > 0


async def test_input_nested_past_the_json_parser_still_reaches_the_skill(
    client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    deep = "[" * 5000 + "]" * 5000  # a skill's input, not the request's structure
    reply = await client.call(T, skill("echo", deep))
    assert reply.ok and reply.content == deep, (reply.error_code, reply.error)


async def test_invoke_helpers(client: SkillScaleClient, testing_server: RoleProcess) -> None:
    assert await client.invoke_skill(T, "echo", "x") == "x"
    assert await client.invoke_skill(T, "echo", {"a": 1}) == '{"a": 1}'
    assert await client.invoke(T, "/echo slash rest") == "slash rest"
    assert (await client.invoke_task(T, "please echo and repeat this")).startswith("please")
    assert "Haiku" in await client.invoke(T, "/guide")


async def test_no_match_lists_closest(
    client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    reply = await client.call(T, "what is the weather in Paris?")
    assert not reply.ok and reply.error_code is ErrorCode.NO_MATCH
    assert reply.error and "threshold" in reply.error
    with pytest.raises(SkillNotFoundError):
        await client.invoke(T, "what is the weather in Paris?")


async def test_concurrent_requests_are_correlated(
    client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    payloads = [f"payload-{i}" for i in range(60)]
    results = await client.invoke_parallel([(T, skill("echo", p)) for p in payloads])
    assert results == payloads


async def test_two_clients_do_not_see_each_others_replies(
    proxy: RoleProcess, testing_server: RoleProcess
) -> None:
    async with (
        SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as a,
        SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as b,
    ):
        ra, rb = await asyncio.gather(
            a.invoke_skill(T, "echo", "from-a"), b.invoke_skill(T, "echo", "from-b")
        )
    assert (ra, rb) == ("from-a", "from-b")


def test_reference_client_protocol(
    ref_client: ReferenceClient, testing_server: RoleProcess
) -> None:
    rid = ref_client.send(T, json.dumps({"skill": "echo", "data": "ref"}))
    reply = ref_client.recv()
    assert reply["request_id"] == rid
    assert reply["status"] == "success" and reply["content"] == "ref"
    assert "_trace" in reply and reply["_trace"]["skill_name"] == "echo"
    rid = ref_client.send(T, "/echo plain")
    reply = ref_client.recv()
    assert reply["request_id"] == rid and reply["content"] == "plain"
    # Error replies keep the reference fields too.
    rid = ref_client.send(T, json.dumps({"skill": "nope", "data": ""}))
    reply = ref_client.recv()
    while reply["request_id"] != rid:
        reply = ref_client.recv()
    assert (
        reply["status"] == "error" and reply["error"] and reply["error_code"] == "skill_not_found"
    )


def test_sync_client(proxy: RoleProcess, testing_server: RoleProcess) -> None:
    with SyncSkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], timeout=20) as c:
        assert c.invoke_skill(T, "echo", "sync") == "sync"
        with pytest.raises(SkillNotFoundError):
            c.invoke(T, "/missing-skill")


async def test_client_timeout_is_typed(
    client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    started = time.monotonic()
    with pytest.raises(SkillTimeoutError) as info:
        await client.invoke(T, skill("slow", "3"), timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert info.value.code is ErrorCode.TIMEOUT


async def test_topic_without_server_gets_no_server(client: SkillScaleClient) -> None:
    # The shared proxy waits 5 s (its default) for a first server of a topic.
    started = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        await client.invoke("TOPIC_NOBODY_HOME", "anything", timeout=10)
    assert info.value.code is ErrorCode.NO_SERVER
    assert 4.5 < time.monotonic() - started < 8


async def test_caller_timeout_before_the_no_server_wait(client: SkillScaleClient) -> None:
    with pytest.raises(SkillTimeoutError):
        await client.invoke("TOPIC_NOBODY_HOME", "anything", timeout=0.3)


async def test_connect_to_missing_proxy_fails_clearly() -> None:
    c = SkillScaleClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", connect_timeout=0.3)
    with pytest.raises(UnavailableError, match="proxy"):
        await c.connect()


@pytest.mark.parametrize("mode", ["group", "pubsub"])
async def test_whole_topic_matching(
    proxy: RoleProcess, client: SkillScaleClient, mode: str
) -> None:
    short = start_server(proxy, FIXTURE_SKILLS / "testing", "TOPIC_ECHO", mode=mode)
    longer = start_server(proxy, FIXTURE_SKILLS / "testing", "TOPIC_ECHO_V2", mode=mode)
    try:
        reply = await client.call("TOPIC_ECHO_V2", skill("echo", "v2"))
        assert reply.ok and reply.server_id == longer.ready["server_id"]
        # The short server would have answered the V2 request before this
        # sentinel (one ordered path): if this is the next reply, it did not.
        sentinel = await client.call("TOPIC_ECHO", skill("echo", "sentinel"))
        assert sentinel.server_id == short.ready["server_id"]
    finally:
        short.close()
        longer.close()


# -- bad input: an error reply each, and the server keeps serving -------------


async def assert_still_serving(client: SkillScaleClient) -> None:
    assert await client.invoke_skill(T, "echo", "alive") == "alive"


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"not json at all"], "bad_request"),
        ([b'{"reply_to": "%s", "intent": 5}'], "bad_request"),
        ([b'{"request_id": "r1", "reply_to": "%s"}'], "bad_request"),
        ([b'{"request_id": "r1", "reply_to": "%s", "intent": "x"}', b"extra"], "bad_request"),
    ],
)
def test_malformed_requests_get_error_replies(
    ref_client: ReferenceClient, testing_server: RoleProcess, frames: list[bytes], code: str
) -> None:
    payload = [f.replace(b"%s", ref_client.reply_topic.encode()) for f in frames]
    ref_client.send_raw([T.encode(), *payload])
    if payload[0] == b"not json at all":
        # No reply address can be salvaged: the server must survive it.
        rid = ref_client.send(T, json.dumps({"skill": "echo", "data": "after"}))
        reply = ref_client.recv()
        assert reply["request_id"] == rid and reply["content"] == "after"
        return
    reply = ref_client.recv()
    assert reply["status"] == "error" and reply["error_code"] == code and reply["error"]


async def test_unknown_and_hostile_skill_names(
    client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    reply = await client.call(T, skill("no-such-skill", "x"))
    assert reply.error_code is ErrorCode.SKILL_NOT_FOUND and reply.error and "echo" in reply.error
    for hostile in ("../x", "x; rm -rf /", "$(touch /tmp/pwned)", "echo && id"):
        reply = await client.call(T, skill(hostile, "x"))
        assert reply.error_code is ErrorCode.BAD_REQUEST, hostile
    assert not Path("/tmp/pwned").exists()
    await assert_still_serving(client)


async def test_ten_megabyte_payload_is_refused(
    client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    with pytest.raises(RequestError) as info:
        await client.invoke(T, skill("echo", "x" * (10 * 1024 * 1024)))
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    await assert_still_serving(client)


async def test_large_input_within_limits(
    client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    data = "y" * (3 * 1024 * 1024)
    assert await client.invoke_skill(T, "echo", data) == data
    reply = await client.call(T, skill("noread", "z" * (200 * 1024)))
    assert reply.ok and "stdin-only=1" in reply.content


async def test_hanging_skill_is_killed_with_children(
    client: SkillScaleClient, testing_server: RoleProcess, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    reply = await client.call(T, skill("hang", str(pid_file)))
    assert reply.error_code is ErrorCode.TIMEOUT
    assert reply.error and "1 s limit" in reply.error
    assert time.monotonic() - started < 4
    grandchild = int(pid_file.read_text())
    assert wait_pid_gone(grandchild)
    await assert_still_serving(client)


async def test_crashing_skill(client: SkillScaleClient, testing_server: RoleProcess) -> None:
    reply = await client.call(T, skill("crash"))
    assert reply.error_code is ErrorCode.EXEC_FAILED
    assert reply.error and "status 3" in reply.error and "fixture crash" in reply.error
    assert reply.trace and reply.trace.exit_code == 3 and "Traceback" in (reply.trace.stderr or "")
    with pytest.raises(ExecutionError):
        await client.invoke(T, skill("crash"))
    await assert_still_serving(client)


async def test_invalid_utf8_output(client: SkillScaleClient, testing_server: RoleProcess) -> None:
    reply = await client.call(T, skill("binary"))
    assert reply.ok and reply.content.startswith("ok ") and reply.content.endswith(" end")
    assert "\ufffd" in reply.content
    assert reply.trace and reply.trace.invalid_utf8 is True
    await assert_still_serving(client)


async def test_fifty_megabytes_of_output(
    client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    reply = await client.call(T, skill("flood"))
    assert reply.error_code is ErrorCode.OUTPUT_TOO_LARGE and reply.content == ""
    await assert_still_serving(client)


def test_caller_deadline_already_passed(
    ref_client: ReferenceClient, testing_server: RoleProcess
) -> None:
    payload = {
        "request_id": "late",
        "reply_to": ref_client.reply_topic,
        "intent": "/echo x",
        "timestamp": time.time(),
        "deadline": time.time() - 1,
    }
    ref_client.send_raw([T.encode(), json.dumps(payload).encode()])
    reply = ref_client.recv()
    assert reply["request_id"] == "late" and reply["error_code"] == "deadline_exceeded"


async def test_proxy_metrics_count_messages(
    proxy: RoleProcess, client: SkillScaleClient, testing_server: RoleProcess
) -> None:
    async def scrape() -> dict[str, float]:
        async with httpx.AsyncClient() as http:
            text = (await http.get(proxy.ready["metrics"], timeout=5)).text
        values = {}
        for line in text.splitlines():
            if line.startswith("skillscale_") and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    key = 'skillscale_proxy_messages_total{direction="downstream",topic="TOPIC_TESTING"}'
    before = (await scrape()).get(key, 0.0)
    for i in range(5):
        await client.invoke_skill(T, "echo", str(i))
    after = await scrape()
    assert after[key] - before == 5
    assert (
        after['skillscale_proxy_messages_total{direction="downstream",topic="AGENT_REPLY_*"}'] >= 5
    )
    assert after["skillscale_proxy_subscriptions"] >= 1  # at least the client's reply topic
    assert after['skillscale_topic_replicas{topic="TOPIC_TESTING"}'] == 1
    assert 'skillscale_topic_queue_depth{topic="TOPIC_TESTING"}' in after
    assert 'skillscale_topic_inflight{topic="TOPIC_TESTING"}' in after
    assert 'skillscale_proxy_bytes_total{direction="downstream",topic="TOPIC_TESTING"}' in after


@pytest.mark.parametrize("mode", ["group", "pubsub"])
async def test_server_stops_gracefully_finishing_in_flight_work(
    proxy: RoleProcess, client: SkillScaleClient, testing_server: RoleProcess, mode: str
) -> None:
    server = start_server(proxy, FIXTURE_SKILLS / "testing", "TOPIC_GRACEFUL", grace=10, mode=mode)
    try:
        pending = asyncio.ensure_future(client.call("TOPIC_GRACEFUL", skill("slow", "1")))
        # The request is in flight once the server's proxy has forwarded it;
        # our own echo through the bus orders after it on the same path.
        await client.invoke_skill(T, "echo", "barrier")
        server.signal(signal.SIGTERM)
        reply = await pending
        assert reply.ok and reply.content.strip() == "slept 1.0"
        assert await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 15) == 0
    finally:
        server.close()


def test_idle_server_exits_zero_on_sigterm(proxy: RoleProcess) -> None:
    server = start_server(proxy, FIXTURE_SKILLS / "testing", "TOPIC_STOP_TEST")
    assert server.stop() == 0


async def test_pubsub_server_full_queue_answers_overloaded_and_loses_nothing(
    proxy: RoleProcess, client: SkillScaleClient
) -> None:
    server = start_server(
        proxy, FIXTURE_SKILLS / "testing", "TOPIC_TINY", workers=1, queue_size=1, mode="pubsub"
    )
    try:
        replies = await asyncio.gather(
            *(client.call("TOPIC_TINY", skill("slow", "0.5")) for _ in range(6))
        )
        codes = [r.error_code for r in replies]
        assert len(replies) == 6
        assert codes.count(None) == 2  # one running, one queued
        assert codes.count(ErrorCode.OVERLOADED) == 4
        assert set(codes) <= {None, ErrorCode.OVERLOADED}
        assert all("retry" in (r.error or "retry") for r in replies)
    finally:
        server.close()


async def test_added_and_edited_skills_take_effect_without_a_restart(
    proxy: RoleProcess, client: SkillScaleClient, tmp_path: Path
) -> None:
    root = tmp_path / "live"
    (root / "first" / "scripts").mkdir(parents=True)
    (root / "first" / "SKILL.md").write_text("---\nname: first\ndescription: One.\n---\n")
    (root / "first" / "scripts" / "run.py").write_text("print('first')\n")
    server = start_server(proxy, root, "TOPIC_LIVE", reload_interval=0.2)

    async def catalog_until(predicate: object) -> list[dict[str, object]]:
        # Each round trip is an event; the server rescans every 0.2 s.
        for _ in range(500):
            listing = json.loads(await client.invoke("TOPIC_LIVE", {"catalog": True}))
            if predicate(listing):  # type: ignore[operator]
                return listing  # type: ignore[no-any-return]
        raise AssertionError("the server never picked up the change")

    try:
        assert [s["name"] for s in await catalog_until(lambda listing: True)] == ["first"]
        (root / "second" / "scripts").mkdir(parents=True)
        (root / "second" / "scripts" / "run.py").write_text("print('second')\n")
        (root / "second" / "SKILL.md").write_text("---\nname: second\ndescription: Two.\n---\n")
        await catalog_until(lambda listing: [s["name"] for s in listing] == ["first", "second"])
        assert (await client.invoke("TOPIC_LIVE", "/second")).strip() == "second"
        (root / "first" / "SKILL.md").write_text("---\nname: first\ndescription: Uno.\n---\n")
        listing = await catalog_until(lambda listing: listing[0]["description"] == "Uno.")
        assert listing[0]["name"] == "first"
    finally:
        server.close()
