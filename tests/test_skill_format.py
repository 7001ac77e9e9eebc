"""SKILL.md validation, AGENTS.md tables, and discovery over skill roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillscale.core.agents_md import AgentsMdEntry, parse_agents_md, resolve_location
from skillscale.core.discovery import SkillDiscovery
from skillscale.core.skill_format import SkillFormatError, load_skill, split_frontmatter
from tests.helpers import BUNDLED_SKILLS, FIXTURE_SKILLS


def write_skill(root: Path, name: str, frontmatter: str, body: str = "# Body\n") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(f"---\n{frontmatter}---\n{body}")
    return folder


def test_bundled_skills_are_valid_and_executable() -> None:
    catalog = SkillDiscovery([BUNDLED_SKILLS]).scan()
    assert catalog.problems == []
    assert sorted(catalog.skills) == [
        "code-complexity",
        "csv-analyzer",
        "dead-code-detector",
        "text-summarizer",
    ]
    assert list(catalog.topics()) == ["TOPIC_CODE_ANALYSIS", "TOPIC_DATA_PROCESSING"]
    for skill in catalog.skills.values():
        assert skill.entrypoint is not None and skill.entrypoint.name == "run.py"
        assert skill.version == "1.0.0"
        assert skill.timeout is not None


def test_minimal_skill_loads(tmp_path: Path) -> None:
    folder = write_skill(tmp_path, "tiny", "name: tiny\ndescription: Does a tiny thing.\n")
    skill = load_skill(folder)
    assert skill.name == "tiny" and skill.entrypoint is None and skill.body == "# Body"


@pytest.mark.parametrize(
    ("frontmatter", "problem"),
    [
        ("description: x\n", "'name' is required"),
        ("name: other\ndescription: x\n", "must equal the directory name"),
        ("name: skill\n", "'description' is required"),
        ("name: skill\ndescription: '" + "d" * 1025 + "'\n", "at most 1024"),
        ("name: skill\ndescription: x\ntopic: T\n", "unknown frontmatter keys topic"),
        ("name: skill\ndescription: x\ncompatibility: '" + "c" * 501 + "'\n", "at most 500"),
        ("name: skill\ndescription: x\nmetadata: [1, 2]\n", "'metadata' must be a mapping"),
        ("name: skill\ndescription: x\nmetadata:\n  nested: {a: 1}\n", "metadata.nested"),
        ("name: skill\ndescription: x\nallowed-tools: [a]\n", "'allowed-tools' must be a string"),
    ],
)
def test_frontmatter_rules(tmp_path: Path, frontmatter: str, problem: str) -> None:
    folder = write_skill(tmp_path, "skill", frontmatter)
    with pytest.raises(SkillFormatError) as info:
        load_skill(folder)
    assert any(problem in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("name", ["Bad", "-bad", "bad-", "ba--d", "b_d"])
def test_name_charset(tmp_path: Path, name: str) -> None:
    folder = write_skill(tmp_path, name, f"name: {name}\ndescription: x\n")
    with pytest.raises(SkillFormatError):
        load_skill(folder)


def test_missing_frontmatter_and_bad_yaml(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "SKILL.md").write_text("# no frontmatter\n")
    with pytest.raises(SkillFormatError, match="frontmatter"):
        load_skill(tmp_path / "a")
    with pytest.raises(ValueError, match="YAML"):
        split_frontmatter("---\nname: [unclosed\n---\n")


def test_metadata_scalars_become_strings(tmp_path: Path) -> None:
    folder = write_skill(
        tmp_path, "m", "name: m\ndescription: x\nmetadata:\n  timeout: 30\n  flag: true\n"
    )
    skill = load_skill(folder)
    assert skill.metadata == {"timeout": "30", "flag": "true"}
    assert skill.timeout == 30.0


def test_invalid_skills_are_reported_and_skipped() -> None:
    catalog = SkillDiscovery([FIXTURE_SKILLS / "testing"]).scan()
    assert "echo" in catalog.skills
    assert "Bad_Skill" not in catalog.skills
    assert any("Bad_Skill" in str(p.path) for p in catalog.problems)
    assert catalog.skills["echo-sh"].entrypoint is not None
    assert catalog.skills["echo-sh"].entrypoint.name == "run.sh"
    assert catalog.skills["guide"].entrypoint is None


OPENSKILLS_BLOCK = """# AGENTS

<skills_system priority="1">
## Available Skills
<!-- SKILLS_TABLE_START -->
<usage>How to use skills ...</usage>
<available_skills>
<skill>
<name>alpha</name>
<description>Alpha &amp; omega: does A.</description>
<location>project</location>
</skill>
<skill>
<name>beta</name>
<description>Does B.</description>
<location>global</location>
</skill>
<skill>
<name>gamma</name>
<description>Does C.</description>
<location>./vendor/gamma</location>
</skill>
<skill>
<name>ghost</name>
<description>Nowhere.</description>
<location>project</location>
</skill>
</available_skills>
<!-- SKILLS_TABLE_END -->
</skills_system>
"""


def test_parse_agents_md_table() -> None:
    entries = parse_agents_md(OPENSKILLS_BLOCK)
    assert [e.name for e in entries] == ["alpha", "beta", "gamma", "ghost"]
    assert entries[0] == AgentsMdEntry("alpha", "Alpha & omega: does A.", "project")


def test_agents_md_locations_resolve(tmp_path: Path) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    write_skill(project / ".agent" / "skills", "alpha", "name: alpha\ndescription: A\n")
    write_skill(home / ".claude" / "skills", "beta", "name: beta\ndescription: B\n")
    write_skill(project / "vendor", "gamma", "name: gamma\ndescription: C\n")
    agents_md = project / "AGENTS.md"
    agents_md.write_text(OPENSKILLS_BLOCK)
    entries = {e.name: e for e in parse_agents_md(OPENSKILLS_BLOCK)}
    assert resolve_location(entries["alpha"], agents_md, home) == project / ".agent/skills/alpha"
    assert resolve_location(entries["beta"], agents_md, home) == home / ".claude/skills/beta"
    assert resolve_location(entries["gamma"], agents_md, home) == project / "vendor/gamma"
    assert resolve_location(entries["ghost"], agents_md, home) is None

    catalog = SkillDiscovery([project], home=home).scan()
    assert sorted(catalog.skills) == ["alpha", "beta", "gamma"]
    assert any("ghost" in p.message for p in catalog.problems)


def test_first_root_wins_and_shadowing_is_reported(tmp_path: Path) -> None:
    project, user = tmp_path / "project", tmp_path / "user"
    write_skill(project / "cat", "same", "name: same\ndescription: project version\n")
    write_skill(user / "cat", "same", "name: same\ndescription: user version\n")
    catalog = SkillDiscovery([project, user]).scan()
    assert catalog.skills["same"].description == "project version"
    assert any("shadowed" in p.message for p in catalog.problems)


def test_root_kinds(tmp_path: Path) -> None:
    write_skill(tmp_path / "skills" / "data-x", "one", "name: one\ndescription: First.\n")
    write_skill(tmp_path / "skills" / "data-x", "two", "name: two\ndescription: Second.\n")
    by_parent = SkillDiscovery([tmp_path / "skills"]).scan()
    assert by_parent.topics().keys() == {"TOPIC_DATA_X"}
    by_category = SkillDiscovery([tmp_path / "skills" / "data-x"]).scan()
    assert sorted(by_category.skills) == ["one", "two"]
    single = SkillDiscovery([tmp_path / "skills" / "data-x" / "one"]).scan()
    assert list(single.skills) == ["one"] and single.category_of["one"] == "data-x"
    missing = SkillDiscovery([tmp_path / "nope"]).scan()
    assert missing.skills == {} and missing.problems
