"""``skillscale skills status`` and ``skillscale skills install``.

``status`` shows each skill's rollout (:mod:`skillscale.core.rollout`): the
active version, a running canary with samples and success rate per arm, the
SPRT log-likelihood ratio against its bounds and the time left, and failure
clusters of a degraded skill. ``install`` links the active library into the
skill folders of coding agents (PRODUCT.md §5).

``promote``, ``canary`` and ``reject`` (and ``skills rollback``) change the
files first, then announce the change as a versioned skills-changed event
(:func:`announce`), so running servers reload the skill at once instead of on
their next rescan.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import zmq

from skillscale.core import rollout
from skillscale.core.discovery import Catalog, SkillDiscovery
from skillscale.core.errors import ConfigError, SkillScaleError
from skillscale.core.events import SkillsChangedEvent
from skillscale.core.llm import LLMSettings
from skillscale.tools.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    _curve_keys,
    _dirs,
    _flag,
    _seconds,
    _switch,
    add_curve_peer,
    add_proxy_endpoints,
    add_skills_dir,
)

COMMANDS = ("status", "install", "promote", "canary", "reject")

ANNOUNCE_TIMEOUT = 3.0
"""Seconds an announcement may take: to reach the proxy, and to see it pass."""

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
    if args.skills_cmd in ("promote", "canary", "reject"):
        return _change(args)
    return _install(args)


def _library(args: argparse.Namespace, catalog: Catalog | None = None) -> dict[str, Path]:
    """Every skill folder by name: the served ones (``catalog``, scanned if not
    given) and those that are only drafts."""
    roots = _dirs(args.skills_dir)
    if catalog is None:
        catalog = SkillDiscovery(roots).scan()
    found = {name: skill.path for name, skill in catalog.skills.items()}
    for name, path in rollout.find_drafts(tuple(roots)).items():
        found.setdefault(name, path)
    return found


def _skill_dir(args: argparse.Namespace, library: dict[str, Path]) -> Path:
    if args.name not in library:
        raise ConfigError(
            f"no skill named {args.name!r} in {', '.join(map(str, _dirs(args.skills_dir)))}"
        )
    return library[args.name]


def _change(args: argparse.Namespace) -> int:
    """``promote`` (canary or newest draft -> active), ``canary`` (draft -> canary), ``reject``."""
    folder = _skill_dir(args, _library(args))
    why = args.reason or f"{args.skills_cmd} from the command line"
    try:
        if args.skills_cmd == "promote":
            version = rollout.promote(folder, why)
            done = f"{args.name} version {version} is active"
        elif args.skills_cmd == "canary":
            version = rollout.start_canary(folder, args.version, share=args.share)
            done = f"{args.name} version {version} is in canary on {args.share:.0%} of callers"
        else:
            version = rollout.reject(folder, why)
            done = f"{args.name} version {version} is retired"
    except rollout.RolloutError as exc:
        raise ConfigError(f"{args.name}: {exc.message}") from None
    change = {"promote": "promoted", "canary": "canary", "reject": "rejected"}[args.skills_cmd]
    active = rollout.read_rollout(folder)
    announced = announce(args, change, args.name, version,
                         active.active if active else version, folder, why)  # fmt: skip
    if args.json:
        print(json.dumps(rollout.status(folder), indent=2))
    else:
        print(done + (" (announced to the servers)" if announced else ""))
    return EXIT_OK


def announce(
    args: argparse.Namespace,
    change: str,
    skill: str,
    version: str | None,
    active: str | None,
    folder: Path,
    reason: str | None,
) -> bool:
    """Publish a skills-changed event through the proxy; True once it has passed it.

    The file change is already made: without a reachable fabric (or with
    ``--no-announce``) servers still see it on their next rescan, which one
    info line on stderr says. The SDK's connect proves a round trip first, so
    the event cannot fall into ZeroMQ's slow-joiner window, and a probe sent
    behind it proves it left before the process exits.
    """
    if args.no_announce:
        return False
    from skillscale.sdk.client import SyncSkillScaleClient

    event = SkillsChangedEvent.model_validate(
        {"change": change, "skill": skill, "version": _short(version), "active": _short(active),
         "path": str(folder)[:4096], "reason": (reason or "")[:2000] or None}
    )  # fmt: skip
    why = "no proxy answered"
    try:
        with SyncSkillScaleClient(
            args.proxy_xsub,
            args.proxy_xpub,
            connect_timeout=ANNOUNCE_TIMEOUT,
            failover_timeout=ANNOUNCE_TIMEOUT / 2,
            curve=_curve_keys(args),
            retransmit=False,
        ) as client:
            if client.publish_skills_changed(event, timeout=ANNOUNCE_TIMEOUT):
                return True
    except (SkillScaleError, zmq.ZMQError, SystemExit) as exc:
        # SystemExit: _curve_keys' verdict on half a CURVE setting.
        why = getattr(exc, "message", None) or str(exc) or why
    print(f"info: not announced ({why}); servers pick the change up on their next rescan",
          file=sys.stderr)  # fmt: skip
    return False


def _short(version: str | None) -> str | None:
    """A version as the event carries it (at most 16 characters; else none)."""
    return version if version is not None and len(version) <= 16 else None


def add_announce_flags(p: argparse.ArgumentParser) -> None:
    """Where and whether a library change is announced (the proxy, CURVE, opt-out)."""
    _switch(p, "--no-announce", "SKILLSCALE_NO_ANNOUNCE",
            "change the files only; servers pick it up on their next rescan")  # fmt: skip
    add_proxy_endpoints(p)
    add_curve_peer(p)


def _status(args: argparse.Namespace) -> int:
    catalog = SkillDiscovery(_dirs(args.skills_dir)).scan()
    library = _library(args, catalog)
    names = [args.name] if args.name else sorted(library)
    if args.name:
        _skill_dir(args, library)
    report: dict[str, Any] = {}
    for name in names:
        skill = catalog.skills.get(name)
        info = rollout.status(library[name])
        report[name] = info or {
            "skill": name,
            "active": skill.version if skill else None,
            "state": "active",
            "degraded": False,
            "drafts": [],
            "canary": None,
            "failures": [],
            "suggestions": [],
        }
        report[name]["path"] = str(library[name])
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    width = max([24, *(len(n) + 1 for n in report)])
    for name, info in report.items():
        flags = [f"drafts v{', v'.join(info['drafts'])}"] if info.get("drafts") else []
        if info.get("degraded") and info["state"] != "degraded":
            flags.append("DEGRADED")
        active = f"active v{info['active']}" if info["active"] else "not served"
        print(f"{name:<{width}} {info['state']:<9} {active}" + "".join(f"; {f}" for f in flags))
        canary = info.get("canary")
        if canary:
            left = _duration(canary["time_left"])
            print(f"  canary v{canary['version']} on {canary['share']:.0%} of callers, "
                  f"{left} left, decision: {canary['decision']}")  # fmt: skip
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
            last = (failure["stderr"] or "").strip().splitlines()[-1:] or ["(no stderr)"]
            print(f"  failing: {failure['count']} x {failure['outcome']} on v{failure['version']}"
                  f", input {failure['input_shape'] or '?'}: {last[0][:200]}")  # fmt: skip
        for note in info.get("suggestions", [])[-1:]:
            print(f"  suggestion: {(note.get('text') or '').strip()[:300]}")
    return EXIT_OK


def _duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``5.2 h``, ``7.0 d``: a time left, readable at a glance."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


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


def add_evolution_flags(p: argparse.ArgumentParser) -> None:
    """The long-lived distiller's canary settings (``skillscale distill``)."""
    _flag(p, "--new-versions", "SKILLSCALE_DISTILL_NEW_VERSIONS", rollout.DEFAULT_NEW_VERSIONS,
          "where new distilled versions start: canary (updates in canary, new skills "
          "active), draft (unserved until `skills canary|promote`), active (served at once)",
          choices=rollout.NEW_VERSION_POLICIES)  # fmt: skip
    _flag(p, "--canary-share", "SKILLSCALE_DISTILL_CANARY_SHARE", rollout.DEFAULT_SHARE,
          "share of a skill's callers its canary gets", type=_share)  # fmt: skip
    _flag(
        p,
        "--feedback-window",
        "SKILLSCALE_DISTILL_FEEDBACK_WINDOW",
        30.0,
        "seconds a reply waits for client feedback before it is counted",
        type=_seconds,
    )
    _flag(p, "--evolution-interval", "SKILLSCALE_DISTILL_EVOLUTION_INTERVAL", 2.0,
          "seconds between canary decisions", type=_seconds)  # fmt: skip
    _switch(
        p,
        "--judge",
        "SKILLSCALE_DISTILL_JUDGE",
        "score replies with the configured LLM (see `skillscale config`); servers "
        "send request and reply text for skills in canary (or all with --trace-payloads)",
    )


def evolution_settings(args: argparse.Namespace) -> tuple[Any, LLMSettings | None]:
    """The :class:`EvolutionConfig` and the judge's LLM settings from the flags."""
    from skillscale.distiller.evolution import EvolutionConfig

    judge = None
    if args.judge:
        judge = LLMSettings.load()
        if judge is None:
            raise ConfigError("--judge needs an LLM: run `skillscale config init` or set "
                              "SKILLSCALE_LLM_MODEL and OPENAI_BASE_URL")  # fmt: skip
    config = EvolutionConfig(share=args.canary_share, feedback_window=args.feedback_window,
                             new_versions=args.new_versions)  # fmt: skip
    return config, judge


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a share in (0, 1], e.g. 0.2")
    return value


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
    p_promote = skills_sub.add_parser(
        "promote", help="make the canary (or the newest draft) the active version"
    )
    p_canary = skills_sub.add_parser("canary", help="put a draft in canary")
    p_reject = skills_sub.add_parser("reject", help="retire the canary without serving it")
    for p in (p_promote, p_canary, p_reject):
        p.add_argument("name")
        p.add_argument("--reason", help="recorded in the rollout log")
    p_canary.add_argument("--version", help="the draft (default: the newest)")
    p_canary.add_argument("--share", type=_share, default=rollout.DEFAULT_SHARE,
                          help=f"share of callers (default {rollout.DEFAULT_SHARE})")  # fmt: skip
    for p in (p_promote, p_canary, p_reject):
        add_announce_flags(p)
    for p in (p_status, p_install, p_promote, p_canary, p_reject):
        add_skills_dir(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
