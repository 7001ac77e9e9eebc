"""``skillscale skills status`` and ``skillscale skills install``.

``status`` shows each skill's rollout (:mod:`skillscale.core.rollout`): the
active version, a running canary with samples and success rate per arm, the
SPRT log-likelihood ratio against its bounds and the time left, and failure
clusters of a degraded skill. ``install`` links the active library into the
skill folders of coding agents (PRODUCT.md §5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from skillscale.core import rollout
from skillscale.core.discovery import SkillDiscovery
from skillscale.core.errors import ConfigError
from skillscale.tools.cli.common import EXIT_FAIL, EXIT_OK, _dirs, _flag, add_skills_dir

COMMANDS = ("status", "install")

AGENT_DIRS = {
    "claude": Path(".claude") / "skills",
    "codex": Path(".agents") / "skills",
    "opencode": Path(".agents") / "skills",
    "cursor": Path(".cursor") / "skills",
}
"""Where each agent looks for user skills, below the home directory."""


def run(args: argparse.Namespace) -> int:
    """Dispatch ``skills status|install``."""
    if args.skills_cmd == "status":
        return _status(args)
    return _install(args)


def _status(args: argparse.Namespace) -> int:
    catalog = SkillDiscovery(_dirs(args.skills_dir)).scan()
    names = [args.name] if args.name else sorted(catalog.skills)
    if args.name and args.name not in catalog.skills:
        raise ConfigError(
            f"no skill named {args.name!r} in {', '.join(map(str, _dirs(args.skills_dir)))}"
        )
    report: dict[str, Any] = {}
    for name in names:
        skill = catalog.skills[name]
        info = rollout.status(skill.path)
        report[name] = info or {
            "skill": name,
            "active": skill.version,
            "state": "active",
            "degraded": False,
            "canary": None,
            "failures": [],
            "suggestions": [],
        }
        report[name]["path"] = str(skill.path)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    for name, info in report.items():
        print(f"{name:<24} {info['state']:<9} active v{info['active'] or '?'}")
        canary = info.get("canary")
        if canary:
            print(f"  canary v{canary['version']} on {canary['share']:.0%} of callers, "
                  f"{canary['time_left']:.0f} s left, decision: {canary['decision']}")  # fmt: skip
            for arm in ("active", "candidate"):
                stats = canary["arms"][arm]
                rate = "-" if stats["success_rate"] is None else f"{stats['success_rate']:.1%}"
                print(f"    {arm:<10} n={stats['n']:<6} success {rate}")
            low, high = canary["bounds"]
            pairs = canary["pairs"]
            print(f"    SPRT LLR {canary['llr']:+.3f} in [{low:+.3f}, {high:+.3f}] "
                  f"(alpha {canary['test']['alpha']}, beta {canary['test']['beta']}, "
                  f"odds ratio {canary['test']['odds_ratio']}); discordant pairs "
                  f"{pairs['candidate_wins']} won / {pairs['active_wins']} lost")  # fmt: skip
        for failure in info.get("failures", []):
            print(f"  failing: {failure['count']} x {failure['outcome']} on v{failure['version']}"
                  f" input {failure['input_shape'] or '?'}: "
                  f"{(failure['stderr'] or '').strip().splitlines()[-1:] or ''}")  # fmt: skip
        for note in info.get("suggestions", [])[-1:]:
            print(f"  suggestion: {(note.get('text') or '').strip()[:300]}")
    return EXIT_OK


def _install(args: argparse.Namespace) -> int:
    catalog = SkillDiscovery(_dirs(args.skills_dir)).scan()
    root = Path(args.target_root).expanduser()
    result: dict[str, dict[str, list[str]]] = {}
    failed = False
    for agent in dict.fromkeys(args.agent):
        target_dir = root / AGENT_DIRS[agent]
        done: dict[str, list[str]] = {"linked": [], "unchanged": [], "skipped": []}
        result[agent] = done
        target_dir.mkdir(parents=True, exist_ok=True)
        for name, skill in sorted(catalog.skills.items()):
            link = target_dir / name
            source = skill.path.resolve()
            if link.is_symlink():
                if Path(os.readlink(link)) == source:
                    done["unchanged"].append(name)
                    continue
                if not args.force:
                    done["skipped"].append(name)
                    print(f"warning: {link} links elsewhere ({os.readlink(link)}); "
                          "--force replaces it", file=sys.stderr)  # fmt: skip
                    continue
                link.unlink()
            elif link.exists():
                # A real folder is the user's own skill: never replaced.
                done["skipped"].append(name)
                failed = True
                print(f"warning: {link} exists and is not a link; left alone", file=sys.stderr)
                continue
            link.symlink_to(source, target_is_directory=True)
            done["linked"].append(name)
    if args.json:
        print(json.dumps({"target_root": str(root), "agents": result}, indent=2))
    else:
        for agent, done in result.items():
            counts = ", ".join(f"{len(names)} {what}" for what, names in done.items())
            print(f"{agent:<9} {root / AGENT_DIRS[agent]}: {counts}")
    return EXIT_FAIL if failed else EXIT_OK


def add_parsers(skills_sub: Any) -> None:
    """Add ``status`` and ``install`` to the ``skillscale skills`` subcommands."""
    p_status = skills_sub.add_parser("status", help="rollout state and canary statistics")
    p_status.add_argument("name", nargs="?", help="one skill (default: all)")
    p_install = skills_sub.add_parser("install", help="link the library into agents' skill folders")
    p_install.add_argument("--agent", action="append", required=True, choices=sorted(AGENT_DIRS),
                           help="agent whose skill folder gets the links (repeatable)")  # fmt: skip
    _flag(p_install, "--target-root", "SKILLSCALE_INSTALL_ROOT", "~",
          "folder the agents' skill folders are under")  # fmt: skip
    p_install.add_argument("--force", action="store_true",
                           help="replace links that point elsewhere")  # fmt: skip
    for p in (p_status, p_install):
        add_skills_dir(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
