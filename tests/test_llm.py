"""LLM settings, the LLM matcher and the rate limiter against a scripted local endpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from skillscale import SkillScaleClient
from skillscale.core.discovery import SkillDiscovery
from skillscale.core.errors import ConfigError
from skillscale.core.llm import LLMClient, LLMSettings, RateLimit, write_config_template
from skillscale.core.matchers import LLMMatcher, parse_choice
from skillscale.core.matching import KeywordMatcher
from tests.fake_openai import fake_openai
from tests.helpers import BUNDLED_SKILLS, FIXTURE_SKILLS, RoleProcess, role_env

DATA = SkillDiscovery([BUNDLED_SKILLS / "data-processing"]).scan()
TASK = "please look at these rows: a,b\n1,2"  # keywords alone would say csv-analyzer


def settings(base_url: str, **kw: object) -> LLMSettings:
    values: dict[str, object] = {"model": "test-model", "base_url": base_url, "api_key": "sk-test",
                                 "timeout": 2.0, "max_retries": 1}  # fmt: skip
    values.update(kw)
    return LLMSettings(**values)  # type: ignore[arg-type]


def matcher(base_url: str, **kw: object) -> LLMMatcher:
    return LLMMatcher(LLMClient(settings(base_url, **kw)), KeywordMatcher(DATA.skills.values()))


@pytest.fixture(autouse=True)
def _no_ambient_llm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SKILLSCALE_LLM_BASE_URL", "SKILLSCALE_LLM_MODEL", "SKILLSCALE_LLM_API_KEY",
                 "OPENAI_BASE_URL", "OPENAI_API_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SKILLSCALE_CONFIG", str(tmp_path / "config.yaml"))


def test_no_llm_without_configuration() -> None:
    assert LLMSettings.load() is None


def test_settings_from_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config_template()
    with pytest.raises(ConfigError):
        write_config_template()
    assert LLMSettings.load(path) is None  # the template turns nothing on
    # Uncommenting its llm block (as the template says) turns the model on.
    lines = path.read_text().splitlines()
    start = lines.index("# llm:")
    path.write_text("\n".join(line[2:] for line in lines[start:]) + "\n")
    loaded = LLMSettings.load(path)
    assert loaded is not None and loaded.model == "gpt-4o-mini" and loaded.timeout == 20
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai.example/v1")
    monkeypatch.setenv("SKILLSCALE_LLM_BASE_URL", "http://local:8000/v1")
    monkeypatch.setenv("SKILLSCALE_LLM_MODEL", "qwen")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-a")
    loaded = LLMSettings.load(path)
    assert loaded is not None
    assert (loaded.base_url, loaded.model, loaded.api_key) == (
        "http://local:8000/v1",
        "qwen",
        "sk-a",
    )
    (tmp_path / "limits.yaml").write_text(
        "llm: {model: m, base_url: 'http://x/v1', rate_limit: {rpm: 30, tpm: 1000, burst: 2}}\n"
    )
    limited = LLMSettings.load(tmp_path / "limits.yaml")
    assert limited is not None and limited.rate_limit == RateLimit(rpm=30, tpm=1000, burst=2)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("csv-analyzer", "csv-analyzer"),
        ("`csv-analyzer`.", "csv-analyzer"),
        ("The best skill is csv-analyzer because the input is tabular.", "csv-analyzer"),
        ("none", "none"),
        ("csv-analyzer or text-summarizer", None),
        ("spreadsheet-wizard", None),
        ("", None),
    ],
)
def test_parse_choice(answer: str, expected: str | None) -> None:
    assert parse_choice(answer, ["csv-analyzer", "text-summarizer"]) == expected


@pytest.mark.parametrize(
    ("script", "skill", "mode"),
    [
        ([("text", "text-summarizer")], "text-summarizer", "llm"),
        ([("text", "I would use text-summarizer here.")], "text-summarizer", "llm"),
        ([("text", "spreadsheet-wizard")], "csv-analyzer", "keyword-fallback"),
        ([("garbage", b"{not json")], "csv-analyzer", "keyword-fallback"),
        ([("status", 429), ("text", "text-summarizer")], "text-summarizer", "llm"),
        ([("status", 500)], "csv-analyzer", "keyword-fallback"),
        ([("hang", 3.0)], "csv-analyzer", "keyword-fallback"),
    ],
    ids=["pick", "extra-words", "unknown-name", "garbage", "429-then-ok", "500", "hang"],
)
async def test_llm_matcher_picks_or_falls_back(
    script: list[tuple[str, object]], skill: str, mode: str
) -> None:
    with fake_openai(*script) as (url, _):
        m = matcher(url, timeout=1.0, max_retries=1)
        decision = await m.decide(TASK)
        await m.llm.close()
    assert decision.choice == skill
    assert decision.mode == mode


async def test_none_is_a_decision_and_answers_are_cached() -> None:
    with fake_openai(("text", "none")) as (url, script):
        m = matcher(url)
        first = await m.decide("what's the weather")
        second = await m.decide("what's the weather")
        await m.llm.close()
    assert first.choice is None and first.mode == "llm"
    assert second.mode == "llm-cache" and len(script.requests) == 1
    prompt = script.requests[0]["messages"][1]["content"]
    assert "csv-analyzer" in prompt and "text-summarizer" in prompt


async def test_rate_limiter_holds_rpm_under_concurrency() -> None:
    with fake_openai(("text", "csv-analyzer")) as (url, script):
        limited = settings(url, timeout=5.0, rate_limit=RateLimit(rpm=120, burst=1))
        client = LLMClient(limited)
        started = time.monotonic()
        await asyncio.gather(*(client.complete("s", f"u{i}") for i in range(5)))
        elapsed = time.monotonic() - started
        await client.close()
    gaps = [b - a for a, b in zip(script.times, script.times[1:], strict=False)]
    assert len(script.times) == 5
    assert min(gaps) >= 0.45, gaps  # 120 per minute: one every 0.5 s
    assert elapsed >= 1.9


@pytest.mark.integration
async def test_server_matches_with_the_llm_and_passes_settings_only_when_asked(
    proxy: RoleProcess,
) -> None:
    with fake_openai(("text", "text-summarizer")) as (url, _):
        env = role_env(SKILLSCALE_LLM_BASE_URL=url, SKILLSCALE_LLM_MODEL="test-model",
                       SKILLSCALE_LLM_API_KEY="sk-test")  # fmt: skip
        server = RoleProcess(
            "server", "--skills-dir", str(BUNDLED_SKILLS / "data-processing"),
            "--proxy-xsub", proxy.ready["xsub"], "--proxy-xpub", proxy.ready["xpub"],
            "--proxy-router", proxy.ready["router"], "--matcher", "llm", env=env,
        )  # fmt: skip
        fixtures = RoleProcess(
            "server", "--skills-dir", str(FIXTURE_SKILLS / "testing"), "--topic", "TOPIC_LLMENV",
            "--proxy-xsub", proxy.ready["xsub"], "--proxy-xpub", proxy.ready["xpub"],
            "--proxy-router", proxy.ready["router"], env=env,
        )  # fmt: skip
        try:
            async with SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"]) as client:
                reply = await client.call("TOPIC_DATA_PROCESSING", TASK)
                asked = await client.invoke_skill("TOPIC_LLMENV", "llmenv", "")
                not_asked = await client.invoke_skill("TOPIC_LLMENV", "envdump", "")
        finally:
            server.close()
            fixtures.close()
    assert reply.ok and reply.skill == "text-summarizer"
    assert reply.trace is not None and reply.trace.matcher_mode == "llm"
    assert asked.split() == [url, "test-model"]
    assert "SKILLSCALE_LLM_API_KEY" not in not_asked and "SKILLSCALE_LLM_BASE_URL" not in not_asked


def test_matcher_llm_without_configuration_is_a_clear_error() -> None:
    from tests.test_cli import cli

    result = cli("server", "--topic", "T", "--matcher", "llm", "--skills-dir", str(BUNDLED_SKILLS))
    assert result.returncode != 0 and "needs an LLM" in result.stderr


CATALOG = SkillDiscovery([BUNDLED_SKILLS]).scan()


async def test_router_by_keywords_and_by_llm() -> None:
    from skillscale.sdk.router import TopicRouter

    keyword = TopicRouter(CATALOG)
    route = await keyword.route("find unused imports in my module")
    assert (route.topic, route.mode) == ("TOPIC_CODE_ANALYSIS", "keyword")
    with fake_openai(("text", "TOPIC_DATA_PROCESSING"), ("text", "TOPIC_NOPE")) as (url, _):
        llm = LLMClient(settings(url))
        routed = TopicRouter(CATALOG, llm)
        chosen = await routed.route("look at this for me")
        fallback = await routed.route("summarize this article")
        await llm.close()
    assert (chosen.topic, chosen.mode) == ("TOPIC_DATA_PROCESSING", "llm")
    assert (fallback.topic, fallback.mode) == ("TOPIC_DATA_PROCESSING", "keyword")
    assert "not a topic" in fallback.detail


@pytest.mark.integration
async def test_invoke_auto_routes_and_runs(
    proxy: RoleProcess, bundled_servers: list[RoleProcess]
) -> None:
    async with SkillScaleClient(proxy.ready["xsub"], proxy.ready["xpub"], catalog=CATALOG) as c:
        content = await c.invoke_auto("find dead code: import os\n\ndef f():\n    return 1\n")
    assert "Dead Code Report" in content and "`os`" in content


@pytest.mark.parametrize(
    ("script", "insight"),
    [([("text", "Revenue is skewed by one outlier.")], True), ([("status", 500)], False)],
    ids=["answer", "failure"],
)
async def test_bundled_skill_adds_insights_only_with_a_working_llm(
    script: list[tuple[str, object]], insight: bool
) -> None:
    from skillscale.skill_server.executor import ExecutionLimits, SubprocessExecutor

    skill = CATALOG.skills["csv-analyzer"]
    executor = SubprocessExecutor()
    with fake_openai(*script) as (url, requests):
        env = settings(url, max_retries=0).skill_env()
        with_llm = await executor.run(skill, b"a,b\n1,2\n3,4\n", ExecutionLimits(30), env=env)
    without = await executor.run(skill, b"a,b\n1,2\n3,4\n", ExecutionLimits(30))
    assert with_llm.ok and without.ok
    assert ("## Insights" in with_llm.stdout.decode()) is insight
    if insight:
        assert "Revenue is skewed" in with_llm.stdout.decode()
        assert "Column" in requests.requests[0]["messages"][1]["content"]
    else:
        assert b"llm insights unavailable" in with_llm.stderr
    assert "## Insights" not in without.stdout.decode()
