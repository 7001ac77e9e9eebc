"""The gateway against real processes: one ``skillscale up`` (proxy, two servers,
gateway) for the whole module, checked over real HTTP, by schemathesis against
its own ``/openapi.json``, by the HTTP bench, and in headless Chromium.

Screenshots of the console go to ``tests/artifacts/`` on every run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from skillscale.core import rollout
from skillscale.tools.bench import BenchConfig, run_http_bench
from tests.helpers import ROOT, RoleProcess, free_port, role_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

DATA = "TOPIC_DATA_PROCESSING"
CODE = "TOPIC_CODE_ANALYSIS"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TEXT = (
    "summarize: ZeroMQ is a high-performance asynchronous messaging library. It provides "
    "a message queue. Publish-subscribe is one of its core patterns."
)


CANARY_SKILL = "code-complexity"
"""The skill given a canary (its candidate differs in SKILL.md only, so it runs alike)."""
DRAFT_SKILL = "unused-code-finder"
"""A skill that exists only as a draft (promoted from the console)."""
DEGRADED_SKILL = "dead-code-detector"
"""A skill the evolution role marked degraded (a failure cluster)."""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundled skills, with a canary running on one (the rollout API)."""
    root = tmp_path_factory.mktemp("library") / "skills"
    shutil.copytree(ROOT / "skills", root, ignore=shutil.ignore_patterns(".git", ".skillscale"))
    skill = root / "code-analysis" / CANARY_SKILL
    candidate = tmp_path_factory.mktemp("candidate") / CANARY_SKILL
    shutil.copytree(skill, candidate)
    text = (candidate / "SKILL.md").read_text()
    (candidate / "SKILL.md").write_text(
        text + "\n## Reading the figures\n\nA score over 10 marks a function worth splitting.\n"
    )
    rollout.propose_candidate(skill, candidate, {"by": "test_gateway_live"})
    # A new skill that exists only as a draft: no server serves it until promoted.
    source = tmp_path_factory.mktemp("draft") / DRAFT_SKILL
    shutil.copytree(root / "code-analysis" / "dead-code-detector", source,
                    ignore=shutil.ignore_patterns(".skillscale"))  # fmt: skip
    text = (
        (source / "SKILL.md")
        .read_text()
        .replace("name: dead-code-detector", f"name: {DRAFT_SKILL}")
    )
    (source / "SKILL.md").write_text(text + "\n## Drafted\n\nA draft the distiller proposed.\n")
    rollout.create_draft_skill(root / "code-analysis" / DRAFT_SKILL, source, {"by": "test"})
    # A served skill with a draft waiting (put in canary, then rejected, from the console).
    served = root / "data-processing" / "csv-analyzer"
    proposal = tmp_path_factory.mktemp("proposal") / "csv-analyzer"
    shutil.copytree(served, proposal, ignore=shutil.ignore_patterns(".skillscale"))
    (proposal / "SKILL.md").write_text((proposal / "SKILL.md").read_text() + "\nProposed.\n")
    rollout.propose_candidate(served, proposal, {"by": "test"}, start_canary=False)
    # A skill whose runs fail repeatedly, as the evolution role records it.
    degraded = root / "code-analysis" / DEGRADED_SKILL
    state = rollout.ensure_rollout(degraded)
    state.degraded = True
    state.failures.append(rollout.FailureCluster(
        key="k1", version=state.active, outcome="exec_failed", input_shape="text, 2 lines",
        stderr="Traceback (most recent call last):\nValueError: no functions found", count=4,
        first=time.time() - 600, last=time.time() - 60,
    ))  # fmt: skip
    rollout.write_rollout(degraded, state)
    return root


@pytest.fixture(scope="module")
def fabric(library: Path) -> Iterator[dict[str, Any]]:
    up = RoleProcess(
        "up", "--skills-dir", str(library), "--xsub-port", "0", "--xpub-port", "0",
        "--router-port", "0", "--metrics-port", "0", "--gateway-port", str(free_port()),
        "--no-distill", "--json",
        env=role_env(SKILLSCALE_NO_GATEWAY="0"),
    )  # fmt: skip
    try:
        assert up.ready["gateway"], up.ready
        yield up.ready
    finally:
        up.close()


@pytest.fixture(scope="module")
def url(fabric: dict[str, Any]) -> str:
    gateway: str = fabric["gateway"]
    return gateway.rstrip("/")


def test_live_stats_topics_and_health(url: str) -> None:
    with httpx.Client(base_url=url, timeout=20) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        assert http.get("/readyz").status_code == 200
        stats = http.get("/v1/stats").json()
        assert stats["available"], stats
        figures = {t["topic"]: t for t in stats["topics"]}
        assert figures[DATA]["replicas"] == 1 and figures[CODE]["replicas"] == 1
        assert figures[DATA]["slots"] >= 2 and figures[DATA]["draining"] == 0
        # Per replica, from the proxy's /replicas: one server per topic, up, with its slots.
        assert stats["replicas_error"] is None, stats
        by_topic = {r["topics"][0]: r for r in stats["replicas"]}
        assert set(by_topic) == {DATA, CODE}
        assert all(r["state"] == "up" and r["slots"] >= 2 for r in by_topic.values())
        assert by_topic[DATA]["slots"] == figures[DATA]["slots"]
        topics = {t["topic"]: t for t in http.get("/v1/topics").json()["topics"]}
        assert set(topics) == {DATA, CODE} and all(t["live"] for t in topics.values())


def test_the_event_stream_carries_execution_traces(url: str) -> None:
    seen: list[dict[str, Any]] = []
    opened = threading.Event()
    arrived = threading.Condition()
    stop = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=url, timeout=httpx.Timeout(20, read=20)) as http,
            http.stream("GET", "/v1/events") as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            opened.set()
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "execution":
                    with arrived:
                        seen.append(json.loads(line[5:]))
                        arrived.notify_all()
                if stop.is_set():
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert opened.wait(20)
    with httpx.Client(base_url=url, timeout=20) as http:
        answer = http.post(f"/v1/topics/{DATA}/invoke", json={"task": TEXT})
    assert answer.status_code == 200, answer.text
    rid = answer.json()["request_id"]
    with arrived:
        assert arrived.wait_for(lambda: any(e["request_id"] == rid for e in seen), 20), seen
    stop.set()
    (event,) = [e for e in seen if e["request_id"] == rid]
    assert event["outcome"] == "success" and event["topic"] == DATA
    assert event["skill"] == "text-summarizer"


def test_bench_http_mode_reports_the_same_figures(url: str) -> None:
    config = BenchConfig(topic=DATA, intent=TEXT, requests=30, concurrency=3, warmup=2,
                         progress=False)  # fmt: skip
    result = asyncio.run(run_http_bench(config, url))
    assert result.requests == 30 and result.failed == 0, result.failure_samples
    assert result.latency_ms["p50"] > 0 and result.throughput_rps > 0
    # Errors are counted by the gateway's code, a dead door as http_error: never a success.
    nowhere = BenchConfig(topic="TOPIC_NOWHERE", intent=TEXT, requests=4, concurrency=2,
                          progress=False)  # fmt: skip
    refused = asyncio.run(run_http_bench(nowhere, url))
    assert refused.failed == 4 and set(refused.failures_by_code) == {"no_server"}, refused
    dead = asyncio.run(run_http_bench(nowhere, f"http://127.0.0.1:{free_port()}"))
    assert dead.failed == 4 and set(dead.failures_by_code) == {"http_error"}, dead


# -- schemathesis: the OpenAPI document is the contract ------------------------


@pytest.fixture(scope="module")
def api_schema(url: str) -> Any:
    # Fuzzing and the examples only: the coverage phase's exhaustive edge cases
    # cost ~25 s here, over this whole test budget.
    config = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}})
    return schemathesis.openapi.from_url(url + "/openapi.json", config=config)


# An event stream never ends; it is checked above.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/v1/events")
SKILL_FAILURES = {"exec_failed", "output_too_large"}
"""A skill rejecting random input answers 502 with one of these codes: the
skill's own verdict, documented in the contract, not a gateway failure."""


@schema.parametrize()
@settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.generate], derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_the_api_keeps_its_openapi_contract(case: Any) -> None:
    response = case.call(timeout=30)
    case.validate_response(response, excluded_checks=[schemathesis.checks.not_a_server_error])
    if response.status_code >= 500:
        error = response.json()["error"]
        assert response.status_code == 502 and error["code"] in SKILL_FAILURES, response.text


# -- the console in headless Chromium -------------------------------------------


def chromium() -> str:
    """Debian's chromium; installed when CI=true or SKILLSCALE_TEST_INSTALL_CHROMIUM=1."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    opt_in = os.environ.get("CI") == "true" or os.environ.get("SKILLSCALE_TEST_INSTALL_CHROMIUM")
    if not opt_in:
        pytest.skip(
            f"{CHROMIUM} is absent (apt-get install chromium, or set CI=true / "
            "SKILLSCALE_TEST_INSTALL_CHROMIUM=1 to let the test install it as root)"
        )
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is absent and installing it needs root and apt-get")
    try:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       check=True, capture_output=True, timeout=300)  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"could not install chromium: {exc}")
    if not Path(CHROMIUM).exists():
        pytest.skip("apt-get installed chromium but not at /usr/bin/chromium")
    return CHROMIUM


def shot(page: Any, name: str) -> None:
    """A full-page screenshot from the top (scrolled, the sticky bar lands mid-picture)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def feed_the_canary(url: str, library: Path) -> None:
    """Outcomes for both arms (the rollout file, as the evolution role writes it),
    the gateway reading the status after each, as the console does while open."""
    skill = library / "code-analysis" / CANARY_SKILL
    outcomes = [("candidate", True), ("active", False), ("candidate", True), ("active", True),
                ("candidate", True), ("active", False), ("candidate", False), ("active", True),
                ("candidate", True), ("active", False)]  # fmt: skip
    with httpx.Client(base_url=url, timeout=20) as http:
        for arm, success in outcomes:
            state = rollout.read_rollout(skill)
            assert state is not None and state.canary is not None
            state.canary.record(arm, success, latency_ms=40.0 if arm == "candidate" else 55.0)  # type: ignore[arg-type]
            rollout.write_rollout(skill, state)
            status = http.get(f"/v1/skills/{CODE}/{CANARY_SKILL}/rollout")
            assert status.status_code == 200, status.text
    pairs = status.json()["canary"]["pairs"]
    assert pairs["candidate_wins"] + pairs["active_wins"] == 4, pairs


@pytest.mark.timeout(400)
def test_the_console_in_a_browser(url: str, library: Path) -> None:
    from playwright.sync_api import sync_playwright

    feed_the_canary(url, library)
    executable = chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            # The dashboard shows both bundled topics, with replicas from the proxy.
            for topic in (DATA, CODE):
                page.wait_for_selector(f"[data-topic={topic}] .pill.up", timeout=15_000)
            page.wait_for_selector("#live-dot.on", timeout=15_000)
            # Each topic's replica, with its state and slots, as the proxy exports them.
            for topic in (DATA, CODE):
                row = page.locator(f"[data-topic={topic}] table.replicas tr[data-state=up]")
                row.wait_for(timeout=15_000)
                assert row.count() == 1 and row.locator(".slot").count() >= 2
            shot(page, "console-dashboard.png")

            # Try: a task on data-processing; the reply is rendered, with its waterfall.
            page.click("a[data-view=try]")
            page.select_option("#try-topic", DATA)
            page.fill("#try-task", TEXT)
            page.click("#try-send")
            page.wait_for_selector("#try-result .waterfall", timeout=20_000)
            assert page.inner_text("#try-result .pill") == "success"
            assert page.locator("#try-result .markdown h3", has_text="Summary").count() == 1
            labels = page.locator("#try-result .wf-label").all_inner_texts()
            assert labels[0].startswith("client") and "exec" in labels
            shot(page, "console-try.png")

            # Skill output is text, never markup: a script tag comes back escaped.
            page.click("input[name=mode][value=skill]")
            page.select_option("#try-skill", "text-summarizer")
            page.fill("#try-data", "<img src=x onerror=\"document.title='pwned'\"> Hello there. "
                      "<script>document.title='pwned'</script> Bye now.")  # fmt: skip
            page.click("#try-send")
            page.wait_for_selector("#try-result .waterfall", timeout=20_000)
            assert page.title() == "SkillScale console"
            assert (
                page.locator("#try-result .markdown img, #try-result .markdown script").count() == 0
            )

            # Traces: the requests are listed; one opens its waterfall.
            page.click("a[data-view=traces]")
            page.wait_for_selector("#trace-table tbody tr", timeout=10_000)
            page.click("#trace-table tbody tr >> nth=0")
            page.wait_for_selector("#trace-detail .waterfall", timeout=10_000)
            assert "attempt 1" in page.inner_text("#trace-detail")
            shot(page, "console-traces.png")

            # Skills: open one; its SKILL.md is rendered beside its metadata.
            page.click("a[data-view=skills]")
            page.click(".skill-item[data-skill=csv-analyzer]", timeout=10_000)
            page.wait_for_selector("#skill-detail .markdown h2", timeout=10_000)
            assert "valid SKILL.md" in page.inner_text("#skill-detail table.meta")
            assert "1 draft" in page.inner_text(".skill-item[data-skill=csv-analyzer]")
            shot(page, "console-skills.png")
            # Its draft goes to canary from here, and the canary is rejected.
            page.click("#canary-btn:has-text('Canary version 2')", timeout=10_000)
            page.wait_for_selector(
                ".action-note:has-text('Canary started: version 2 on 20 % of callers')",
                timeout=15_000,
            )
            page.wait_for_selector("#canary-panel", timeout=10_000)
            page.click("#reject-btn:has-text('Reject version 2')", timeout=10_000)
            page.wait_for_selector(".action-note:has-text('Rejected: version 2')", timeout=15_000)
            assert "retired" in page.inner_text(
                "#skill-detail .versions-table tr[data-version='2']"
            )
            assert page.locator("#canary-panel").count() == 0

            # A skill with a canary: versions, the diff, the SPRT plot, promote.
            page.click(f".skill-item[data-skill={CANARY_SKILL}]")
            page.wait_for_selector("#canary-panel canvas.sprt", timeout=10_000)
            versions = page.locator("#skill-detail .versions-table tr[data-version]")
            assert versions.count() == 2
            assert "canary" in page.inner_text("#skill-detail .versions-table tr[data-version='2']")
            page.wait_for_selector("#diff-panel pre.diff .dl.add", timeout=10_000)
            added = page.locator("#diff-panel pre.diff .dl.add").all_inner_texts()
            assert any("Reading the figures" in line for line in added), added
            assert "4 discordant pairs" in page.inner_text("#canary-panel")
            assert page.locator("#promote-btn").inner_text() == "Promote version 2"
            shot(page, "console-canary.png")
            page.click("#promote-btn")
            page.wait_for_selector(".action-note:has-text('Promoted: version 2')", timeout=15_000)
            assert "active" in page.inner_text("#skill-detail .versions-table tr[data-version='2']")
            shot(page, "console-promoted.png")

            # A skill that is only a draft: listed as such, promoted from here.
            draft = page.locator(f".skill-item[data-skill={DRAFT_SKILL}]")
            assert draft.get_attribute("data-state") == "draft"
            assert "draft" in draft.locator(".pill").last.inner_text()
            draft.click()
            page.wait_for_selector("#skill-detail .notice", timeout=10_000)
            assert "Drafted" in page.inner_text("#skill-detail .markdown")
            assert page.locator("#promote-btn").inner_text() == "Promote version 1"
            assert page.locator("#canary-btn").count() == 0  # nothing to compare a canary with
            shot(page, "console-draft.png")
            page.click("#promote-btn")
            page.wait_for_selector(".action-note:has-text('Promoted: version 1')", timeout=15_000)
            page.wait_for_selector(f".skill-item[data-skill={DRAFT_SKILL}][data-state=active]",
                                   timeout=10_000)  # fmt: skip
            assert (library / "code-analysis" / DRAFT_SKILL / "SKILL.md").is_file()
            # The gateway announced the promotion: the server loads the skill at once.
            page.wait_for_selector(f".skill-item[data-skill={DRAFT_SKILL}] > .pill.up",
                                   timeout=15_000)  # fmt: skip

            # A degraded skill: flagged in the list, its failure cluster in the detail.
            degraded = page.locator(f".skill-item[data-skill={DEGRADED_SKILL}]")
            assert "degraded" in degraded.inner_text()
            degraded.click()
            page.wait_for_selector("#degraded-panel li", timeout=10_000)
            assert "4 \u00d7 exec_failed" in page.inner_text("#degraded-panel")
            assert "no functions found" in page.inner_text("#degraded-panel")
            shot(page, "console-degraded.png")
        finally:
            browser.close()
    assert not problems, problems


@pytest.mark.timeout(180)
def test_a_draining_replica_shows_as_draining(tmp_path: Path) -> None:
    """A server told to stop keeps answering what it holds; meanwhile the proxy,
    /v1/stats and the dashboard show its replica draining."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    skills = tmp_path / "skills"
    shutil.copytree(ROOT / "tests" / "fixtures" / "skills" / "testing" / "slow",
                    skills / "testing" / "slow")  # fmt: skip
    up = RoleProcess(
        "up", "--skills-dir", str(skills), "--xsub-port", "0", "--xpub-port", "0",
        "--router-port", "0", "--metrics-port", "0", "--gateway-port", str(free_port()),
        "--no-distill", "--grace", "30", "--json",
        env=role_env(SKILLSCALE_NO_GATEWAY="0"),
    )  # fmt: skip
    answers: list[httpx.Response] = []
    try:
        base = str(up.ready["gateway"]).rstrip("/")
        (server,) = up.ready["servers"]

        def slow_call() -> None:
            with httpx.Client(base_url=base, timeout=60) as http:
                answers.append(http.post("/v1/topics/TOPIC_TESTING/invoke",
                                         json={"skill": "slow", "data": "6"}))  # fmt: skip

        caller = threading.Thread(target=slow_call, daemon=True)
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=executable, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1280, "height": 720},
            )  # fmt: skip
            try:
                page = browser.new_page()
                page.goto(base + "/")
                replica = "[data-topic=TOPIC_TESTING] table.replicas tr"
                page.wait_for_selector(replica + "[data-state=up]", timeout=15_000)
                caller.start()
                # The slow call holds one of its slots...
                page.wait_for_selector(replica + " .slot.used", timeout=15_000)
                os.kill(server["pid"], signal.SIGTERM)
                # ...and the replica, told to stop, drains: it takes no new work.
                page.wait_for_selector(replica + "[data-state=draining]", timeout=15_000)
                assert "draining" in page.inner_text("[data-topic=TOPIC_TESTING] header .pill")
                shot(page, "console-draining.png")
            finally:
                browser.close()
        with httpx.Client(base_url=base, timeout=20) as http:
            stats = http.get("/v1/stats").json()
        states = {r["server_id"]: r["state"] for r in stats["replicas"]}
        figures = {t["topic"]: t for t in stats["topics"]}
        assert "draining" in states.values() or figures["TOPIC_TESTING"]["replicas"] == 0, stats
        caller.join(30)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        assert answers[0].json()["content"].strip() == "slept 6.0"
    finally:
        up.close()
