"""The matcher registry: a third matcher registered once is known to every reader.

The server config, the ``--matcher`` choices and help, and the SDK's topic
router all read :mod:`skillscale.core.matchers`; ``auto`` resolves in one place.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from skillscale.core.discovery import SkillDiscovery
from skillscale.core.errors import ConfigError, ErrorCode, SkillNotFoundError
from skillscale.core.llm import LLMClient, LLMSettings
from skillscale.core.matchers import (
    Decision,
    Matcher,
    MatcherSetup,
    create_matcher,
    matcher_names,
    parse_choice,
    register_matcher,
    resolve_matcher,
    unregister_matcher,
)
from skillscale.core.protocol import Request, new_request_id
from skillscale.sdk.router import TopicRouter
from tests.fake_openai import fake_openai
from tests.helpers import BUNDLED_SKILLS, FIXTURE_SKILLS


class FirstWord:
    """A toy matcher: the skill named by the task's first word, else nothing."""

    def __init__(self, setup: MatcherSetup) -> None:
        self.setup = setup
        self.by_name = {s.name: s for s in setup.skills}

    async def decide(self, task: str) -> Decision:
        skill = self.by_name.get(task.split()[0]) if task.split() else None
        if skill is None:
            return Decision(None, "toy", "the toy matcher knows no such skill")
        return Decision(self.setup.option_of(skill), "toy")


@pytest.fixture
def toy() -> Iterator[str]:
    register_matcher("toy", FirstWord, help="the skill named by the first word")
    yield "toy"
    unregister_matcher("toy")


def test_builtins_and_auto() -> None:
    assert matcher_names()[:3] == ("auto", "llm", "keyword")
    assert resolve_matcher("auto", llm_configured=False) == "keyword"
    assert resolve_matcher("auto", llm_configured=True) == "llm"
    assert resolve_matcher("keyword", llm_configured=True) == "keyword"
    with pytest.raises(ConfigError, match="needs an LLM"):
        resolve_matcher("llm", llm_configured=False)
    with pytest.raises(ConfigError, match="unknown matcher 'nope'"):
        resolve_matcher("nope", llm_configured=True)
    with pytest.raises(ValueError):
        register_matcher("auto", FirstWord, help="")
    matcher: Matcher = create_matcher("auto", MatcherSetup(()))  # the protocol, statically
    assert type(matcher).__name__ == "KeywordChooser"


def test_the_cli_lists_a_registered_matcher(toy: str) -> None:
    from skillscale.tools.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["server", "--topic", "T", "--matcher", toy])
    assert args.matcher == toy
    server = next(
        a.choices[name]
        for a in parser._subparsers._group_actions  # type: ignore[union-attr]
        for name in a.choices
        if name == "server"
    )
    assert "toy: the skill named by the first word" in " ".join(server.format_help().split())
    unregister_matcher(toy)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["server", "--topic", "T", "--matcher", toy])


async def test_the_server_config_accepts_and_uses_a_registered_matcher(toy: str) -> None:
    from skillscale.skill_server.server import ServerConfig, SkillServer

    config = ServerConfig(
        topics=["TOPIC_TESTING"],
        skills_dirs=[FIXTURE_SKILLS / "testing"],
        matcher=toy,
        executor="cold",
    )
    server = SkillServer(config)
    assert server.registry.matcher_name == toy and server.llm is None
    server.registry.reload()

    async def ask(task: str) -> tuple[str, str | None, str | None]:
        request = Request(request_id=new_request_id(), reply_to="AGENT_REPLY_t", intent=task)
        reply = await server.handler.process(request)
        assert reply.trace is not None
        return reply.status, reply.trace.matcher_mode, reply.error_code

    assert await ask("guide me through a haiku") == ("success", "toy", None)
    assert await ask("summarize this") == ("error", "toy", ErrorCode.NO_MATCH)
    with pytest.raises(ConfigError, match="unknown matcher 'nope'"):
        SkillServer(ServerConfig(topics=["T"], skills_dirs=[FIXTURE_SKILLS], matcher="nope"))


async def test_the_router_uses_a_registered_matcher(toy: str) -> None:
    catalog = SkillDiscovery([BUNDLED_SKILLS]).scan()
    router = TopicRouter(catalog, matcher=toy)
    route = await router.route("text-summarizer please")
    assert (route.topic, route.mode) == ("TOPIC_DATA_PROCESSING", "toy")
    with pytest.raises(SkillNotFoundError, match="knows no such skill"):
        await router.route("weather tomorrow")


async def test_the_router_takes_none_as_a_decision() -> None:
    catalog = SkillDiscovery([BUNDLED_SKILLS]).scan()
    with fake_openai(("text", "none")) as (url, script):
        llm = LLMClient(LLMSettings(model="m", base_url=url, api_key="k", timeout=2.0))
        router = TopicRouter(catalog, llm)
        with pytest.raises(SkillNotFoundError) as caught:
            await router.route("what's the weather")
        await llm.close()
    assert caught.value.code is ErrorCode.NO_MATCH
    assert "no topic" in str(caught.value)
    prompt = script.requests[0]["messages"][1]["content"]
    assert prompt.startswith("Topics:\n- TOPIC_CODE_ANALYSIS: ")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("TOPIC_DATA_PROCESSING", "TOPIC_DATA_PROCESSING"),
        ("topic_data_processing.", "TOPIC_DATA_PROCESSING"),
        ("I'd say TOPIC_DATA here", "TOPIC_DATA"),
        ("TOPIC_DATA_PROCESSING_V2", None),
        ("none", "none"),
    ],
)
def test_parse_choice_of_topics(answer: str, expected: str | None) -> None:
    assert parse_choice(answer, ["TOPIC_DATA", "TOPIC_DATA_PROCESSING"]) == expected


def test_the_core_registry_loads_no_role() -> None:
    # import-linter checks this statically (tests/test_static.py), SDK included;
    # this is the runtime view: building a matcher pulls in no role and no tool.
    # (The SDK is not checked here: ``skillscale/__init__`` re-exports the client.)
    code = (
        "import sys\n"
        "from skillscale.core.matchers import MatcherSetup, create_matcher, matcher_names\n"
        "create_matcher('keyword', MatcherSetup(()))\n"
        "bad = [m for m in sys.modules if m.startswith(('skillscale.proxy', "
        "'skillscale.skill_server', 'skillscale.tools'))]\n"
        "print(matcher_names(), bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "('auto', 'llm', 'keyword') []"
