"""``skillscale skills``: list, show, validate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skillscale.core import rollout
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
    if args.skills_cmd in ("log", "diff", "rollback"):
        return _skills_history(args)
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


def _skills_history(args: argparse.Namespace) -> int:
    """``log|diff|rollback NAME``: the skill's own git history (dulwich)."""
    from skillscale.core import skill_history
    from skillscale.core.errors import ConfigError

    skill = SkillDiscovery(_dirs(args.skills_dir)).scan().get(args.name)
    if args.skills_cmd == "log":
        entries = skill_history.log(skill.path)
        if not entries:
            raise ConfigError(f"skill {args.name!r} at {skill.path} has no history yet")
        if args.json:
            print(json.dumps([e.__dict__ | {"hand_edit": e.hand_edit} for e in entries], indent=2))
        else:
            for e in entries:
                title = e.message.splitlines()[0] if e.message else ""
                mark = "  [hand edit]" if e.hand_edit else ""
                print(f"{e.sha[:10]}  {e.author.split(' <')[0]:<18} {title}{mark}")
        return EXIT_OK
    if args.skills_cmd == "diff":
        print(skill_history.diff(skill.path, args.old, args.new), end="")
        return EXIT_OK
    sha = skill_history.rollback(skill.path, args.to)
    version = rollout.folder_version(skill.path)
    state = rollout.read_rollout(skill.path)
    announced = skills_rollout.announce(
        args, "rolled_back", args.name, version, state.active if state else version,
        skill.path, f"rollback to {args.to} (commit {sha[:10]})",
    )  # fmt: skip
    print(f"rolled {args.name} back to {args.to}: commit {sha[:10]}"
          + (" (announced to the servers)" if announced else ""))  # fmt: skip
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Add this command group to the ``skillscale`` parser."""
    p_skills = sub.add_parser("skills", help="list, show or validate skills")
    skills_sub = p_skills.add_subparsers(dest="skills_cmd", required=True)
    p_list = skills_sub.add_parser("list", help="skills by topic")
    p_show = skills_sub.add_parser("show", help="one skill in full")
    p_show.add_argument("name")
    p_validate = skills_sub.add_parser("validate", help="check skills against the spec")
    p_validate.add_argument("paths", nargs="*", help="skill folders or roots")
    p_log = skills_sub.add_parser("log", help="a skill's change history, newest first")
    p_log.add_argument("name")
    p_diff = skills_sub.add_parser("diff", help="what changed between two versions of a skill")
    p_diff.add_argument("name")
    p_diff.add_argument("old", nargs="?", default="HEAD~1", help="sha prefix or HEAD~N")
    p_diff.add_argument("new", nargs="?", default=None, help="default: the working tree")
    p_rb = skills_sub.add_parser("rollback", help="restore an earlier version (a new commit)")
    p_rb.add_argument("name")
    p_rb.add_argument("--to", default="HEAD~1", help="sha prefix or HEAD~N (default HEAD~1)")
    skills_rollout.add_announce_flags(p_rb)
    for p in (p_list, p_show, p_validate, p_log, p_diff, p_rb):
        add_skills_dir(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    skills_rollout.add_parsers(skills_sub)
    p_skills.set_defaults(func=_cmd_skills)
