"""One incremental pass: sources in, skills written (``skillscale distill --once``).

ingest (new content only, redacted) -> atoms (stored, content-addressed) ->
groups over every atom known -> each recurring group routed to the skill it
improves, or minted as a new one -> rendered -> written only when what would
be written differs from what was last written, each change a commit of the
skill's own history. A skill the user edited by hand is never rewritten: its
edit is committed as theirs and the distiller leaves a suggestion beside it.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skillscale.core import skill_history
from skillscale.core.discovery import SkillDiscovery
from skillscale.core.errors import ConfigError
from skillscale.core.llm import LLMClient, LLMError, LLMSettings
from skillscale.core.matching import KeywordMatcher
from skillscale.core.redact import Redactor
from skillscale.core.skill_format import Skill, SkillFormatError, load_skill
from skillscale.distiller import atoms as atoms_mod
from skillscale.distiller.cluster import (
    Config,
    Corpus,
    Group,
    KnownSkill,
    corpus_of,
    group_atoms,
    intent_terms,
    jaccard,
    recurs,
    route,
)
from skillscale.distiller.ingest import Report, read_source
from skillscale.distiller.model import Atom
from skillscale.distiller.state import SkillRecord, State
from skillscale.distiller.writer import (
    Draft,
    LLMWriter,
    Rendered,
    chatter_words,
    derive_name,
    render,
)

log = logging.getLogger("skillscale.distiller")

STATE_DIR = ".skillscale"


@dataclass
class Options:
    """What one pass does. ``sources`` are ``(kind, path)`` pairs."""

    skills_dir: Path
    sources: Sequence[tuple[str, Path]]
    category: str = "distilled"
    cluster: Config = field(default_factory=Config)
    redact_patterns: Sequence[str] = ()
    llm: LLMSettings | None = None
    state_timeout: float = 5.0
    """Seconds to wait for a state another pass holds."""
    new_versions: str = "canary"
    """Where new versions start (:data:`skillscale.core.rollout.NEW_VERSION_POLICIES`):
    ``canary`` (new skills active, updates in canary), ``draft`` (both unserved until
    promoted) or ``active`` (both served at once)."""


def state_path(skills_dir: Path) -> Path:
    """Where the distiller keeps its state for ``skills_dir``."""
    return skills_dir / STATE_DIR / "distill.sqlite"


def _rollout() -> Any | None:
    """h12b's rollout module (``skillscale.core.rollout``) if this build has it."""
    try:
        return importlib.import_module("skillscale.core.rollout")
    except ImportError:
        return None


def _active_version(skill_dir: Path) -> str | None:
    try:
        return load_skill(skill_dir).version
    except SkillFormatError:
        return None


def _files_hash(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()[:16]


def _write_files(skill_dir: Path, files: dict[str, str], previous: Sequence[str] = ()) -> None:
    for rel in previous:
        if rel not in files and (skill_dir / rel).is_file():
            (skill_dir / rel).unlink()
    for rel, text in files.items():
        dest = skill_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.is_file() or dest.read_text(encoding="utf-8", errors="replace") != text:
            dest.write_text(text, encoding="utf-8")


def _message(verb: str, name: str, version: str, atoms: Sequence[Atom], rendered: Rendered) -> str:
    sessions = sorted({a.session for a in atoms})
    lines = [
        f"distill: {verb} {name} v{version}",
        "",
        f"{len(atoms)} atoms from {len(sessions)} sessions; matcher self-check "
        f"{rendered.match_rate:.2f}.",
        f"Written by: {rendered.writer}" + (f"; {rendered.note}" if rendered.note else "") + ".",
        "",
        *[f"Session: {s}" for s in sessions[:50]],
        *[f"Atom: {a.id} {a.trajectory} lines {a.line_start}-{a.line_end}" for a in atoms[:100]],
        f"Skillscale-Procedure: {rendered.procedure_hash}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    """The result of one pass, as printed by ``--json``."""

    report: Report
    atoms_new: int = 0
    atoms_total: int = 0
    skills: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {
            k: []
            for k in (
                "created",
                "updated",
                "candidates",
                "unchanged",
                "hand_edited",
                "removed_by_user",
            )
        }
    )
    routed_to_existing: dict[str, int] = field(default_factory=dict)
    groups: list[tuple[str | None, Group]] = field(default_factory=list)
    """(skill name or None, group): for DistillBench."""
    llm: dict[str, Any] | None = None
    """With an LLM: which skills it wrote and which drafts the guard rejected, and why."""

    def to_json(self, skills_dir: Path) -> dict[str, Any]:
        """The one JSON object ``distill --once --json`` prints."""
        return {
            "skills_dir": str(skills_dir),
            "state": str(state_path(skills_dir)),
            "ingested": self.report.ingested,
            "atoms": {"new": self.atoms_new, "total": self.atoms_total},
            "skills": self.skills,
            "routed_to_existing": self.routed_to_existing,
            "warnings": self.report.warnings,
        } | ({"llm": self.llm} if self.llm is not None else {})


async def distill_once(opts: Options) -> Outcome:
    """One incremental pass over ``opts.sources`` into ``opts.skills_dir``."""
    redactor = Redactor(opts.redact_patterns)
    report = Report()
    out = Outcome(report)
    try:
        state = State(state_path(opts.skills_dir), timeout=opts.state_timeout)
    except sqlite3.Error as exc:
        raise ConfigError(
            f"{state_path(opts.skills_dir)}: cannot open the state ({exc}); "
            "is another distill pass using this skills folder?"
        ) from None
    client = LLMClient(opts.llm) if opts.llm is not None else None
    writer: LLMWriter | None = None
    if client is not None:
        writer = LLMWriter(client, redactor, state.llm_draft, state.put_llm_draft)
    unusable: list[str] = []
    try:
        for kind, root in opts.sources:
            for chunk in read_source(kind, root, state, redactor, report):
                cut = None
                if client is not None and writer is not None and writer.down is None:
                    try:
                        cut = await atoms_mod.segment_llm(
                            chunk.trajectory, client, redactor, unusable
                        )
                    except LLMError as exc:
                        writer.down = str(exc)[:200]  # the rest of the pass is offline
                if cut is None:
                    cut = atoms_mod.segment(chunk.trajectory)
                for atom in cut:
                    if state.put_atom(atom):
                        out.atoms_new += 1
                chunk.commit()
                report.count(kind, "new_events", chunk.new_events)
            state.commit()
        await _write_skills(opts, state, out, writer)
        state.commit()
        out.atoms_total = state.count_atoms()
    except sqlite3.OperationalError as exc:
        # Another pass holds the state (a role and a --once on one folder).
        raise ConfigError(
            f"{state.path}: {exc}; is another distill pass using this skills folder?"
        ) from None
    finally:
        state.close()
        if client is not None:
            await client.close()
    problems = []
    if unusable:
        problems.append(
            f"segmentation of {len(unusable)} trajectory(ies) was not usable JSON "
            f"(first: {unusable[0]}), the offline cut was used for them"
        )
    if writer is not None:
        problems += writer.summary()
        # One warning per pass, however many calls went wrong.
        if problems:
            report.warn("LLM fell back to the offline pipeline: " + "; ".join(problems))
        out.llm = {
            "model": writer.client.settings.model,
            "written": sorted(writer.accepted),
            "rejected": dict(sorted(writer.rejected.items())),
            "unavailable": writer.down,
        }
    return out


async def _write_skills(
    opts: Options, state: State, out: Outcome, writer: LLMWriter | None = None
) -> None:
    all_atoms = state.atoms()
    corpus = corpus_of(all_atoms, opts.cluster)
    groups = group_atoms(all_atoms, corpus, opts.cluster)
    records = {r.name: r for r in state.skills()}
    known = [KnownSkill(r.name, r.signature, r.terms, r.atoms) for r in records.values()]
    catalog = SkillDiscovery([opts.skills_dir]).scan() if opts.skills_dir.is_dir() else None
    foreign = [s for n, s in (catalog.skills.items() if catalog else []) if n not in records]
    taken = set(records) | {s.name for s in foreign}
    if opts.skills_dir.is_dir():
        taken |= {p.name for p in opts.skills_dir.glob("*/*") if p.is_dir()}
    foreign_matcher = KeywordMatcher(foreign) if foreign else None

    chatter = chatter_words([[corpus.intent(a) for a in g.atoms] for g in groups])
    by_id = {a.id: a for a in all_atoms}
    # Each group goes to a skill it overlaps, to a new skill, or to nothing.
    targets: dict[str, list[Atom]] = {}
    fresh: list[tuple[str, list[Atom]]] = []
    for group in groups:
        ids = {a.id for a in group.atoms}
        owner = max(known, key=lambda k: len(k.atoms & ids), default=None)
        if owner is None or not owner.atoms & ids:
            words = {t for a in group.atoms for t in intent_terms(corpus.intent(a))}
            owner = route(group.core, words, known, opts.cluster.join)
            # Kept apart by the clustering, and asked for in other words: not
            # this skill's either. (In the same words, with a changed command
            # line, it is this skill improved.)
            if (
                owner is not None
                and jaccard(words, set(owner.terms)) < 0.8
                and _own_procedure(group, owner, by_id, corpus)
            ):
                owner = None
        if owner is not None:
            targets.setdefault(owner.name, []).extend(group.atoms)
            out.groups.append((owner.name, group))
            continue
        if not recurs(group, opts.cluster):
            out.groups.append((None, group))
            continue
        if foreign_matcher is not None:
            picks = [foreign_matcher.match(corpus.intent(a)).best for a in group.atoms]
            names = [p.skill.name for p in picks if p is not None]
            if names and 2 * len(names) >= len(group.atoms):
                top = max(set(names), key=names.count)
                out.routed_to_existing[top] = out.routed_to_existing.get(top, 0) + len(group.atoms)
                out.groups.append((top, group))
                continue
        intents = [" ".join(corpus.intent(a).split()) for a in group.atoms]
        name = derive_name(
            [i for i in intents if i], [c for a in group.atoms for c in a.commands], taken, chatter
        )
        taken.add(name)
        fresh.append((name, group.atoms))
        out.groups.append((name, group))

    # Render everything first: each description is checked against the others.
    plan: list[tuple[str, list[Atom], SkillRecord | None]] = [
        (name, atoms, records.get(name)) for name, atoms in targets.items()
    ] + [(name, atoms, None) for name, atoms in fresh]
    probes = [
        Skill(name, " ".join(corpus.intent(a) for a in atoms[:3])[:300], Path(name), "", {})
        for name, atoms, _ in plan
    ]
    all_intents = {name: [corpus.intent(a) for a in atoms] for name, atoms, _ in plan}
    rollout = _rollout()
    for name, atoms, rec in sorted(plan, key=lambda p: p[0]):
        others = [*foreign, *(p for p in probes if p.name != name)]
        other_intents = [t for n, ts in all_intents.items() if n != name for t in ts]
        version = rec.version if rec else "1"
        draft, note = await _llm_text(writer, name, atoms, corpus, others, other_intents, chatter)
        rendered = render(
            name, atoms, corpus, version, others=others, other_intents=other_intents,
            draft=draft, note=note, chatter=chatter,
        )  # fmt: skip
        if rec is not None and rec.procedure != rendered.procedure_hash:
            version = str(int(rec.version) + 1) if rec.version.isdigit() else rec.version + ".1"
            rendered = render(
                name, atoms, corpus, version, others=others, other_intents=other_intents,
                draft=draft, note=note, chatter=chatter,
            )  # fmt: skip
        skill_dir = Path(rec.path) if rec else opts.skills_dir / opts.category / name
        entry = {"name": name, "version": version, "path": str(skill_dir), "atoms": len(atoms)}
        if rec is not None and not skill_dir.exists():
            # The user deleted it: that is their decision, not a gap to refill.
            out.skills["removed_by_user"].append(entry | {"version": rec.version})
            continue
        files_hash = _files_hash(rendered.files)
        signature = frozenset(c for a in atoms for c in corpus.signature(a))
        terms = frozenset(t for a in atoms for t in intent_terms(corpus.intent(a)))
        new_rec = SkillRecord(
            name, str(skill_dir), version, signature, terms, frozenset(a.id for a in atoms),
            rendered.procedure_hash, files_hash,
        )  # fmt: skip
        if rec is not None and skill_dir.is_dir() and skill_history.is_hand_edited(skill_dir):
            skill_history.record_hand_edit(skill_dir)
            suggestion = skill_dir / STATE_DIR / "suggested"
            if rec.rendered != files_hash:
                _write_files(suggestion, rendered.files)
            out.skills["hand_edited"].append(entry | {"suggestion": str(suggestion)})
            continue
        if rec is not None and rec.rendered == files_hash and skill_dir.is_dir():
            out.skills["unchanged"].append(entry | {"version": rec.version})
            continue
        if rec is None and opts.new_versions == "draft" and rollout is not None:
            with tempfile.TemporaryDirectory() as tmp:
                source = Path(tmp) / name
                _write_files(source, rendered.files)
                rollout.create_draft_skill(skill_dir, source, {
                    "by": "skillscale-distill",
                    "message": _message("create", name, version, atoms, rendered),
                })  # fmt: skip
            out.skills["created"].append(entry | {"draft": True})
        elif rec is None:
            skill_dir.mkdir(parents=True, exist_ok=True)
            _write_files(skill_dir, rendered.files)
            skill_history.commit(skill_dir, _message("create", name, version, atoms, rendered))
            out.skills["created"].append(entry)
        elif version != rec.version and rollout is not None:
            with tempfile.TemporaryDirectory() as tmp:
                source = Path(tmp) / name  # a skill folder is named as its skill
                _write_files(source, rendered.files)
                provenance = {
                    "by": "skillscale-distill",
                    "message": _message("propose", name, version, atoms, rendered),
                    "sessions": sorted({a.session for a in atoms})[:50],
                    "atoms": [a.id for a in atoms][:100],
                    "procedure": rendered.procedure_hash,
                }
                # The default policy keeps the call as it was (canary at once).
                policy = {} if opts.new_versions == "canary" else {"start_canary": False}
                version = str(rollout.propose_candidate(skill_dir, source, provenance, **policy))
                if opts.new_versions == "active":
                    rollout.promote(skill_dir, "served at once (--new-versions active)")
            extra = {} if opts.new_versions == "canary" else {"state": opts.new_versions}
            out.skills["candidates"].append(entry | {"version": version} | extra)
            new_rec = SkillRecord(**{**new_rec.__dict__, "version": version})
        elif version == rec.version and _active_version(skill_dir) != rec.version:
            # The last version is a candidate still in its canary: the active
            # folder is not rewritten behind the canary's back.
            out.skills["unchanged"].append(entry | {"pending_candidate": rec.version})
            continue
        else:
            old = skill_history.head_files(skill_dir) or {}
            _write_files(
                skill_dir, rendered.files, previous=[p for p in old if p.startswith("scripts/")]
            )
            verb = "improve" if version != rec.version else "update provenance of"
            skill_history.commit(skill_dir, _message(verb, name, version, atoms, rendered))
            out.skills["updated"].append(entry)
        state.put_skill(new_rec)


async def _llm_text(
    writer: LLMWriter | None,
    name: str,
    atoms: Sequence[Atom],
    corpus: Corpus,
    others: Sequence[Skill],
    other_intents: Sequence[str],
    chatter: frozenset[str],
) -> tuple[Draft | None, str]:
    """The LLM's draft for a skill if it passed the guard, else None and why not."""
    if writer is None:
        return None, ""

    def candidate(draft: Draft) -> Rendered:
        return render(
            name, atoms, corpus, "1", others=others, other_intents=other_intents,
            draft=draft, chatter=chatter,
        )  # fmt: skip

    offline = render(
        name, atoms, corpus, "1", others=others, other_intents=other_intents, chatter=chatter
    )
    return await writer.write(name, atoms, corpus, offline, candidate)


def _own_procedure(group: Group, skill: KnownSkill, by_id: dict[str, Atom], corpus: Corpus) -> bool:
    """Whether ``group``, seen more than once, is a procedure of its own beside
    ``skill``: it always ran a command the skill's occurrences never did, or
    never one they always did (the clustering's rule, applied to routing, so
    a second pass over the same atoms routes them as the first grouped them)."""
    if len(group.atoms) < 2:
        return False
    sigs = [corpus.signature(by_id[i]) for i in sorted(skill.atoms) if i in by_id]
    if not sigs:
        return False
    ran = frozenset().union(*sigs)
    always = frozenset.intersection(*sigs)
    return bool(group.always - ran or always - frozenset(group.counts))
