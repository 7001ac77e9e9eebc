"""Skill discovery: scan skill roots into a catalogue of topics and skills.

A root may be

* a folder of category folders (``skills/data-processing/text-summarizer``),
  each category becoming the topic ``TOPIC_<CATEGORY>``;
* a category folder itself (``skills/data-processing``);
* a single skill folder (one containing ``SKILL.md``).

``AGENTS.md`` files (openskills tables) in a root or category folder add the
skills they list. Invalid skills are reported as problems and skipped; the
first root to provide a name wins, so project skills override user skills.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from skillscale.core.agents_md import parse_agents_md, resolve_location
from skillscale.core.errors import SkillNotFoundError
from skillscale.core.protocol import topic_for_category
from skillscale.core.skill_format import Skill, SkillFormatError, load_skill


@dataclass(frozen=True)
class SkillProblem:
    """A skill (or AGENTS.md row) that was found but could not be used."""

    path: Path
    message: str


@dataclass
class Catalog:
    """The result of a scan: skills by name, their categories, and problems."""

    skills: dict[str, Skill] = field(default_factory=dict)
    category_of: dict[str, str] = field(default_factory=dict)
    problems: list[SkillProblem] = field(default_factory=list)

    def topics(self) -> dict[str, list[Skill]]:
        """Topic name -> skills of that category, both sorted."""
        out: dict[str, list[Skill]] = {}
        for name in sorted(self.skills):
            out.setdefault(topic_for_category(self.category_of[name]), []).append(self.skills[name])
        return dict(sorted(out.items()))

    def categories(self) -> dict[str, Path]:
        """Category name -> the folder its skills share (for ``skillscale up``)."""
        out: dict[str, Path] = {}
        for name, category in self.category_of.items():
            out.setdefault(category, self.skills[name].path.parent)
        return dict(sorted(out.items()))

    def get(self, name: str) -> Skill:
        """The skill called ``name``; raises :class:`SkillNotFoundError`."""
        try:
            return self.skills[name]
        except KeyError:
            raise SkillNotFoundError(f"no skill named {name!r}") from None

    def _add(self, skill: Skill, category: str) -> None:
        existing = self.skills.get(skill.name)
        if existing is not None:
            if existing.path != skill.path:
                self.problems.append(
                    SkillProblem(skill.path, f"skill {skill.name!r} shadowed by {existing.path}")
                )
            return
        self.skills[skill.name] = skill
        self.category_of[skill.name] = category


def _child_dirs(path: Path) -> list[Path]:
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return []
    return [p for p in children if not p.name.startswith((".", "_"))]


class SkillDiscovery:
    """Scans skill roots; ``scan()`` returns a fresh :class:`Catalog` each call."""

    def __init__(self, roots: Sequence[Path | str], *, home: Path | None = None) -> None:
        self.roots = [Path(r).expanduser() for r in roots]
        self.home = home

    def scan(self) -> Catalog:
        """Load every valid skill below the roots."""
        catalog = Catalog()
        for root in self.roots:
            self._scan_root(root.resolve(), catalog)
        return catalog

    def _scan_root(self, root: Path, catalog: Catalog) -> None:
        if not root.is_dir():
            catalog.problems.append(SkillProblem(root, "skill root is not a directory"))
            return
        if (root / "SKILL.md").is_file():
            self._load_into(root, root.parent.name, catalog)
            return
        self._scan_agents_md(root, catalog)
        for child in _child_dirs(root):
            if (child / "SKILL.md").is_file():
                self._load_into(child, root.name, catalog)
                continue
            for grandchild in _child_dirs(child):
                if (grandchild / "SKILL.md").is_file():
                    self._load_into(grandchild, child.name, catalog)
            self._scan_agents_md(child, catalog)

    def _scan_agents_md(self, folder: Path, catalog: Catalog) -> None:
        agents_md = folder / "AGENTS.md"
        if not agents_md.is_file():
            return
        try:
            entries = parse_agents_md(agents_md.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            catalog.problems.append(SkillProblem(agents_md, f"cannot read: {exc}"))
            return
        for entry in entries:
            location = resolve_location(entry, agents_md, self.home)
            if location is None:
                catalog.problems.append(
                    SkillProblem(
                        agents_md,
                        f"lists skill {entry.name!r} (location {entry.location!r}) "
                        "but no SKILL.md was found for it",
                    )
                )
                continue
            self._load_into(location, folder.name, catalog)

    @staticmethod
    def _load_into(directory: Path, category: str, catalog: Catalog) -> None:
        try:
            skill = load_skill(directory)
        except SkillFormatError as exc:
            catalog.problems.extend(SkillProblem(exc.path, p) for p in exc.problems)
            return
        catalog._add(skill, category)


def scan(roots: Iterable[Path | str]) -> Catalog:
    """Shorthand for ``SkillDiscovery(list(roots)).scan()``."""
    return SkillDiscovery(list(roots)).scan()


def bundled_skills_dir() -> Path:
    """The skills shipped with SkillScale (wheel: package data; checkout: ``skills/``)."""
    package_dir = Path(__file__).resolve().parent.parent  # skillscale/
    installed = package_dir / "bundled_skills"
    return installed if installed.is_dir() else package_dir.parent / "skills"


def default_skills_dirs() -> list[Path]:
    """``SKILLSCALE_SKILLS_DIR`` (``os.pathsep``-separated), else ``./skills``, else bundled."""
    configured = os.environ.get("SKILLSCALE_SKILLS_DIR")
    if configured:
        return [Path(p).expanduser() for p in configured.split(os.pathsep) if p]
    local = Path.cwd() / "skills"
    return [local] if local.is_dir() else [bundled_skills_dir()]
