"""``skillscale skills status`` and ``skillscale skills install`` (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skillscale.core import rollout
from skillscale.tools.cli import main
from tests.test_rollout import candidate, write_skill


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
