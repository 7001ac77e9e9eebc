"""``skillscale skills status|install|promote|canary|reject`` (in-process), and where new
distilled versions start (``--new-versions``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from skillscale.core import rollout, skill_history
from skillscale.core.discovery import SkillDiscovery
from skillscale.distiller.evolution import Evolution, EvolutionConfig
from skillscale.distiller.pipeline import Options, distill_once
from skillscale.tools.cli import main
from tests.test_distill import PROMPTS, _session
from tests.test_rollout import candidate, write_skill


@pytest.fixture(autouse=True)
def _no_announcement(monkeypatch: pytest.MonkeyPatch) -> None:
    # These calls are about the files; announcing is tests/test_skills_announce.py's,
    # and with no fabric on the default ports each attempt waits out its deadline.
    monkeypatch.setenv("SKILLSCALE_NO_ANNOUNCE", "1")


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    write_skill(tmp_path / "lib" / "cat" / "echo", "echo", "print('v1')\n", "1")
    write_skill(tmp_path / "lib" / "cat" / "plain", "plain", "print('p')\n", "1")
    return tmp_path / "lib"


def test_status_shows_the_canary_statistics(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skill = library / "cat" / "echo"
    rollout.propose_candidate(skill, candidate(tmp_path, "print('v2')\n"), share=0.25)
    state = rollout.read_rollout(skill)
    assert state is not None and state.canary is not None
    for _ in range(3):
        state.canary.record("active", False, 10.0)
        state.canary.record("candidate", True, 8.0)
    state.canary.record("active", True, 12.0)
    rollout.write_rollout(skill, state)
    assert main(["skills", "status", "--skills-dir", str(library), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    canary = report["echo"]["canary"]
    assert report["echo"]["state"] == "canary" and report["plain"]["state"] == "active"
    assert canary["arms"]["active"] == {"n": 4, "successes": 1, "success_rate": 0.25,
                                        "mean_latency_ms": 10.5}  # fmt: skip
    assert canary["arms"]["candidate"]["n"] == 3 and canary["pairs"]["candidate_wins"] == 3
    sprt = rollout.SPRT(rollout.TestSettings())
    assert canary["llr"] == pytest.approx(3 * sprt.win, abs=1e-3)
    assert canary["bounds"] == [pytest.approx(sprt.lower, abs=1e-3),
                                pytest.approx(sprt.upper, abs=1e-3)]  # fmt: skip
    assert canary["decision"] == "continue" and canary["time_left"] > 0
    assert main(["skills", "status", "echo", "--skills-dir", str(library)]) == 0
    text = capsys.readouterr().out
    assert "canary v2 on 25% of callers" in text and "SPRT LLR" in text
    assert "candidate  n=3" in text and "success 100.0%" in text


def test_status_of_an_unknown_skill_is_one_line(library: Path) -> None:
    assert main(["skills", "status", "nope", "--skills-dir", str(library)]) != 0


def test_install_links_the_library_into_each_agent(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    (home / ".cursor" / "skills" / "plain").mkdir(parents=True)  # the user's own skill
    args = ["skills", "install", "--skills-dir", str(library), "--target-root", str(home), "--json"]
    code = main([*args, "--agent", "claude", "--agent", "codex", "--agent", "cursor"])
    report = json.loads(capsys.readouterr().out)["agents"]
    assert code == 1  # the user's folder was left alone, and said so
    assert report["claude"]["linked"] == ["echo", "plain"]
    assert report["cursor"] == {"linked": ["echo"], "unchanged": [], "skipped": ["plain"]}
    link = home / ".claude" / "skills" / "echo"
    assert link.is_symlink() and link.resolve() == (library / "cat" / "echo").resolve()
    assert (home / ".agents" / "skills" / "plain" / "SKILL.md").is_file()
    assert not (home / ".cursor" / "skills" / "plain").is_symlink()
    assert main([*args, "--agent", "claude", "--agent", "opencode"]) == 0
    again = json.loads(capsys.readouterr().out)["agents"]
    assert again["claude"]["unchanged"] == ["echo", "plain"] and not again["claude"]["linked"]
    assert again["opencode"]["unchanged"] == ["echo", "plain"]  # the same folder as codex


def test_a_new_skill_as_a_draft_is_unserved_until_promoted(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = library / "cat" / "fresh"
    source = write_skill(tmp_path / "src" / "fresh", "fresh", "print('f')\n")
    assert rollout.create_draft_skill(fresh, source, {"by": "test"}) == "1"
    with pytest.raises(rollout.RolloutError):
        rollout.create_draft_skill(fresh, source)
    assert "fresh" not in SkillDiscovery([library]).scan().skills  # no server serves it
    assert rollout.find_drafts([library]) == {"fresh": fresh}
    assert main(["skills", "status", "fresh", "--skills-dir", str(library), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["fresh"]
    assert info["state"] == "draft" and info["active"] is None and info["drafts"] == ["1"]
    # a canary needs an active version to compare with
    assert main(["skills", "canary", "fresh", "--skills-dir", str(library)]) != 0
    capsys.readouterr()
    assert main(["skills", "promote", "fresh", "--skills-dir", str(library)]) == 0
    assert "fresh version 1 is active" in capsys.readouterr().out
    skill = SkillDiscovery([library]).scan().skills["fresh"]
    assert skill.version == "1" and (fresh / "scripts" / "run.py").read_text() == "print('f')\n"
    assert rollout.find_drafts([library]) == {}
    assert skill_history.log(fresh)  # the promotion is in the skill's history


def test_draft_policy_waits_for_the_cli_to_start_or_reject_a_canary(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skill = library / "cat" / "echo"
    rollout.propose_candidate(skill, candidate(tmp_path, "print('v2')\n"), start_canary=False)

    async def tick(policy: rollout.NewVersions) -> list[str]:
        config = EvolutionConfig(new_versions=policy)
        async with Evolution(library, config=config, publish=False) as evo:
            return [e.change for e in await evo.tick()]

    assert asyncio.run(tick("draft")) == []
    state = rollout.read_rollout(skill)
    assert state is not None and state.canary is None and state.drafts() == ["2"]
    args = ["--skills-dir", str(library)]
    assert main(["skills", "canary", "echo", "--share", "0.3", *args]) == 0
    assert "echo version 2 is in canary on 30% of callers" in capsys.readouterr().out
    state = rollout.read_rollout(skill)
    assert state is not None and state.canary is not None and state.canary.share == 0.3
    assert main(["skills", "reject", "echo", "--reason", "not today", *args]) == 0
    state = rollout.read_rollout(skill)
    assert state is not None and state.versions["2"].state == "retired"
    assert state.versions["2"].reason == "not today"
    # under the default policy a waiting draft enters the canary by itself
    rollout.propose_candidate(skill, candidate(tmp_path, "print('v3')\n"), start_canary=False)
    assert asyncio.run(tick("canary")) == ["canary"]
    assert main(["skills", "reject", "nope", *args]) != 0


@pytest.mark.parametrize("policy", ["draft", "canary", "active"])
def test_the_distillers_new_version_policy(tmp_path: Path, policy: str) -> None:
    root, lib = tmp_path / "claude", tmp_path / "lib"
    for i in range(3):
        steps = [("ruff check", "error: no paths given"), ("ruff check src --fix", None)]
        _session(root / "p" / f"a{i}.jsonl", PROMPTS[i % 3], steps)
    opts = Options(lib, [("claude-code", root)], new_versions=policy)
    first = asyncio.run(distill_once(opts))
    (made,) = first.skills["created"]
    skill_dir = Path(made["path"])
    served = SkillDiscovery([lib]).scan().skills
    assert (made["name"] in served) == (policy != "draft"), (policy, made)
    if policy == "draft":
        assert rollout.find_drafts([lib]) == {made["name"]: skill_dir}
        again = asyncio.run(distill_once(opts))  # an unchanged draft stays as it is
        assert again.skills["created"] == [] and len(again.skills["unchanged"]) == 1
        rollout.promote(skill_dir, "by hand")
    for i in range(4):  # an improved procedure: a new version of the skill
        _session(root / "p" / f"b{i}.jsonl", PROMPTS[(i + 1) % 3],
                 [("ruff check src --fix", "error: unknown rule E999"),
                  ("ruff check src --fix --ignore E999", None)])  # fmt: skip
    second = asyncio.run(distill_once(opts))
    (update,) = second.skills["candidates"]
    state = rollout.read_rollout(skill_dir)
    assert state is not None
    version = update["version"]
    expected = {"draft": "draft", "canary": "canary", "active": "active"}[policy]
    assert state.versions[version].state == expected, state.versions
    served_now = SkillDiscovery([lib]).scan().skills[made["name"]]
    assert (served_now.version == version) == (policy == "active")
