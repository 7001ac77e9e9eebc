"""Evolution driven directly: canary decisions, feedback, failure clusters, the LLM paths,
and the canary simulation's error-rate floors."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from skillscale.core import rollout
from skillscale.core.events import ExecutionTrace, FeedbackEvent
from skillscale.core.llm import LLMClient, LLMSettings
from skillscale.distiller.evolution import Evolution, EvolutionConfig, LLMJudge
from skillscale.distiller.evolution_sim import simulate
from tests.fake_openai import fake_openai
from tests.test_rollout import candidate, write_skill


def test_simulated_error_rates_meet_the_floors() -> None:
    figures = simulate(seed=7, runs=150)
    assert figures["false promotions (equal)"] <= 0.05
    assert figures["false promotions (worse)"] <= 0.05
    assert figures["misses (better)"] <= 0.20
    assert figures["runs per case"] == 150 and figures["mean requests to decide (better)"] > 10


def trace(rid: str, *, version: str, candidate: bool, ok: bool, **extra: Any) -> dict[str, Any]:
    return ExecutionTrace(
        request_id=rid, caller="c", server_id="s", topic="TOPIC_CAT", skill="echo",
        skill_version=version, candidate=candidate, outcome="success" if ok else "exec_failed",
        exit_code=0 if ok else 1, elapsed_ms=3.0, **extra,
    ).model_dump()  # fmt: skip


FAST = EvolutionConfig(
    share=0.5,
    feedback_window=0,
    test=rollout.TestSettings(alpha=0.05, beta=0.1, odds_ratio=4.0),
    min_failures=3,
)


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    write_skill(tmp_path / "lib" / "cat" / "echo", "echo", "print('v1')\n", "1")
    return tmp_path / "lib"


async def run_canary(library: Path, tmp_path: Path, candidate_ok: bool) -> list[str]:
    skill = library / "cat" / "echo"
    sent: list[tuple[str, bytes]] = []
    cfg = EvolutionConfig(share=0.5, feedback_window=0, test=FAST.test, min_failures=1000)
    async with Evolution(library, config=cfg, publish=lambda t, p: sent.append((t, p))) as evo:
        rollout.propose_candidate(skill, candidate(tmp_path, "print('v2')\n"), {"by": "test"})
        changes = [e.change for e in await evo.tick()]
        for i in range(40):
            await evo.observe(trace(f"a{i}", version="1", candidate=False, ok=not candidate_ok))
            await evo.observe(trace(f"c{i}", version="2", candidate=True, ok=candidate_ok))
            changes += [e.change for e in await evo.tick()]
            if "promoted" in changes or "rejected" in changes:
                break
        assert json.dumps(evo.status())
    assert all(t == "_SKILLSCALE_SKILLS_CHANGED" for t, _ in sent)
    assert [json.loads(p)["change"] for _, p in sent] == changes
    return changes


async def test_a_better_candidate_is_promoted(library: Path, tmp_path: Path) -> None:
    changes = await run_canary(library, tmp_path, candidate_ok=True)
    assert changes == ["canary", "promoted"]
    skill = library / "cat" / "echo"
    assert (skill / "scripts" / "run.py").read_text() == "print('v2')\n"
    state = rollout.read_rollout(skill)
    assert state is not None and state.active == "2"
    assert (state.versions["2"].reason or "").startswith("sprt: candidate better")
    # a rollback by anyone (here: the API behind the CLI) is announced too
    async with Evolution(library, config=FAST, publish=False) as evo:
        rollout.rollback(skill, reason="operator")
        [event] = await evo.tick()
    assert (event.change, event.version, event.active) == ("rolled_back", "1", "1")
    assert (skill / "scripts" / "run.py").read_text() == "print('v1')\n"


async def test_a_worse_candidate_is_rejected(library: Path, tmp_path: Path) -> None:
    changes = await run_canary(library, tmp_path, candidate_ok=False)
    assert changes == ["canary", "rejected"]
    skill = library / "cat" / "echo"
    assert (skill / "scripts" / "run.py").read_text() == "print('v1')\n"
    state = rollout.read_rollout(skill)
    assert state is not None and state.active == "1" and state.versions["2"].state == "retired"


async def test_negative_feedback_within_the_window_fails_the_run(library: Path) -> None:
    cfg = EvolutionConfig(feedback_window=60, min_failures=2, degraded_rate=0.5)
    async with Evolution(library, config=cfg, publish=False) as evo:
        await evo.observe(trace("r1", version="1", candidate=False, ok=True))
        await evo.observe(FeedbackEvent(request_id="r1", score=0.1))
        await evo.observe(trace("r2", version="1", candidate=False, ok=True))
        await evo.observe({"event": "feedback", "request_id": "r2", "score": 0.0})
        await evo.observe({"event": "feedback", "request_id": "r3", "score": 7})  # malformed
        await evo.observe({"event": "execution", "request_id": 5})  # malformed
        assert evo.rejected_events == 2
        changes = [e.change for e in await evo.tick()]
    assert changes == ["degraded"]
    state = rollout.read_rollout(library / "cat" / "echo")
    assert state is not None and state.degraded
    assert state.failures[0].outcome == "negative_feedback" and state.failures[0].count == 2


async def test_repeated_failures_cluster_by_shape_and_stderr_offline(library: Path) -> None:
    async with Evolution(library, config=FAST, publish=False) as evo:
        for i in range(3):
            await evo.observe(trace(f"f{i}", version="1", candidate=False, ok=False,
                                    input_shape="json:object{a}",
                                    stderr=f"Traceback\nKeyError: 'b{i}' at line {i}"))  # fmt: skip
        await evo.observe(trace("g", version="1", candidate=False, ok=False,
                                input_shape="text", stderr="ValueError: x"))  # fmt: skip
        await evo.observe(trace("ok", version="1", candidate=False, ok=True))
        changes = [e.change for e in await evo.tick()]
    assert changes == ["degraded"]
    state = rollout.read_rollout(library / "cat" / "echo")
    assert state is not None and state.degraded and state.canary is None
    [cluster] = state.failures
    assert cluster.count == 3 and cluster.input_shape == "json:object{a}"
    assert "KeyError" in cluster.stderr and cluster.requests == ["f0", "f1", "f2"]
    assert rollout.status(library / "cat" / "echo")["state"] == "degraded"  # type: ignore[index]


REVISION = json.dumps({
    "skill_md": "---\nname: echo\ndescription: Echo things back for tests.\n---\nEcho, fixed.\n",
    "run_py": "import sys\nprint(sys.stdin.read() or 'v-fixed')\n",
})  # fmt: skip


def llm_for(base_url: str) -> LLMClient:
    return LLMClient(LLMSettings(model="m", base_url=base_url, timeout=2, max_retries=0))


async def fail_three(evo: Evolution) -> list[str]:
    for i in range(3):
        await evo.observe(trace(f"f{i}", version="1", candidate=False, ok=False,
                                input_shape="text", stderr="boom"))  # fmt: skip
    return [e.change for e in await evo.tick()]


async def test_with_an_llm_failures_become_a_candidate_in_canary(library: Path) -> None:
    # a rate limit and nonsense first: no candidate, the failure is logged
    with fake_openai(("status", 429), ("text", "sure, here you go"), ("text", REVISION)) as (
        url, script,
    ):  # fmt: skip
        llm = llm_for(url)
        try:
            async with Evolution(library, config=FAST, llm=llm, publish=False) as evo:
                assert await fail_three(evo) == ["degraded"]
                state = rollout.read_rollout(library / "cat" / "echo")
                assert state is not None and state.canary is None
                assert state.log[-1].action == "revision_failed"
                for i in range(3):  # the same cluster is reported once; a new one now
                    await evo.observe(trace(f"h{i}", version="1", candidate=False, ok=False,
                                            input_shape="empty", stderr="boom2"))  # fmt: skip
                assert [e.change for e in await evo.tick()] == []  # nonsense answer
                for i in range(3):
                    await evo.observe(trace(f"k{i}", version="1", candidate=False, ok=False,
                                            input_shape="large", stderr="boom3"))  # fmt: skip
                assert [e.change for e in await evo.tick()] == ["canary"]
        finally:
            await llm.close()
    assert len(script.requests) == 3
    state = rollout.read_rollout(library / "cat" / "echo")
    assert state is not None and state.canary is not None
    assert state.versions[state.canary.version].provenance["by"] == "evolution"
    stored = rollout.candidate_dir(library / "cat" / "echo", state.canary.version)
    assert "v-fixed" in (stored / "scripts" / "run.py").read_text()


async def test_a_hand_edited_skill_gets_a_suggestion_not_a_rewrite(
    library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = types.ModuleType("skillscale.core.skill_history")
    history.is_hand_edited = lambda _path: True  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "skillscale.core.skill_history", history)
    with fake_openai(("text", "Handle empty input before parsing.")) as (url, _script):
        llm = llm_for(url)
        try:
            async with Evolution(library, config=FAST, llm=llm, publish=False) as evo:
                assert await fail_three(evo) == ["degraded"]
        finally:
            await llm.close()
    state = rollout.read_rollout(library / "cat" / "echo")
    assert state is not None and state.canary is None and len(state.versions) == 1
    assert state.suggestions[0].text == "Handle empty input before parsing."


JUDGE_CASES: list[tuple[tuple[str, Any], float | None]] = [
    (("text", "7"), 6 / 9),
    (("text", "10/10"), 1.0),
    (("text", "It is great!"), None),
    (("text", "42"), None),
    (("status", 429), None),
    (("garbage", b"\x00not json"), None),
    (("hang", 1.5), None),
    (("text", "1"), 0.0),
]


async def test_the_llm_judge_scores_or_abstains() -> None:
    with fake_openai(*(answer for answer, _ in JUDGE_CASES)) as (url, _script):
        llm = LLMClient(LLMSettings(model="m", base_url=url, timeout=0.5, max_retries=0))
        try:
            scores = [await LLMJudge(llm).score("echo", "say hi", "hi") for _ in JUDGE_CASES]
        finally:
            await llm.close()
    for score, (_answer, expected) in zip(scores, JUDGE_CASES, strict=True):
        assert score == (pytest.approx(expected) if expected is not None else None)


async def test_the_judge_fails_a_run_it_scores_low(library: Path) -> None:
    class Low:
        async def score(self, skill: str, task: str, output: str) -> float | None:
            return 0.0

    async with Evolution(library, config=FAST, judge=Low(), publish=False) as evo:
        for i in range(3):
            await evo.observe(trace(f"j{i}", version="1", candidate=False, ok=True,
                                    task="t", output="o"))  # fmt: skip
        await evo.settle(10)  # judged off the intake path
        assert [e.change for e in await evo.tick()] == ["degraded"]


async def test_a_judge_that_hangs_delays_counting_only_and_warns_once(
    library: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Hangs:
        async def score(self, skill: str, task: str, output: str) -> float | None:
            await asyncio.sleep(3600)
            return 0.0

    cfg = EvolutionConfig(feedback_window=0, judge_timeout=0.2, min_failures=1)
    async with Evolution(library, config=cfg, judge=Hangs(), publish=False) as evo:
        for i in range(3):
            await evo.observe(trace(f"h{i}", version="1", candidate=False, ok=True,
                                    task="t", output="o"))  # fmt: skip
        # the intake did not wait for the judge: all three are queued, none counted yet
        assert evo.status()["waiting_for_feedback"] == 3
        await evo.settle(10)
        assert evo.judge_stats == {"scored": 0, "unscored": 3, "skipped": 0}
        assert evo.status()["uncounted"] == 3 and await evo.tick() == []  # no failure made up
    warnings = [r for r in caplog.records if "judge" in r.getMessage() and r.levelname == "WARNING"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_feedback_outranks_a_pending_judge(library: Path) -> None:
    release = asyncio.Event()

    class Slow:
        async def score(self, skill: str, task: str, output: str) -> float | None:
            await release.wait()
            return 1.0

    cfg = EvolutionConfig(feedback_window=0, min_failures=1, degraded_rate=0.0)
    async with Evolution(library, config=cfg, judge=Slow(), publish=False) as evo:
        await evo.observe(trace("f1", version="1", candidate=False, ok=True, task="t", output="o"))
        await evo.observe(FeedbackEvent(request_id="f1", score=0.0))
        release.set()
        await evo.settle(10)
        assert evo.judge_stats["scored"] == 0  # settled by the caller before the judge spoke
        assert [e.change for e in await evo.tick()] == ["degraded"]


def test_servers_do_not_route_to_drafts(library: Path, tmp_path: Path) -> None:
    from skillscale.skill_server.registry import SkillRegistry

    skill = library / "cat" / "echo"
    rollout.propose_candidate(skill, candidate(tmp_path, "print('v2')\n"), start_canary=False)
    registry = SkillRegistry([library])
    registry.reload()
    active = registry.catalog.skills["echo"]
    assert registry.canaries == {}
    assert all(registry.route(active, f"caller{i}") == (active, False) for i in range(50))
    rollout.start_canary(skill, share=1.0)
    registry.reload()
    routed, on_candidate = registry.route(active, "caller0")
    assert on_candidate and routed.version == "2"
