"""The rollout file, candidate versions, and the sequential test (no processes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from skillscale.core import rollout
from skillscale.core.skill_format import load_skill


def write_skill(folder: Path, name: str, script: str, version: str | None = None) -> Path:
    (folder / "scripts").mkdir(parents=True, exist_ok=True)
    meta = f"metadata:\n  version: '{version}'\n" if version else ""
    (folder / "SKILL.md").write_text(
        f"---\nname: {name}\ndescription: Echo things back for tests.\n{meta}---\nEcho.\n"
    )
    (folder / "scripts" / "run.py").write_text(script)
    return folder


@pytest.fixture()
def skill(tmp_path: Path) -> Path:
    return write_skill(tmp_path / "lib" / "cat" / "echo", "echo", "print('v1')\n", "1")


def candidate(tmp_path: Path, script: str, extra: str | None = None) -> Path:
    source = write_skill(tmp_path / "src" / "echo", "echo", script)
    if extra:
        (source / "scripts" / "helper.py").write_text(extra)
    return source


def test_propose_starts_a_canary_with_its_own_version(skill: Path, tmp_path: Path) -> None:
    version = rollout.propose_candidate(skill, candidate(tmp_path, "print('v2')\n"), {"by": "t"})
    assert version == "2"
    folder = rollout.candidate_dir(skill, "2")
    assert rollout.load_version(skill, "2").version == "2"
    assert (folder / "scripts" / "run.py").read_text() == "print('v2')\n"
    state = rollout.read_rollout(skill)
    assert state is not None and state.canary is not None
    assert state.active == "1" and state.canary.version == "2"
    assert state.versions["2"].state == "canary" and state.versions["2"].provenance == {"by": "t"}
    # the active folder is untouched until promotion
    assert (skill / "scripts" / "run.py").read_text() == "print('v1')\n"
    # a second proposal while the canary runs waits as a draft
    assert rollout.propose_candidate(skill, candidate(tmp_path, "print('v3')\n")) == "3"
    state = rollout.read_rollout(skill)
    assert state is not None and state.versions["3"].state == "draft"


def test_promote_then_rollback_restores_files_and_versions(skill: Path, tmp_path: Path) -> None:
    rollout.propose_candidate(skill, candidate(tmp_path, "print('v2')\n", extra="X = 1\n"))
    assert rollout.promote(skill, "test") == "2"
    assert (skill / "scripts" / "run.py").read_text() == "print('v2')\n"
    assert (skill / "scripts" / "helper.py").is_file()
    assert load_skill(skill).version == "2"
    state = rollout.read_rollout(skill)
    assert state is not None and state.active == "2" and state.canary is None
    assert state.versions["1"].state == "retired"
    assert rollout.rollback(skill) == "1"
    assert (skill / "scripts" / "run.py").read_text() == "print('v1')\n"
    assert not (skill / "scripts" / "helper.py").exists()
    assert load_skill(skill).version == "1"
    state = rollout.read_rollout(skill)
    assert state is not None and state.active == "1" and state.versions["2"].state == "retired"
    with pytest.raises(rollout.RolloutError):
        rollout.rollback(skill, "1")


def test_reject_keeps_the_active_version(skill: Path, tmp_path: Path) -> None:
    rollout.propose_candidate(skill, candidate(tmp_path, "print('v2')\n"))
    assert rollout.reject(skill, "worse") == "2"
    state = rollout.read_rollout(skill)
    assert state is not None and state.canary is None and state.active == "1"
    assert state.versions["2"].state == "retired" and state.versions["2"].reason == "worse"
    with pytest.raises(rollout.RolloutError):
        rollout.reject(skill)


def test_a_candidate_may_come_from_any_folder_name(skill: Path, tmp_path: Path) -> None:
    source = write_skill(tmp_path / "tmpabc123", "echo", "print('v2')\n")
    assert rollout.propose_candidate(skill, source, "distill: propose echo v2") == "2"
    state = rollout.read_rollout(skill)
    assert state is not None
    assert state.versions["2"].provenance == {"message": "distill: propose echo v2"}


def test_a_candidate_with_another_name_is_refused(skill: Path, tmp_path: Path) -> None:
    other = write_skill(tmp_path / "src" / "other", "other", "print(1)\n")
    with pytest.raises(rollout.RolloutError):
        rollout.propose_candidate(skill, other)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"versions": {"1": {"state": "weird"}}}', b"[" * 100_000, b"x" * (2 << 20)],
)
def test_a_broken_rollout_file_reads_as_none(skill: Path, content: bytes) -> None:
    path = rollout.rollout_path(skill)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert rollout.read_rollout(skill) is None


def test_sprt_bounds_and_steps_are_walds() -> None:
    sprt = rollout.SPRT(rollout.TestSettings(alpha=0.05, beta=0.1, odds_ratio=2.0))
    assert sprt.upper == pytest.approx(math.log(0.9 / 0.05))
    assert sprt.lower == pytest.approx(math.log(0.1 / 0.95))
    assert sprt.win == pytest.approx(math.log((2 / 3) / 0.5))
    assert sprt.decide(sprt.llr(11, 0)) == "promote"
    assert sprt.decide(sprt.llr(0, 6)) == "reject"
    assert sprt.decide(sprt.llr(5, 5)) == "continue"


def test_canary_pairs_outcomes_and_decides() -> None:
    canary = rollout.Canary(version="2")
    for _ in range(20):
        canary.record("active", False, 10)
        canary.record("candidate", True, 5)
    assert canary.pairs.candidate_wins == 20 and canary.arms.candidate.successes == 20
    verdict, why = canary.decision()
    assert verdict == "promote" and "sprt" in why
    status = canary.status()
    assert status["arms"]["active"]["success_rate"] == 0.0
    assert status["llr"] >= status["bounds"][1]
    json.dumps(status)
    # pending outcomes are bounded
    lone = rollout.Canary(version="3")
    for _ in range(500):
        lone.record("active", True)
    assert len(lone.pending.active) == rollout.MAX_PENDING
    # undecided past its time limit: rejected as inconclusive
    slow = rollout.Canary(version="4", time_limit=1.0, started=0.0)
    assert slow.decision(now=10.0)[0] == "reject"


def test_routing_is_stable_per_caller_and_close_to_the_share() -> None:
    callers = [f"caller-{i}" for i in range(4000)]
    chosen = [rollout.in_canary(c, "echo", "2", 0.25) for c in callers]
    assert 0.22 < sum(chosen) / len(chosen) < 0.28
    assert chosen == [rollout.in_canary(c, "echo", "2", 0.25) for c in callers]
    assert not rollout.in_canary("x", "echo", "2", 0.0)
    assert rollout.in_canary("x", "echo", "2", 1.0)


def test_discovery_ignores_stored_versions_and_the_registry_routes_to_the_canary(
    skill: Path, tmp_path: Path
) -> None:
    from skillscale.core.discovery import SkillDiscovery
    from skillscale.skill_server.registry import SkillRegistry

    (skill / ".git").mkdir()
    (skill / ".git" / "SKILL.md").write_text("not a skill")
    rollout.propose_candidate(skill, candidate(tmp_path, "print('v2')\n"), share=0.5)
    library = tmp_path / "lib"
    catalog = SkillDiscovery([library]).scan()
    assert list(catalog.skills) == ["echo"] and not catalog.problems
    registry = SkillRegistry([library])
    registry.reload()
    assert registry.canaries["echo"].version == "2"
    active = registry.get("echo")
    assert active is not None
    callers = [f"c{i}" for i in range(200)]
    routed = [registry.route(active, c) for c in callers]
    assert {s.version for s, on in routed if on} == {"2"}
    assert {s.version for s, on in routed if not on} == {"1"}
    assert 60 < sum(on for _s, on in routed) < 140
    # ending the canary is seen by the periodic check too (rollout.json is fingerprinted)
    assert not registry.reload_if_changed()
    rollout.reject(skill, "test")
    assert registry.reload_if_changed() and not registry.canaries
