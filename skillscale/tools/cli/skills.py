"""``skillscale skills``: list, show, validate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skillscale.core.discovery import SkillDiscovery
from skillscale.core.protocol import topic_for_category
from skillscale.core.skill_format import SkillFormatError, load_skill
from skillscale.tools.cli import skills_rollout
from skillscale.tools.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    _dirs,
    add_skills_dir,
)


def _cmd_skills(args: argparse.Namespace) -> int:
    if args.skills_cmd in skills_rollout.COMMANDS:
        return skills_rollout.run(args)
    if args.skills_cmd == "validate":
        return _skills_validate(args)
    catalog = SkillDiscovery(_dirs(args.skills_dir)).scan()
    if args.skills_cmd == "show":
        skill = catalog.skills.get(args.name)
        if skill is None:
            print(f"error: no skill named {args.name!r}", file=sys.stderr)
            return EXIT_FAIL
        info = skill.summary() | {"topic": topic_for_category(catalog.category_of[skill.name])}
        if args.json:
            print(json.dumps(info | {"body": skill.body}, indent=2))
        else:
            for key, value in info.items():
                if value not in (None, {}, ""):
                    print(f"{key:12} {value}")
            print("\n" + skill.body)
        return EXIT_OK
    topics = catalog.topics()
    if args.json:
        print(
            json.dumps(
                {topic: [s.summary() for s in skills] for topic, skills in topics.items()},
                indent=2,
            )
        )
    else:
        for topic, skills in topics.items():
            print(topic)
            for skill in skills:
                print(f"  {skill.name:<24} {skill.description[:90]}")
        for problem in catalog.problems:
            print(f"warning: {problem.path}: {problem.message}", file=sys.stderr)
    return EXIT_OK


def _skills_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or _dirs(args.skills_dir)
    failures = 0
    for path in paths:
        if (path / "SKILL.md").is_file():
            try:
                skill = load_skill(path)
                print(f"ok    {skill.name}  ({skill.path})")
            except SkillFormatError as exc:
                failures += 1
                for message in exc.problems:
                    print(f"FAIL  {exc.path}: {message}")
            continue
        catalog = SkillDiscovery([path]).scan()
        for skill in catalog.skills.values():
            print(f"ok    {skill.name}  ({skill.path})")
        for problem in catalog.problems:
            failures += 1
            print(f"FAIL  {problem.path}: {problem.message}")
    return EXIT_FAIL if failures else EXIT_OK


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_skills = sub.add_parser("skills", help="list, show or validate skills")
    skills_sub = p_skills.add_subparsers(dest="skills_cmd", required=True)
    p_list = skills_sub.add_parser("list", help="skills by topic")
    p_show = skills_sub.add_parser("show", help="one skill in full")
    p_show.add_argument("name")
    p_validate = skills_sub.add_parser("validate", help="check skills against the spec")
    p_validate.add_argument("paths", nargs="*", help="skill folders or roots")
    for p in (p_list, p_show, p_validate):
        add_skills_dir(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    skills_rollout.add_parsers(skills_sub)
    p_skills.set_defaults(func=_cmd_skills)
