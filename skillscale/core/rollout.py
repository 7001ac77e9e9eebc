"""Skill rollout: versions, the canary, and the sequential test that ends it.

A skill folder ``<skills-dir>/<category>/<name>/`` holds the **active**
version (what servers serve). Everything else about its versions lives under
``<skill>/.skillscale/`` and is read and written only through this module:

* ``.skillscale/candidates/<version>/``: a full skill folder (``SKILL.md`` +
  ``scripts/``...) for every version that is not the active one: drafts, the
  canary, and retired versions kept for rollback. Its ``SKILL.md`` carries
  ``metadata.version: "<version>"``.
* ``.skillscale/rollout.json``: the rollout file, schema below.

States: ``draft`` → ``canary`` → ``active`` → ``retired`` (a rejected or
superseded candidate goes straight to ``retired``). Versions are the strings
``"1"``, ``"2"``, ... allocated from a per-skill counter, never reused.

rollout.json (``schema_version`` 1; unknown keys are ignored, so fields are
only ever added)::

    {
      "schema_version": 1,
      "skill": "csv-stats",               # the skill's name
      "active": "1",                      # version served as the skill
      "next_version": 3,                  # the next version to allocate
      "versions": {                       # every version ever seen
        "1": {"state": "retired" | "active" | "canary" | "draft",
              "created": 1767000000.0,    # unix seconds
              "decided": 1767000100.0,    # when it left draft/canary (or null)
              "reason": "sprt: ...",      # why it is in its state (or null)
              "provenance": {"by": "distiller", "sessions": "..."}}
      },
      "canary": {                         # null when no canary runs
        "version": "2",                   # the candidate
        "share": 0.2,                     # fraction of callers sent to it
        "started": 1767000000.0,
        "time_limit": 86400.0,            # seconds; then rejected as inconclusive
        "test": {"alpha": 0.04, "beta": 0.15, "odds_ratio": 2.0},
        "arms": {"active":    {"n": 40, "successes": 30, "latency_ms": 5120.0},
                 "candidate": {"n": 10, "successes": 9,  "latency_ms": 1300.0}},
        "pending": {"active": [1, 0], "candidate": []},   # unpaired outcomes
        "pairs": {"candidate_wins": 6, "active_wins": 1, "ties": 3},
        "llr": 1.62                       # the SPRT log-likelihood ratio
      },
      "degraded": false,                  # repeated failures of the active version
      "failures": [                       # failure clusters (bounded, newest last)
        {"key": "...", "version": "1", "outcome": "exec_failed", "input_shape": "json:object{a}",
         "stderr": "KeyError: 'b'", "count": 5, "first": 0.0, "last": 0.0, "requests": ["..."]}
      ],
      "suggestions": [{"at": 0.0, "text": "..."}],        # for hand-edited skills
      "log": [{"at": 0.0, "action": "promote", "version": "2", "reason": "..."}]
    }

The file is untrusted when read (anyone may edit it): it is bounded in size,
parsed by pydantic, and a broken file reads as "no rollout" with a warning
rather than crashing a server.

The sequential test (:class:`SPRT`) is Wald's SPRT on paired outcomes: each
candidate outcome is paired with the next active outcome (pairing ignores the
outcomes, so pairs are independent). Only discordant pairs (one arm succeeded,
the other failed) carry information about the odds ratio ``OR`` of success,
candidate over active; among them the candidate wins with probability
``theta = OR / (1 + OR)``. The test is ``H0: OR = 1`` (not better) against
``H1: OR = odds_ratio`` (better by the design effect). With Wald's bounds
``A = log((1 - beta) / alpha)`` and ``B = log(beta / (1 - alpha))`` the
false-promotion rate is at most about ``alpha`` for any candidate that is
not better, and the miss rate about ``beta`` at the design effect (Wald
1947, §6; the bounds are conservative). A candidate still undecided at the
time limit is rejected as inconclusive, which only lowers false promotions.
``distiller/evolution_sim.py`` measures both rates by simulation.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skillscale.core.errors import ConfigError
from skillscale.core.skill_format import Skill, SkillFormatError, load_skill, split_frontmatter

log = logging.getLogger(__name__)

STATE_DIR = ".skillscale"
ROLLOUT_FILE = "rollout.json"
CANDIDATES_DIR = "candidates"
IGNORED_DIRS = frozenset({".git", STATE_DIR})
"""Folders inside a skill that are not part of any version."""

MAX_ROLLOUT_BYTES = 1024 * 1024
MAX_VERSIONS = 1000
MAX_PENDING = 64
"""Unpaired outcomes kept per arm; beyond it the oldest is dropped (outcome-blind)."""
MAX_FAILURE_CLUSTERS = 32
MAX_LOG = 200
MAX_SUGGESTIONS = 20
MAX_TEXT = 2000

DEFAULT_SHARE = 0.2
DEFAULT_TIME_LIMIT = 7 * 86_400.0
# Wald's bounds give true error rates of at most alpha / (1 - beta) = 4.7 % false
# promotions and beta / (1 - alpha) = 15.6 % misses: under the 5 % and 20 % targets.
DEFAULT_ALPHA = 0.04
DEFAULT_BETA = 0.15
DEFAULT_ODDS_RATIO = 2.0

State = Literal["draft", "canary", "active", "retired"]
NewVersions = Literal["draft", "canary", "active"]
NEW_VERSION_POLICIES: tuple[NewVersions, ...] = ("draft", "canary", "active")
DEFAULT_NEW_VERSIONS: NewVersions = "canary"
"""Where a new distilled version starts: ``canary`` proves an update on live traffic
(a brand-new skill, having nothing to be compared with, is active at once);
``draft`` keeps new skills and updates unserved until someone promotes them;
``active`` serves them at once (the previous version kept for rollback)."""
Arm = Literal["active", "candidate"]
Decision = Literal["promote", "reject", "continue"]


class RolloutError(ConfigError):
    """A rollout operation that cannot be done (no candidate, unknown version...)."""


def _clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    return text[:limit] if text is not None else None


class VersionInfo(BaseModel):
    """One version of a skill and where it stands."""

    model_config = ConfigDict(extra="ignore")

    state: State
    created: float = Field(default_factory=time.time)
    decided: float | None = None
    reason: str | None = Field(default=None, max_length=MAX_TEXT)
    provenance: dict[str, str] = Field(default_factory=dict)

    @field_validator("provenance", mode="before")
    @classmethod
    def _provenance_strings(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            items = list(value.items())[:64]
            return {str(k)[:200]: str(v)[:MAX_TEXT] for k, v in items}
        return value


class ArmStats(BaseModel):
    """Outcomes counted for one arm of a canary."""

    model_config = ConfigDict(extra="ignore")

    n: int = Field(default=0, ge=0)
    successes: int = Field(default=0, ge=0)
    latency_ms: float = Field(default=0.0, ge=0)
    """Sum of latencies, for the mean."""

    @property
    def rate(self) -> float | None:
        """Success rate, or None with no samples."""
        return self.successes / self.n if self.n else None


class TestSettings(BaseModel):
    """Error rates and the design effect of the sequential test."""

    model_config = ConfigDict(extra="ignore")

    alpha: float = Field(default=DEFAULT_ALPHA, gt=0, lt=0.5)
    """Largest acceptable chance of promoting a candidate that is not better."""
    beta: float = Field(default=DEFAULT_BETA, gt=0, lt=0.5)
    """Largest acceptable chance of missing a candidate better by ``odds_ratio``."""
    odds_ratio: float = Field(default=DEFAULT_ODDS_RATIO, gt=1, le=100)
    """The design effect: odds of success, candidate over active."""


class SPRT:
    """Wald's sequential probability ratio test on discordant pairs.

    ``H0: theta = 1/2`` (odds ratio 1) against ``H1: theta = OR / (1 + OR)``;
    promote when the log-likelihood ratio reaches :attr:`upper`, reject at
    :attr:`lower`.
    """

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(alpha: float, beta: float, odds_ratio: float) -> SPRT:
        """The (cached) test for these settings."""
        return SPRT(TestSettings(alpha=alpha, beta=beta, odds_ratio=odds_ratio))

    def __init__(self, settings: TestSettings) -> None:
        self.settings = settings
        theta1 = settings.odds_ratio / (1 + settings.odds_ratio)
        self.win = math.log(theta1 / 0.5)
        """LLR step for a pair the candidate won."""
        self.loss = math.log((1 - theta1) / 0.5)
        """LLR step for a pair the active version won (negative)."""
        self.upper = math.log((1 - settings.beta) / settings.alpha)
        self.lower = math.log(settings.beta / (1 - settings.alpha))

    def llr(self, candidate_wins: int, active_wins: int) -> float:
        """The log-likelihood ratio after these discordant pairs."""
        return candidate_wins * self.win + active_wins * self.loss

    def decide(self, llr: float) -> Decision:
        """``promote`` at or over the upper bound, ``reject`` at or under the lower."""
        if llr >= self.upper:
            return "promote"
        if llr <= self.lower:
            return "reject"
        return "continue"


class Arms(BaseModel):
    """The two arms of a canary."""

    model_config = ConfigDict(extra="ignore")

    active: ArmStats = Field(default_factory=ArmStats)
    candidate: ArmStats = Field(default_factory=ArmStats)


def _sprt(test: TestSettings) -> SPRT:
    return SPRT.of(test.alpha, test.beta, test.odds_ratio)


class PairStats(BaseModel):
    """Paired outcomes: who won each discordant pair, and the ties."""

    model_config = ConfigDict(extra="ignore")

    candidate_wins: int = Field(default=0, ge=0)
    active_wins: int = Field(default=0, ge=0)
    ties: int = Field(default=0, ge=0)


class Pending(BaseModel):
    """Outcomes (1 success, 0 failure) waiting for a partner from the other arm."""

    model_config = ConfigDict(extra="ignore")

    active: list[int] = Field(default_factory=list, max_length=MAX_PENDING)
    candidate: list[int] = Field(default_factory=list, max_length=MAX_PENDING)


class Canary(BaseModel):
    """A running canary: the candidate, its share, the evidence so far."""

    model_config = ConfigDict(extra="ignore")

    version: str = Field(max_length=16)
    share: float = Field(default=DEFAULT_SHARE, ge=0, le=1)
    started: float = Field(default_factory=time.time)
    time_limit: float = Field(default=DEFAULT_TIME_LIMIT, gt=0)
    test: TestSettings = Field(default_factory=TestSettings)
    arms: Arms = Field(default_factory=lambda: Arms())
    pending: Pending = Field(default_factory=Pending)
    pairs: PairStats = Field(default_factory=PairStats)
    llr: float = 0.0

    def record(self, arm: Arm, success: bool, latency_ms: float | None = None) -> None:
        """Count one outcome and pair it if the other arm has one waiting."""
        stats = self.arms.candidate if arm == "candidate" else self.arms.active
        stats.n += 1
        stats.successes += int(success)
        stats.latency_ms += max(0.0, latency_ms or 0.0)
        mine = self.pending.candidate if arm == "candidate" else self.pending.active
        other = self.pending.active if arm == "candidate" else self.pending.candidate
        if other:
            partner = other.pop(0)
            cand, act = (int(success), partner) if arm == "candidate" else (partner, int(success))
            if cand > act:
                self.pairs.candidate_wins += 1
            elif act > cand:
                self.pairs.active_wins += 1
            else:
                self.pairs.ties += 1
            self.llr = _sprt(self.test).llr(self.pairs.candidate_wins, self.pairs.active_wins)
            return
        mine.append(int(success))
        if len(mine) > MAX_PENDING:
            del mine[0]

    def decision(self, now: float | None = None) -> tuple[Decision, str]:
        """What the evidence says now, and why in one sentence."""
        sprt = _sprt(self.test)
        verdict = sprt.decide(self.llr)
        p = self.pairs
        evidence = (
            f"LLR {self.llr:.2f} after {p.candidate_wins + p.active_wins} discordant pairs "
            f"({p.candidate_wins} won by the candidate), "
            f"bounds [{sprt.lower:.2f}, {sprt.upper:.2f}]; outcomes: candidate "
            f"{self.arms.candidate.successes}/{self.arms.candidate.n}, active "
            f"{self.arms.active.successes}/{self.arms.active.n} succeeded"
        )
        if verdict == "promote":
            return verdict, f"sprt: candidate better ({evidence})"
        if verdict == "reject":
            return verdict, f"sprt: candidate not better ({evidence})"
        elapsed = (time.time() if now is None else now) - self.started
        if elapsed >= self.time_limit:
            return (
                "reject",
                f"time limit of {self.time_limit:g} s reached, inconclusive ({evidence})",
            )
        return "continue", evidence

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Canary statistics as plain data (``skillscale skills status``)."""
        sprt = _sprt(self.test)
        elapsed = (time.time() if now is None else now) - self.started
        return {
            "version": self.version,
            "share": self.share,
            "arms": {
                name: {
                    "n": arm.n,
                    "successes": arm.successes,
                    "success_rate": arm.rate,
                    "mean_latency_ms": round(arm.latency_ms / arm.n, 3) if arm.n else None,
                }
                for name, arm in (("active", self.arms.active), ("candidate", self.arms.candidate))
            },
            "pairs": self.pairs.model_dump(),
            "llr": round(self.llr, 4),
            "bounds": [round(sprt.lower, 4), round(sprt.upper, 4)],
            "test": self.test.model_dump(),
            "decision": self.decision(now)[0],
            "time_left": max(0.0, round(self.time_limit - elapsed, 3)),
        }


class FailureCluster(BaseModel):
    """Repeated failures of one version with the same outcome, input shape and stderr."""

    model_config = ConfigDict(extra="ignore")

    key: str = Field(max_length=64)
    version: str | None = Field(default=None, max_length=16)
    outcome: str = Field(max_length=64)
    input_shape: str = Field(default="", max_length=200)
    stderr: str = Field(default="", max_length=MAX_TEXT)
    count: int = Field(default=0, ge=0)
    first: float = 0.0
    last: float = 0.0
    requests: list[str] = Field(default_factory=list, max_length=10)


class Note(BaseModel):
    """A timestamped line: a log entry or a suggestion."""

    model_config = ConfigDict(extra="ignore")

    at: float = Field(default_factory=time.time)
    action: str = Field(default="note", max_length=64)
    version: str | None = Field(default=None, max_length=16)
    reason: str | None = Field(default=None, max_length=MAX_TEXT)
    text: str | None = Field(default=None, max_length=20_000)


class Rollout(BaseModel):
    """The contents of ``rollout.json`` (see the module docstring)."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = 1
    skill: str = Field(default="", max_length=64)
    active: str | None = Field(default=None, max_length=16)
    next_version: int = Field(default=2, ge=1)
    versions: dict[str, VersionInfo] = Field(default_factory=dict, max_length=MAX_VERSIONS)
    canary: Canary | None = None
    degraded: bool = False
    failures: list[FailureCluster] = Field(default_factory=list, max_length=MAX_FAILURE_CLUSTERS)
    suggestions: list[Note] = Field(default_factory=list, max_length=MAX_SUGGESTIONS)
    log: list[Note] = Field(default_factory=list, max_length=MAX_LOG)

    def note(self, action: str, version: str | None, reason: str | None = None) -> None:
        """Append to the bounded log."""
        self.log.append(Note(action=action, version=version, reason=_clip(reason)))
        del self.log[:-MAX_LOG]

    def drafts(self) -> list[str]:
        """Versions in draft, oldest first."""
        return sorted((v for v, i in self.versions.items() if i.state == "draft"), key=_vkey)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Everything ``skillscale skills status`` shows, as plain data."""
        return {
            "skill": self.skill,
            "active": self.active,
            "state": "canary"
            if self.canary
            else ("draft" if self.active is None else ("degraded" if self.degraded else "active")),
            "degraded": self.degraded,
            "drafts": self.drafts(),
            "versions": {v: i.model_dump() for v, i in sorted(self.versions.items(), key=_ikey)},
            "canary": self.canary.status(now) if self.canary else None,
            "failures": [f.model_dump() for f in self.failures],
            "suggestions": [s.model_dump() for s in self.suggestions],
        }


def _vkey(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _ikey(item: tuple[str, Any]) -> tuple[int, str]:
    return _vkey(item[0])


# -- files ---------------------------------------------------------------------


def state_dir(skill_dir: Path) -> Path:
    """``<skill>/.skillscale``."""
    return Path(skill_dir) / STATE_DIR


def rollout_path(skill_dir: Path) -> Path:
    """``<skill>/.skillscale/rollout.json``."""
    return state_dir(skill_dir) / ROLLOUT_FILE


def candidate_dir(skill_dir: Path, version: str) -> Path:
    """``<skill>/.skillscale/candidates/<version>``."""
    if not version.isdigit() or len(version) > 16:
        raise RolloutError(f"version {version!r} must be a positive integer string")
    return state_dir(skill_dir) / CANDIDATES_DIR / version


def read_rollout(skill_dir: Path) -> Rollout | None:
    """The rollout file, or None when absent or unreadable (with a warning)."""
    path = rollout_path(skill_dir)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_ROLLOUT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    if len(raw) > MAX_ROLLOUT_BYTES:
        log.warning("ignoring %s: over %d bytes", path, MAX_ROLLOUT_BYTES)
        return None
    try:
        return Rollout.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        log.warning("ignoring %s: %s at %s", path, first["msg"], where or "top level")
        return None


def write_rollout(skill_dir: Path, rollout: Rollout) -> None:
    """Write the rollout file atomically (temp file + rename)."""
    path = rollout_path(skill_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = rollout.model_dump_json(indent=2).encode()
    fd, tmp = tempfile.mkstemp(prefix=".rollout-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def folder_version(folder: Path) -> str | None:
    """``metadata.version`` of the SKILL.md in ``folder``, if any."""
    try:
        data, _ = split_frontmatter((folder / "SKILL.md").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    meta = data.get("metadata")
    value = meta.get("version") if isinstance(meta, dict) else None
    return str(value) if value is not None else None


def ensure_rollout(skill_dir: Path) -> Rollout:
    """The rollout file, created for an existing skill whose folder is its active version."""
    existing = read_rollout(skill_dir)
    if existing is not None:
        return existing
    skill = load_skill(Path(skill_dir))
    version = folder_version(skill.path) or "1"
    if not version.isdigit():
        version = "1"
    rollout = Rollout(
        skill=skill.name,
        active=version,
        next_version=int(version) + 1,
        versions={version: VersionInfo(state="active", reason="initial version")},
    )
    rollout.note("create", version, "initial version")
    write_rollout(skill_dir, rollout)
    return rollout


def load_version(skill_dir: Path, version: str) -> Skill:
    """The stored version ``version`` of the skill in ``skill_dir``, validated."""
    return load_skill(candidate_dir(skill_dir, version), name=Path(skill_dir).resolve().name)


def _set_version(folder: Path, version: str) -> None:
    # Rewrites the frontmatter through YAML: its comments and key order are
    # not preserved, which is acceptable for a machine-written candidate.
    skill_md = folder / "SKILL.md"
    data, body = split_frontmatter(skill_md.read_text(encoding="utf-8"))
    meta = data.get("metadata")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["version"] = version
    data["metadata"] = meta
    front = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    skill_md.write_text(f"---\n{front}---\n{body}", encoding="utf-8")


def copy_version(source: Path, target: Path) -> None:
    """Copy a skill folder's files (not ``.git``/``.skillscale``) into a new ``target``."""
    shutil.copytree(
        source, target, ignore=lambda _d, names: [n for n in names if n in IGNORED_DIRS]
    )


def _replace_active(skill_dir: Path, source: Path) -> None:
    """Make ``skill_dir``'s files those of ``source``, keeping ``.git``/``.skillscale``.

    Each file is written beside its target and renamed over it, so a server
    reading the folder sees the old file or the new one, never half of one.
    SKILL.md goes last: servers reload on its change, by then scripts are new.
    """
    wanted: set[Path] = set()
    files = sorted(
        (p for p in source.rglob("*") if p.is_file() and not _ignored(p.relative_to(source))),
        key=lambda p: p.name == "SKILL.md",
    )
    for src in files:
        rel = src.relative_to(source)
        wanted.add(rel)
        dst = skill_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.skillscale-tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    for old in sorted(skill_dir.rglob("*"), reverse=True):
        rel = old.relative_to(skill_dir)
        if _ignored(rel) or rel in wanted:
            continue
        if old.is_file() or old.is_symlink():
            old.unlink()
        elif old.is_dir() and not any(old.iterdir()):
            old.rmdir()
    # Touch SKILL.md so an identical-size rewrite within one mtime tick is still seen.
    os.utime(skill_dir / "SKILL.md")


def _ignored(rel: Path) -> bool:
    return bool(rel.parts) and rel.parts[0] in IGNORED_DIRS


def _commit(skill_dir: Path, message: str) -> None:
    """Commit the active folder through h12a's per-skill history, when present."""
    try:
        # Optional: the distiller's per-skill git history (skillscale.core.skill_history).
        skill_history = importlib.import_module("skillscale.core.skill_history")
    except ImportError:
        return
    commit = getattr(skill_history, "commit", None)
    if commit is None:
        return
    try:
        commit(Path(skill_dir), message)
    except Exception:  # history is a record, not a gate: the rollout already happened
        log.exception("could not record %s in the history of %s", message, skill_dir)


# -- operations ----------------------------------------------------------------


def propose_candidate(
    skill_dir: Path,
    source_dir: Path,
    provenance: Mapping[str, Any] | str | None = None,
    *,
    start_canary: bool = True,
    share: float = DEFAULT_SHARE,
    time_limit: float = DEFAULT_TIME_LIMIT,
    test: TestSettings | None = None,
) -> str:
    """Store ``source_dir`` as a new candidate version of the skill; return its version.

    ``provenance``: string values (or one message string) recorded with the
    version. The candidate must be a valid skill with the same name. It starts as a
    ``draft`` and, with ``start_canary``, no canary running and an active
    version to compare with, becomes the ``canary`` at once.
    """
    skill_dir = Path(skill_dir)
    rollout = ensure_rollout(skill_dir)
    # The source folder may have any name (a temporary folder): its skill name must match.
    try:
        source = load_skill(Path(source_dir), name=rollout.skill or skill_dir.resolve().name)
    except SkillFormatError as exc:
        raise RolloutError(f"the candidate is not a valid version of the skill: {exc}") from None
    if isinstance(provenance, str):
        provenance = {"message": provenance}
    if rollout.skill and source.name != rollout.skill:
        raise RolloutError(f"candidate is named {source.name!r}, the skill {rollout.skill!r}")
    version = str(rollout.next_version)
    target = candidate_dir(skill_dir, version)
    if target.exists():
        shutil.rmtree(target)  # a leftover of a crash between copy and write
    target.parent.mkdir(parents=True, exist_ok=True)
    copy_version(source.path, target)
    _set_version(target, version)
    rollout.next_version += 1
    rollout.versions[version] = VersionInfo(
        state="draft", provenance=dict(provenance or {}), reason="proposed"
    )
    rollout.note("propose", version, str(dict(provenance or {}))[:MAX_TEXT])
    if start_canary and rollout.canary is None and rollout.active is not None:
        _start(rollout, version, share, time_limit, test)
    write_rollout(skill_dir, rollout)
    return version


def create_draft_skill(
    skill_dir: Path, source_dir: Path, provenance: Mapping[str, Any] | str | None = None
) -> str:
    """Store a brand-new skill as draft version ``"1"``, not served by anyone.

    ``skill_dir`` gets no ``SKILL.md`` of its own (so discovery, and every
    server, passes it by), only ``.skillscale/rollout.json`` with no active
    version and ``.skillscale/candidates/1/``. :func:`promote` makes it the
    skill; :func:`find_drafts` lists such skills.
    """
    skill_dir = Path(skill_dir)
    if (skill_dir / "SKILL.md").exists() or read_rollout(skill_dir) is not None:
        raise RolloutError(f"{skill_dir} is already a skill")
    try:
        source = load_skill(Path(source_dir), name=skill_dir.name)
    except SkillFormatError as exc:
        raise RolloutError(f"the draft is not a valid skill: {exc}") from None
    if isinstance(provenance, str):
        provenance = {"message": provenance}
    target = candidate_dir(skill_dir, "1")
    if target.exists():
        shutil.rmtree(target)  # a leftover of a crash between copy and write
    target.parent.mkdir(parents=True, exist_ok=True)
    copy_version(source.path, target)
    _set_version(target, "1")
    rollout = Rollout(
        skill=source.name, active=None, next_version=2,
        versions={"1": VersionInfo(state="draft", provenance=dict(provenance or {}),
                                   reason="new skill, waiting for promotion")},
    )  # fmt: skip
    rollout.note("propose", "1", "new skill as a draft")
    write_rollout(skill_dir, rollout)
    return "1"


def find_drafts(roots: list[Path] | tuple[Path, ...]) -> dict[str, Path]:
    """Skills that exist only as drafts (no active version) below ``roots``, by name.

    Looked for where discovery looks for skills: ``<root>/<name>`` and
    ``<root>/<category>/<name>``.
    """
    found: dict[str, Path] = {}
    for root in roots:
        for pattern in (f"*/{STATE_DIR}/{ROLLOUT_FILE}", f"*/*/{STATE_DIR}/{ROLLOUT_FILE}"):
            for path in sorted(Path(root).glob(pattern)):
                skill_dir = path.parent.parent
                if (skill_dir / "SKILL.md").exists():
                    continue
                state = read_rollout(skill_dir)
                if state is not None and state.active is None and state.drafts():
                    found.setdefault(state.skill or skill_dir.name, skill_dir)
    return found


def _start(
    rollout: Rollout, version: str, share: float, time_limit: float, test: TestSettings | None
) -> None:
    rollout.canary = Canary(
        version=version, share=share, time_limit=time_limit, test=test or TestSettings()
    )
    rollout.versions[version].state = "canary"
    rollout.versions[version].reason = "canary started"
    rollout.note("canary", version, f"share {share:g}")


def start_canary(
    skill_dir: Path,
    version: str | None = None,
    *,
    share: float = DEFAULT_SHARE,
    time_limit: float = DEFAULT_TIME_LIMIT,
    test: TestSettings | None = None,
) -> str:
    """Start the canary of a draft (the newest when ``version`` is None).

    Older drafts are retired as superseded: only the newest proposal is tried.
    """
    rollout = _require(skill_dir)
    if rollout.canary is not None:
        raise RolloutError(f"version {rollout.canary.version} is already in canary")
    if rollout.active is None:
        raise RolloutError("a new skill has no active version to compare a canary with; "
                           "promote its draft instead")  # fmt: skip
    drafts = rollout.drafts()
    if version is None:
        if not drafts:
            raise RolloutError("no draft to put in canary")
        version = drafts[-1]
    if version not in drafts:
        raise RolloutError(f"version {version} is not a draft")
    for other in drafts:
        if other != version and _vkey(other) < _vkey(version):
            _retire(rollout, other, f"superseded by {version}")
    _start(rollout, version, share, time_limit, test)
    write_rollout(skill_dir, rollout)
    return version


def _require(skill_dir: Path) -> Rollout:
    rollout = read_rollout(Path(skill_dir))
    if rollout is None:
        raise RolloutError(f"{skill_dir} has no (readable) {STATE_DIR}/{ROLLOUT_FILE}")
    return rollout


def _retire(rollout: Rollout, version: str, reason: str) -> None:
    info = rollout.versions[version]
    info.state = "retired"
    info.decided = time.time()
    info.reason = _clip(reason)


def _snapshot_active(skill_dir: Path, rollout: Rollout) -> None:
    """Keep the active version's files as ``candidates/<active>`` for rollback."""
    if rollout.active is None:
        return
    target = candidate_dir(skill_dir, rollout.active)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_version(skill_dir, target)


def promote(skill_dir: Path, reason: str = "promoted") -> str:
    """Make the canary (or, with no canary, the newest draft) the active version."""
    skill_dir = Path(skill_dir)
    rollout = _require(skill_dir)
    drafts = rollout.drafts()
    version = rollout.canary.version if rollout.canary else (drafts[-1] if drafts else None)
    if version is None:
        raise RolloutError("no candidate to promote")
    source = candidate_dir(skill_dir, version)
    load_version(skill_dir, version)  # refuses a candidate folder that became invalid
    _snapshot_active(skill_dir, rollout)
    _replace_active(skill_dir, source)
    if rollout.active is not None and rollout.active in rollout.versions:
        _retire(rollout, rollout.active, f"replaced by {version}")
    for other in drafts:
        if _vkey(other) < _vkey(version):
            _retire(rollout, other, f"superseded by {version}")
    info = rollout.versions[version]
    info.state, info.decided, info.reason = "active", time.time(), _clip(reason)
    rollout.active = version
    rollout.canary = None
    rollout.degraded = False
    rollout.failures = [f for f in rollout.failures if f.version == version]
    rollout.note("promote", version, reason)
    write_rollout(skill_dir, rollout)
    _commit(skill_dir, f"promote version {version}: {reason}")
    return version


def reject(skill_dir: Path, reason: str = "rejected") -> str:
    """Retire the canary without serving it as the skill."""
    rollout = _require(skill_dir)
    if rollout.canary is None:
        raise RolloutError("no canary to reject")
    version = rollout.canary.version
    _retire(rollout, version, reason)
    rollout.canary = None
    rollout.note("reject", version, reason)
    write_rollout(skill_dir, rollout)
    return version


def rollback(skill_dir: Path, version: str | None = None, reason: str = "rollback") -> str:
    """Serve a retired version again (the one active before, by default)."""
    skill_dir = Path(skill_dir)
    rollout = _require(skill_dir)
    if version is None:
        # The version most recently taken out of service by a promotion or rollback.
        previous = sorted(
            (
                (i.decided or 0.0, v)
                for v, i in rollout.versions.items()
                if i.state == "retired"
                and (i.reason or "").startswith(("replaced by", "rolled back to"))
                and candidate_dir(skill_dir, v).is_dir()
            ),
            reverse=True,
        )
        version = previous[0][1] if previous else None
    if version is None or version not in rollout.versions:
        raise RolloutError("no earlier version to roll back to")
    if version == rollout.active:
        raise RolloutError(f"version {version} is already active")
    source = candidate_dir(skill_dir, version)
    if not source.is_dir():
        raise RolloutError(f"version {version} has no stored files to roll back to")
    load_version(skill_dir, version)
    if rollout.canary is not None:
        _retire(rollout, rollout.canary.version, f"canary ended by rollback to {version}")
        rollout.canary = None
    _snapshot_active(skill_dir, rollout)
    _replace_active(skill_dir, source)
    if rollout.active is not None and rollout.active in rollout.versions:
        _retire(rollout, rollout.active, f"rolled back to {version}")
    info = rollout.versions[version]
    info.state, info.decided, info.reason = "active", time.time(), _clip(reason)
    rollout.active = version
    rollout.note("rollback", version, reason)
    write_rollout(skill_dir, rollout)
    _commit(skill_dir, f"rollback to version {version}: {reason}")
    return version


# -- routing (servers) -----------------------------------------------------------


def in_canary(caller: str, skill: str, version: str, share: float) -> bool:
    """Whether ``caller`` is sent to candidate ``version`` of ``skill``.

    A hash of the caller id (:func:`skillscale.core.events.caller_id`), the
    skill and the version: stable per caller for one canary, and a different
    share of callers for each new candidate.
    """
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.sha256(f"{caller}\0{skill}\0{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def status(skill_dir: Path, now: float | None = None) -> dict[str, Any] | None:
    """The rollout status of one skill as plain data (None without a rollout file)."""
    rollout = read_rollout(Path(skill_dir))
    return rollout.status(now) if rollout is not None else None


def dumps_status(skill_dir: Path) -> str:
    """:func:`status` as JSON text."""
    return json.dumps(status(skill_dir))
