"""The HTTP gateway's API through httpx's ASGI transport, over the in-memory fabric.

One module-scoped fabric (proxy, one server per bundled topic, the gateway)
runs on a :class:`~skillscale.core.memory_bus.MemoryBus`; requests go
through the real app, middleware and SDK client, and the skills run as real
child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from skillscale.core.errors import ErrorCode, SkillTimeoutError, UnavailableError
from skillscale.gateway import Gateway, GatewayConfig, create_app
from skillscale.gateway.app import GatewayApp
from skillscale.gateway.security import check_exposure
from skillscale.gateway.service import http_status, parse_metrics, parse_replicas, replicas_url
from skillscale.proxy.metrics import DOWNSTREAM, ProxyMetrics
from tests.helpers import BUNDLED_SKILLS, FIXTURE_SKILLS
from tests.test_fabric_cases import CSV, Fabric

pytestmark = pytest.mark.timeout(60)
shared_loop = pytest.mark.asyncio(loop_scope="module")

DATA = "TOPIC_DATA_PROCESSING"
CODE = "TOPIC_CODE_ANALYSIS"
BASE = "http://127.0.0.1:8401"
TEXT = (
    "summarize: ZeroMQ is a messaging library. It provides sockets that carry whole "
    "messages. Publish-subscribe is one of its core patterns."
)


class Env:
    def __init__(self, fabric: Fabric, gateway: Gateway, http: httpx.AsyncClient) -> None:
        self.fabric, self.gateway, self.http = fabric, gateway, http


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env() -> AsyncIterator[Env]:
    fabric = Fabric("memory")
    try:
        proxy = await fabric.start_proxy()
        await fabric.start_server(BUNDLED_SKILLS / "data-processing", DATA, "data-1")
        await fabric.start_server(BUNDLED_SKILLS / "code-analysis", CODE, "code-1")
        config = GatewayConfig(
            proxy_xsub=proxy.xsub_endpoint,
            proxy_xpub=proxy.xpub_endpoint,
            metrics_url=None,
            skills_dirs=[BUNDLED_SKILLS],
            timeout=20,
        )
        async with Gateway(config, transport=fabric.bus) as gateway:
            transport = httpx.ASGITransport(app=create_app(gateway))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                yield Env(fabric, gateway, http)
    finally:
        await asyncio.wait_for(fabric.close(), 20)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["status"] == response.status_code and error["message"]
    return error


@shared_loop
async def test_topics_and_skills_are_the_live_catalogue(env: Env) -> None:
    topics = (await env.http.get("/v1/topics")).json()["topics"]
    assert {t["topic"]: (t["live"], sorted(t["skills"])) for t in topics} == {
        CODE: (True, ["code-complexity", "dead-code-detector"]),
        DATA: (True, ["csv-analyzer", "text-summarizer"]),
    }
    skills = (await env.http.get("/v1/skills", params={"topic": DATA})).json()["skills"]
    by_name = {s["name"]: s for s in skills}
    assert set(by_name) == {"csv-analyzer", "text-summarizer"}
    assert all(s["live"] and s["valid"] and s["topic"] == DATA for s in skills)
    assert "# " in by_name["csv-analyzer"]["body"]  # the SKILL.md body, for the console


@shared_loop
async def test_a_task_is_answered_and_kept_with_its_trace_events(env: Env) -> None:
    events = env.gateway.listen()
    first = asyncio.ensure_future(anext(events))  # listening before the request is sent
    await asyncio.sleep(0)
    response = await env.http.post(f"/v1/topics/{DATA}/invoke", json={"task": TEXT})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["skill"] == "text-summarizer"
    assert "## Summary" in body["content"]
    assert body["trace"]["matcher_mode"] and body["trace"]["attempt"] == 1
    timing = body["timing"]
    assert timing["gateway_ms"] >= timing["server_ms"] >= timing["exec_ms"] > 0
    rid = body["request_id"]
    seen: list[dict[str, Any]] = []
    try:
        event = await asyncio.wait_for(first, 10)
        while event.get("event") != "execution" or event.get("request_id") != rid:
            seen.append(event)
            event = await asyncio.wait_for(anext(events), 10)
    finally:
        await events.aclose()
    record = (await env.http.get(f"/v1/requests/{rid}")).json()
    assert record["status"] == "success" and record["topic"] == DATA
    assert record["intent"] == {"task": TEXT}
    assert [e["outcome"] for e in record["events"]] == ["success"]
    listing = (await env.http.get("/v1/requests", params={"limit": 5})).json()["requests"]
    assert listing[0]["request_id"] == rid


@shared_loop
async def test_an_explicit_skill_gets_its_data(env: Env) -> None:
    response = await env.http.post(
        f"/v1/topics/{DATA}/invoke", json={"skill": "csv-analyzer", "data": CSV}
    )
    assert response.status_code == 200, response.text
    assert response.json()["skill"] == "csv-analyzer"
    assert "revenue" in response.json()["content"]


@shared_loop
async def test_routed_invoke_picks_the_topic(env: Env) -> None:
    response = await env.http.post(
        "/v1/invoke", json={"task": "find dead code in this python: def unused(): pass"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["route"]["topic"] == CODE and body["route"]["mode"] == "keyword"
    assert body["skill"] == "dead-code-detector"
    nothing = await env.http.post("/v1/invoke", json={"task": "qwzx vbnm plokij"})
    assert nothing.status_code == 404 and error_of(nothing)["code"] == "no_match"


@shared_loop
async def test_fabric_errors_map_to_statuses_in_one_shape(env: Env) -> None:
    unknown = await env.http.post("/v1/topics/TOPIC_NOPE/invoke", json={"task": "x"})
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "no_server"
    assert DATA in error_of(unknown)["message"]
    missing = await env.http.post(f"/v1/topics/{DATA}/invoke", json={"skill": "nope"})
    assert missing.status_code == 404 and error_of(missing)["code"] == "skill_not_found"
    assert error_of(missing)["request_id"]
    empty = await env.http.post(f"/v1/topics/{DATA}/invoke", json={})
    assert empty.status_code == 422 and error_of(empty)["code"] == "bad_request"
    junk = await env.http.post(f"/v1/topics/{DATA}/invoke", content=b"{not json")
    assert junk.status_code == 422 and error_of(junk)["code"] == "bad_request"
    hostile = await env.http.post(f"/v1/topics/{DATA}/invoke", json={"skill": "../../etc"})
    assert hostile.status_code == 422
    big = await env.http.post(
        f"/v1/topics/{DATA}/invoke",
        content=b'{"task": "' + b"a" * (8 * 1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413 and error_of(big)["code"] == "payload_too_large"
    gone = await env.http.get("/v1/requests/not-a-recent-one")
    assert gone.status_code == 404 and error_of(gone)["code"] == "not_found"
    assert error_of(await env.http.get("/v1/nothing-here"))["code"] == "http_error"


@shared_loop
async def test_the_lean_invoke_path_answers_as_fastapi_does(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(env.gateway)
    lean: list[str] = []
    original = GatewayApp._invoke

    async def spy(self: GatewayApp, topic: str, *args: Any) -> None:
        lean.append(topic)
        await original(self, topic, *args)

    monkeypatch.setattr(GatewayApp, "_invoke", spy)
    transport = httpx.ASGITransport(app=app)
    path = f"/v1/topics/{DATA}/invoke"
    body = {"skill": "csv-analyzer", "data": CSV}
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        fast = await http.post(path, json=body)
        assert lean == [DATA]
        # A browser's request (it sends Origin) goes through FastAPI's own route.
        routed = await http.post(path, json=body, headers={"origin": BASE})
        assert lean == [DATA]
        assert fast.status_code == routed.status_code == 200, (fast.text, routed.text)
        assert fast.headers["content-type"] == routed.headers["content-type"]
        one, two = fast.json(), routed.json()
        assert set(one) == set(two) and one["skill_version"] and one["content"] == two["content"]
        # A body that does not validate is replayed into FastAPI: the same 422.
        json_type = {"content-type": "application/json"}
        for bad in (b'{"skill": "../x"}', b"{not json", b'{"task": "x", "extra": 1}'):
            answers = [
                await http.post(path, content=bad, headers=headers)
                for headers in (json_type, {**json_type, "origin": BASE})
            ]
            assert [a.status_code for a in answers] == [422, 422]
            assert error_of(answers[0]) == error_of(answers[1])
        assert len(lean) == 4  # tried the lean path, then handed over

        # A chunked body (no Content-Length) over the limit is refused on the way in.
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"task": "'
            for _ in range(9):
                yield b"a" * (1024 * 1024)
            yield b'"}'

        big = await http.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert big.status_code == 413 and error_of(big)["code"] == "payload_too_large"
        assert len(lean) == 5


@shared_loop
@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (UnavailableError("queue full", code=ErrorCode.OVERLOADED), 503),
        (SkillTimeoutError("no reply in 1 s"), 504),
    ],
)
async def test_overload_and_timeout_statuses(
    env: Env, monkeypatch: pytest.MonkeyPatch, raised: Exception, status: int
) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise raised

    monkeypatch.setattr(env.gateway.client, "call", refuse)
    response = await env.http.post(f"/v1/topics/{DATA}/invoke", json={"task": "x"})
    assert response.status_code == status
    assert error_of(response)["code"] == raised.code.value  # type: ignore[attr-defined]
    assert (response.headers.get("retry-after") == "1") == (status == 503)


def test_every_code_has_a_status() -> None:
    statuses = {code: http_status(code) for code in ErrorCode}
    assert statuses[ErrorCode.NO_MATCH] == 404 and statuses[ErrorCode.OVERLOADED] == 503
    assert statuses[ErrorCode.BAD_REQUEST] == 400 and statuses[ErrorCode.TIMEOUT] == 504
    assert statuses[ErrorCode.PAYLOAD_TOO_LARGE] == 413
    assert all(400 <= s < 600 for s in statuses.values())


@shared_loop
async def test_dns_rebinding_is_refused_on_loopback(env: Env) -> None:
    evil_host = await env.http.get("/v1/topics", headers={"host": "attacker.example:8401"})
    assert evil_host.status_code == 421 and error_of(evil_host)["code"] == "bad_host"
    evil_origin = await env.http.get("/v1/topics", headers={"origin": "http://attacker.example"})
    assert evil_origin.status_code == 403
    own = await env.http.get("/healthz", headers={"origin": BASE})
    assert own.status_code == 200
    assert "access-control-allow-origin" not in own.headers  # CORS is off by default


async def test_a_token_is_required_when_configured() -> None:
    config = GatewayConfig(host="10.1.2.3", port=8401, token="s3cret", metrics_url=None)
    transport = httpx.ASGITransport(app=create_app(Gateway(config)))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.example") as http:
        refused = await http.get("/v1/stats")
        assert refused.status_code == 401 and error_of(refused)["code"] == "unauthorized"
        wrong = await http.get("/v1/stats", headers={"authorization": "Bearer s3cre"})
        assert wrong.status_code == 401
        ok = await http.get("/v1/stats", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["available"] is False
        assert (await http.get("/healthz")).status_code == 200  # probes carry no secret
        assert (await http.get("/")).status_code == 200  # nor does the console page
        assert (await http.get("/readyz")).status_code == 503  # never started


def test_beyond_loopback_needs_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="bearer token"):
        check_exposure("0.0.0.0", None)
    check_exposure("0.0.0.0", "t")
    check_exposure("127.0.0.1", None)
    from skillscale.tools.cli import main

    with contextlib.suppress(SystemExit):
        assert main(["gateway", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "SKILLSCALE_GATEWAY_TOKEN" in capsys.readouterr().err


async def test_versions_promote_and_rollback(tmp_path: Path) -> None:
    from skillscale.core.rollout import propose_candidate

    skill = tmp_path / "skills" / "trivial" / "echo"
    shutil.copytree(FIXTURE_SKILLS / "testing" / "echo", skill)
    better = tmp_path / "better" / "echo"
    shutil.copytree(skill, better)
    (better / "SKILL.md").write_text(
        (better / "SKILL.md").read_text().replace("Test fixture.", "Better fixture.")
    )
    config = GatewayConfig(metrics_url=None, skills_dirs=[tmp_path / "skills"])
    transport = httpx.ASGITransport(app=create_app(Gateway(config)))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        path = "/v1/skills/TOPIC_TRIVIAL/echo"
        plain = (await http.get(path + "/rollout")).json()
        assert plain["managed"] is False and plain["state"] == "active"
        version = propose_candidate(skill, better, {"by": "test"})
        status = (await http.get(path + "/rollout")).json()
        assert status["managed"] and status["canary"]["version"] == version
        promoted = await http.post(path + "/promote", json={"reason": "looks better"})
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["active"] == version and promoted.json()["canary"] is None
        assert "Better fixture." in (skill / "SKILL.md").read_text()
        back = await http.post(path + "/rollback", json={})
        assert back.status_code == 200 and back.json()["active"] != version
        assert "Better fixture." not in (skill / "SKILL.md").read_text()
        missing = await http.get("/v1/skills/TOPIC_TRIVIAL/nope/rollout")
        assert missing.status_code == 404 and error_of(missing)["code"] == "skill_not_found"
        again = await http.post(path + "/promote", json={})
        assert again.status_code == 400 and error_of(again)["code"] == "bad_request"


async def test_versions_diff_history_and_the_canary_evidence(tmp_path: Path) -> None:
    from skillscale.core import rollout, skill_history

    skill = tmp_path / "skills" / "trivial" / "echo"
    shutil.copytree(FIXTURE_SKILLS / "testing" / "echo", skill)
    better = tmp_path / "better" / "echo"
    shutil.copytree(skill, better)
    (better / "SKILL.md").write_text(
        (better / "SKILL.md").read_text().replace("Test fixture.", "Better fixture.")
    )
    (better / "scripts" / "helper.py").write_text("VALUE = 1\n")
    config = GatewayConfig(metrics_url=None, skills_dirs=[tmp_path / "skills"])
    transport = httpx.ASGITransport(app=create_app(Gateway(config)))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        path = "/v1/skills/TOPIC_TRIVIAL/echo"
        alone = await http.get(path + "/diff")
        assert alone.status_code == 400 and "one version" in error_of(alone)["message"]
        skill_history.commit(skill, "initial")
        version = rollout.propose_candidate(skill, better, {"by": "test"})
        diff = (await http.get(path + "/diff")).json()
        assert (diff["old"], diff["new"]) == ("1", version)
        changes = {f["path"]: f for f in diff["files"]}
        assert changes["scripts/helper.py"]["change"] == "added"
        skill_md = changes["SKILL.md"]
        assert skill_md["change"] == "modified"
        assert "-Test fixture." in skill_md["diff"] and "+Better fixture." in skill_md["diff"]
        back = (await http.get(path + "/diff", params={"old": version, "new": "1"})).json()
        assert {f["path"]: f["change"] for f in back["files"]}["scripts/helper.py"] == "removed"
        unknown = await http.get(path + "/diff", params={"old": "1", "new": "99"})
        assert unknown.status_code == 404 and "no stored files" in error_of(unknown)["message"]
        mixed = await http.get(path + "/diff", params={"old": "1", "new": "git:HEAD"})
        assert mixed.status_code == 400
        hostile = await http.get(path + "/diff", params={"old": "../../etc", "new": "1"})
        assert hostile.status_code == 422

        # The canary's evidence, sampled each time it changed when the gateway read it.
        first = (await http.get(path + "/rollout")).json()
        assert [s["pairs"] for s in first["canary_history"]] == [0]
        for arm, success in [("candidate", True), ("active", False)] * 3:
            state = rollout.read_rollout(skill)
            assert state is not None and state.canary is not None
            state.canary.record(arm, success)  # type: ignore[arg-type]
            rollout.write_rollout(skill, state)
            await http.get(path + "/rollout")
        again = (await http.get(path + "/rollout")).json()
        history = again["canary_history"]
        # Each outcome is a sample: a candidate one waits for its partner, then pairs.
        assert [s["pairs"] for s in history] == [0, 0, 1, 1, 2, 2, 3]
        assert history[-1]["candidate_wins"] == 3 and history[-1]["candidate_successes"] == 3
        assert history[-1]["llr"] == again["canary"]["llr"] > 0
        lower, upper = again["canary"]["bounds"]
        assert lower < 0 < upper

        # Promotion commits to the skill's own history; its diff reads from git.
        assert (await http.post(path + "/promote", json={})).status_code == 200
        entries = (await http.get(path + "/history")).json()["entries"]
        assert entries and "promote" in entries[0]["message"]
        if len(entries) > 1:
            git = await http.get(path + "/diff", params={"old": "git:HEAD~1", "new": "git:HEAD"})
            assert git.status_code == 200, git.text
        after = (await http.get(path + "/diff")).json()
        assert (after["old"], after["new"]) == ("1", version)  # the one replaced, then now


def test_stats_parse_what_the_proxy_exports() -> None:
    metrics = ProxyMetrics()
    metrics.replicas.labels(DATA).set(2)
    metrics.queue_depth.labels(DATA).set(3)
    metrics.inflight.labels(DATA).set(1)
    metrics.messages.labels(DATA, DOWNSTREAM).inc(7)
    metrics.error_replies.labels("overloaded").inc(4)
    metrics.redelivered.inc()
    from prometheus_client import generate_latest

    stats = parse_metrics(generate_latest(metrics.registry).decode(), "http://x/metrics", 1.0)
    assert stats.available
    (topic,) = [t for t in stats.topics if t.topic == DATA]
    assert (topic.replicas, topic.queue_depth, topic.inflight, topic.messages) == (2, 3, 1, 7.0)
    assert stats.error_replies == {"overloaded": 4.0} and stats.redelivered == 1.0
    broken = parse_metrics("this is { not prometheus", "http://x/metrics", 1.0)
    assert not broken.available and broken.error


def test_replica_state_is_exported_and_read_back() -> None:
    from skillscale.core.replica_protocol import ServerState
    from skillscale.proxy.groups import Job, Member

    def member(sid: str, *, draining: bool = False, inflight: int = 0) -> Member:
        state = ServerState(server_id=sid, topics=[DATA], slots=4, busy=inflight,
                            draining=draining)  # fmt: skip
        jobs = {bytes([i]): Job(bytes([i]), DATA.encode(), b"{}", 0.0) for i in range(inflight)}
        return Member(sid.encode(), state, time.monotonic(), inflight=jobs)

    metrics = ProxyMetrics()
    metrics.set_replicas([member("data-2", draining=True), member("data-1", inflight=3)])
    status, ctype, raw = metrics.replica_rows({})
    assert status == 200 and ctype == "application/json"
    rows, problem = parse_replicas(raw.decode())
    assert problem is None
    assert [(r.server_id, r.state, r.slots, r.inflight, r.busy) for r in rows] == [
        ("data-1", "up", 4, 3, 3),
        ("data-2", "draining", 4, 0, 0),
    ]
    from prometheus_client import generate_latest

    stats = parse_metrics(generate_latest(metrics.registry).decode(), "http://x/metrics", 1.0)
    (topic,) = stats.topics
    assert (topic.topic, topic.slots, topic.draining) == (DATA, 4, 1)
    # The drained replica left: its topic's gauges fall back to 0, not stay stale.
    metrics.set_replicas([member("data-1")])
    stats = parse_metrics(generate_latest(metrics.registry).decode(), "http://x/metrics", 1.0)
    assert (stats.topics[0].slots, stats.topics[0].draining) == (4, 0)
    # What the gateway reads is checked like any input: a hostile row is left out.
    doc = json.loads(raw)
    doc["replicas"].append({**doc["replicas"][0], "server_id": "<script>x</script>"})
    doc["replicas"].append({"server_id": "x"})
    kept, problem = parse_replicas(json.dumps(doc))
    assert len(kept) == 2 and problem == "2 replica rows did not validate"
    assert parse_replicas("[1, 2]")[1] == "unparsable replica list: TypeError"
    assert replicas_url("http://127.0.0.1:9100/metrics") == "http://127.0.0.1:9100/replicas"


@shared_loop
async def test_the_console_is_served_with_its_files(env: Env) -> None:
    page = await env.http.get("/")
    assert page.status_code == 200 and "SkillScale console" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for name in ("app.js", "app.css", "markdown.js"):
        assert (await env.http.get(f"/static/{name}")).status_code == 200
    spec = (await env.http.get("/openapi.json")).json()
    assert {
        "/v1/topics",
        "/v1/skills",
        "/v1/topics/{topic}/invoke",
        "/v1/invoke",
        "/v1/requests/{request_id}",
        "/v1/events",
        "/v1/stats",
        "/v1/skills/{topic}/{name}/rollout",
        "/v1/skills/{topic}/{name}/diff",
        "/v1/skills/{topic}/{name}/history",
        "/v1/skills/{topic}/{name}/promote",
        "/v1/skills/{topic}/{name}/canary",
        "/v1/skills/{topic}/{name}/reject",
        "/v1/skills/{topic}/{name}/rollback",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    # The contract types what the dashboard reads: per-replica state in Stats.
    replica = spec["components"]["schemas"]["ReplicaState"]
    assert set(replica["required"]) >= {"server_id", "topics", "state", "slots", "inflight"}
    assert replica["properties"]["state"]["enum"] == ["up", "draining", "joining", "unreachable"]
    # ...and what the Skills view reads: drafts and the degraded state, typed.
    schemas = spec["components"]["schemas"]
    status = schemas["RolloutStatus"]["properties"]
    assert status["state"]["enum"] == ["active", "canary", "degraded", "draft"]
    assert status["drafts"]["items"]["type"] == "string"
    assert status["degraded"]["type"] == "boolean"
    assert "VersionState" in status["versions"]["additionalProperties"]["$ref"]
    assert schemas["SkillInfo"]["properties"]["drafts"]["type"] == "array"


async def test_draft_skills_canary_reject_and_degraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A skill that exists only as a draft is listed, has a status and is promoted
    through the API; a draft of a served skill goes to canary and is rejected; a
    degraded skill says so, in its status and in the catalogue."""
    from skillscale.core import rollout
    from skillscale.gateway import service

    library = tmp_path / "skills"
    served = library / "trivial" / "echo"
    shutil.copytree(FIXTURE_SKILLS / "testing" / "echo", served)

    def source(name: str, text: str) -> Path:
        folder = tmp_path / "sources" / name
        shutil.copytree(FIXTURE_SKILLS / "testing" / "echo", folder, dirs_exist_ok=True)
        skill_md = (folder / "SKILL.md").read_text()
        (folder / "SKILL.md").write_text(
            skill_md.replace("name: echo", f"name: {name}").replace("Test fixture.", text)
        )
        return folder

    rollout.create_draft_skill(library / "trivial" / "parrot", source("parrot", "A new parrot."))
    fabric = Fabric("memory")
    try:
        proxy = await fabric.start_proxy()
        await fabric.start_server(library / "trivial", "TOPIC_TRIVIAL", "trivial-1")
        config = GatewayConfig(proxy_xsub=proxy.xsub_endpoint, proxy_xpub=proxy.xpub_endpoint,
                               metrics_url=None, skills_dirs=[library], timeout=20)  # fmt: skip
        async with Gateway(config, transport=fabric.bus) as gateway:
            transport = httpx.ASGITransport(app=create_app(gateway))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                skills = {s["name"]: s for s in (await http.get("/v1/skills")).json()["skills"]}
                draft = skills["parrot"]
                assert (draft["live"], draft["rollout_state"], draft["drafts"]) == (
                    False, "draft", ["1"],
                )  # fmt: skip
                assert draft["topic"] == "TOPIC_TRIVIAL" and "A new parrot." in draft["body"]
                assert skills["echo"]["live"] and skills["echo"]["rollout_state"] == "active"

                path = "/v1/skills/TOPIC_TRIVIAL/parrot"
                status = (await http.get(path + "/rollout")).json()
                assert (status["state"], status["active"], status["drafts"]) == (
                    "draft",
                    None,
                    ["1"],
                )
                assert status["versions"]["1"]["state"] == "draft"
                assert (await http.get(path + "/history")).status_code == 200
                alone = await http.get(path + "/diff")
                assert alone.status_code == 400 and "one version" in error_of(alone)["message"]
                # A new skill has nothing to compare a canary with: promoted, not canaried.
                refused = await http.post(path + "/canary", json={})
                assert refused.status_code == 400 and "promote" in error_of(refused)["message"]
                wrong_topic = await http.get("/v1/skills/TOPIC_OTHER/parrot/rollout")
                assert wrong_topic.status_code == 404
                call = {"skill": "parrot", "data": "hi"}
                before = await http.post("/v1/topics/TOPIC_TRIVIAL/invoke", json=call)
                assert before.status_code == 404, before.text  # no server has a draft
                events = gateway.listen()
                first = asyncio.ensure_future(anext(events))
                await asyncio.sleep(0)  # the listener is registered before the change
                promoted = await http.post(path + "/promote", json={"reason": "test"})
                assert promoted.status_code == 200, promoted.text
                assert (promoted.json()["state"], promoted.json()["active"]) == ("active", "1")
                # The gateway announces the change; the server (no periodic rescan
                # here: reload_interval=0) reloads on that event alone.
                event = await asyncio.wait_for(first, 10)
                while event.get("event") != "skills_changed":
                    event = await asyncio.wait_for(anext(events), 10)
                assert (event["change"], event["skill"], event["version"]) == (
                    "promoted", "parrot", "1",
                )  # fmt: skip
                await events.aclose()
                for _ in range(50):  # the server's reload races the gateway's copy of the event
                    answer = await http.post("/v1/topics/TOPIC_TRIVIAL/invoke", json=call)
                    if answer.status_code == 200:
                        break
                assert answer.status_code == 200, answer.text
                assert answer.json()["content"].strip() == "hi"
                assert "A new parrot." in (library / "trivial" / "parrot" / "SKILL.md").read_text()
                after = {s["name"]: s for s in (await http.get("/v1/skills")).json()["skills"]}
                assert (
                    after["parrot"]["rollout_state"] == "active" and not after["parrot"]["drafts"]
                )

                # A draft of a served skill: canary on half the callers, then rejected.
                echo = "/v1/skills/TOPIC_TRIVIAL/echo"
                version = rollout.propose_candidate(served, source("echo", "Better."),
                                                    start_canary=False)  # fmt: skip
                assert (await http.get(echo + "/rollout")).json()["drafts"] == [version]
                bad_share = await http.post(echo + "/canary", json={"share": 1.5})
                assert bad_share.status_code == 422
                canary = await http.post(echo + "/canary", json={"share": 0.5})
                assert canary.status_code == 200, canary.text
                body = canary.json()
                assert body["state"] == "canary" and body["canary"]["version"] == version
                assert body["canary"]["share"] == 0.5 and body["drafts"] == []
                rejected = await http.post(echo + "/reject", json={"reason": "not better"})
                assert rejected.status_code == 200, rejected.text
                body = rejected.json()
                assert body["canary"] is None and body["state"] == "active"
                assert body["versions"][version]["state"] == "retired"
                assert body["versions"][version]["reason"] == "not better"
                again = await http.post(echo + "/reject", json={})
                assert again.status_code == 400 and "no canary" in error_of(again)["message"]

                # Degraded: the evolution role's verdict, in the status and the list.
                state = rollout.read_rollout(served)
                assert state is not None
                state.degraded = True
                rollout.write_rollout(served, state)
                status = (await http.get(echo + "/rollout")).json()
                assert status["state"] == "degraded" and status["degraded"] is True
                gateway._catalog = None
                listed = {s["name"]: s for s in (await http.get("/v1/skills")).json()["skills"]}
                assert listed["echo"]["degraded"] and listed["echo"]["rollout_state"] == "degraded"

                # A draft written while the gateway runs is found on the next miss.
                monkeypatch.setattr(service, "CATALOG_TTL", 0.0)
                rollout.create_draft_skill(library / "trivial" / "myna", source("myna", "Myna."))
                late = await http.get("/v1/skills/TOPIC_TRIVIAL/myna/rollout")
                assert late.status_code == 200 and late.json()["state"] == "draft"
    finally:
        await asyncio.wait_for(fabric.close(), 20)


@shared_loop
async def test_a_hostile_nested_trace_event_leaves_the_gateway_reading(env: Env) -> None:
    # ~10 KB of brackets: json.loads raises RecursionError, not ValueError.
    pub = env.fabric.bus.publisher(env.gateway.client.proxy_xsub, hwm=100)
    events = env.gateway.listen()
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    before = env.gateway.malformed_events
    try:
        pub.send([b"_SKILLSCALE_TRACE", b"[" * 10_000])
        pub.send([b"_SKILLSCALE_SKILLS_CHANGED", b'{"a": ' * 5000])
        pub.send([b"_SKILLSCALE_TRACE", json.dumps({"request_id": "after-hostile"}).encode()])
        event = await asyncio.wait_for(first, 10)
        while event.get("request_id") != "after-hostile":
            event = await asyncio.wait_for(anext(events), 10)
    finally:
        await events.aclose()
        pub.close(0)
    assert env.gateway.malformed_events == before + 2
    assert env.gateway._reader is not None and not env.gateway._reader.done()
    topics = await env.http.get("/v1/topics")
    assert topics.status_code == 200


async def test_a_metrics_fetch_stops_reading_at_its_byte_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy (or anything at the metrics URL) that never stops sending: the
    # gateway keeps at most the limit, not the whole body first.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from skillscale.gateway import service

    class Endless(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()  # no length: the body ends when the connection does
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    self.wfile.write(b"# filler line of an endless metrics page\n" * 256)

    stop = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(service, "MAX_METRICS_BYTES", 64 * 1024, raising=False)
    gateway = Gateway(GatewayConfig(metrics_url=None))
    gateway._http = httpx.AsyncClient(timeout=5)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        text = await asyncio.wait_for(gateway._get(url), 10)
        assert isinstance(text, str) and 0 < len(text.encode()) <= 64 * 1024
        assert text.startswith("# filler line")
    finally:
        stop.set()
        await gateway._http.aclose()
        await gateway.client.close()
        server.shutdown()
        server.server_close()
        thread.join(5)
