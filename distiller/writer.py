"""Writing: a recurring procedure rendered as an Agent Skills ``SKILL.md``.

Everything a skill states comes from its atoms: the steps are the exact
commands of a representative occurrence (the most common command sequence),
the gotchas are observed error-then-fix pairs, and every section ends with
its provenance (which atoms and sessions it came from). The name comes from
the words the procedure's prompts share; the description and keywords are
checked against the fabric's keyword matcher so the skill is picked for its
own prompts and not for other procedures'. A ``scripts/run.py`` is written
only for a deterministic sequence of commands that are safe to re-run.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from skillscale.core.matching import KeywordMatcher, tokenize
from skillscale.core.protocol import is_valid_skill_name
from skillscale.core.skill_format import Skill
from skillscale.distiller.cluster import Corpus, normalize_command
from skillscale.distiller.model import Atom

MAX_LISTED = 8
# Programs (and subcommands) that only read or build, and so may be re-run
# unattended. Anything else (deploys, pushes, installs, deletes) keeps a
# skill instruction-only.
SAFE_PREFIXES = (
    "pytest", "python -m pytest", "python3 -m pytest", "ruff check", "ruff format --check",
    "mypy", "make test", "make lint", "make check", "make build", "npm test", "npm run test",
    "npm run lint", "npm run build", "pnpm test", "yarn test", "cargo test", "cargo check",
    "cargo build", "cargo clippy", "cargo fmt --check", "go test", "go vet", "go build", "tox",
    "black --check",
    "eslint", "tsc", "git status", "git diff", "git log", "ls", "cat", "grep", "rg", "pwd",
    "echo", "wc", "head", "tail",
)  # fmt: skip
_SHELL_SYNTAX = re.compile(r"[|&;<>`$(){}*?\[\]~]")
# Flags that turn a checker into a writer.
_WRITING_FLAGS = frozenset(
    {
        "--fix",
        "--write",
        "-w",
        "-i",
        "--in-place",
        "--force",
        "-f",
        "--delete",
        "--prune",
        "--apply",
    }
)
_WORD = re.compile(r"[a-z][a-z0-9]+")
_MARKER = re.compile(r"\[redacted:[a-z_0-9]+\]", re.I)


@dataclass
class Rendered:
    """A skill's files and what they were made from."""

    name: str
    description: str
    keywords: str
    files: dict[str, str]
    procedure_hash: str
    """Hash of the procedure (steps, gotchas, description), not its provenance."""
    commands: list[str] = field(default_factory=list)
    match_rate: float = 0.0


def _clean_intent(corpus: Corpus, atom: Atom) -> str:
    """The prompt's first sentence, without boilerplate lines or redaction markers."""
    text = " ".join(corpus.intent(atom).split())
    text = _MARKER.sub("", text)
    first = re.split(r"(?<=[.?!])\s", text, maxsplit=1)[0]
    return first.strip()


def _surface_words(text: str) -> list[str]:
    text = _MARKER.sub(" ", text.lower())
    return [w for w in _WORD.findall(text) if tokenize(w)]


def derive_name(intents: Sequence[str], commands: Sequence[str], taken: set[str]) -> str:
    """A kebab-case name from the words most of the procedure's prompts share."""
    counts: Counter[str] = Counter()
    for text in intents:
        counts.update(set(_surface_words(text)))
    n = max(1, len(intents))
    shared = [w for w, k in counts.items() if 2 * k >= n]
    first = Counter(intents).most_common(1)[0][0] if intents else ""
    order = {w: i for i, w in reversed(list(enumerate(_surface_words(first))))}
    words = sorted(shared, key=lambda w: (order.get(w, 999), -counts[w], w))[:4]
    if not words:
        words = [re.sub(r"[^a-z0-9]+", "-", c.split()[0].lower()) for c in commands[:2]] or [
            "procedure"
        ]
    base = "-".join(words)[:56].strip("-")
    base = re.sub(r"-+", "-", base) or "procedure"
    name, i = base, 2
    while name in taken or not is_valid_skill_name(name):
        name = f"{base}-{i}"
        i += 1
    return name


def _representative(atoms: Sequence[Atom]) -> Atom:
    seqs = Counter(tuple(a.commands) for a in atoms)
    best = max(seqs.items(), key=lambda kv: (kv[1], -len(kv[0])))[0]
    return next(a for a in atoms if tuple(a.commands) == best)


def scriptable(atoms: Sequence[Atom], steps: Sequence[str]) -> bool:
    """A deterministic, safe-to-re-run command sequence (argv only, no shell)."""
    if not steps or not all(a.success for a in atoms):
        return False
    norm = {tuple(normalize_command(c) for c in a.commands) for a in atoms}
    if len(norm) != 1:
        return False
    for cmd in steps:
        if _SHELL_SYNTAX.search(cmd) or "[REDACTED" in cmd:
            return False
        if not any(cmd == p or cmd.startswith(p + " ") for p in SAFE_PREFIXES):
            return False
        if _WRITING_FLAGS & set(cmd.split()):
            return False
    return True


def _run_py(steps: Sequence[str], name: str) -> str:
    argvs = [shlex.split(c) for c in steps]
    return f'''"""{name}: re-runs the distilled command sequence, stopping at the first failure.

Written by ``skillscale distill``: every command below was observed, in this
order, in each occurrence of the procedure, and is safe to re-run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

STEPS = {argvs!r}


def _workdir() -> str:
    """The project folder to run in: input {{"cwd": "..."}}, else the current folder."""
    raw = sys.stdin.read() if not sys.stdin.closed else ""
    try:
        data = json.loads(raw) if raw.strip().startswith("{{") else {{}}
    except ValueError:
        data = {{}}
    cwd = data.get("cwd") if isinstance(data, dict) else None
    return cwd if isinstance(cwd, str) and os.path.isdir(cwd) else os.getcwd()


def main() -> int:
    cwd = _workdir()
    for argv in STEPS:
        print("$ " + " ".join(argv), flush=True)
        try:
            done = subprocess.run(argv, cwd=cwd, timeout=600, check=False)  # noqa: S603
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"failed: {{exc}}", file=sys.stderr)
            return 1
        if done.returncode != 0:
            print(f"failed with exit status {{done.returncode}}", file=sys.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def _provenance(atoms: Sequence[Atom]) -> str:
    sessions = sorted({a.session for a in atoms})
    spans = [f"{a.trajectory} lines {a.line_start}-{a.line_end} (atom {a.id[:10]})" for a in atoms]
    more = f"; and {len(spans) - MAX_LISTED} more" if len(spans) > MAX_LISTED else ""

    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    return (
        f"_Provenance: {n(len(atoms), 'atom')} from {n(len(sessions), 'session')}: "
        + "; ".join(spans[:MAX_LISTED])
        + more
        + "._"
    )


def render(
    name: str,
    atoms: Sequence[Atom],
    corpus: Corpus,
    version: str,
    *,
    others: Sequence[Skill] = (),
    other_intents: Sequence[str] = (),
) -> Rendered:
    """The skill's files for ``atoms`` (already known to be one procedure)."""
    atoms = sorted(atoms, key=lambda a: (a.session, a.trajectory, a.line_start))
    rep = _representative(atoms)
    steps = rep.commands
    intents = [t for t in (_clean_intent(corpus, a) for a in atoms) if t]
    intents.sort()
    ranked = Counter(i[:200] for i in intents).most_common()
    # The three most frequent phrasings, listed alphabetically: one more
    # occurrence of a phrasing must not reorder the description (a new version).
    examples = sorted(t for t, _ in sorted(ranked, key=lambda kv: (-kv[1], kv[0]))[:3])
    counts: Counter[str] = Counter()
    for text in intents:
        counts.update(set(_surface_words(text)))
    n = max(1, len(intents))
    # Sorted by count, then word: set order differs between processes.
    shared = [w for w, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if 2 * k >= n][
        :8
    ]
    other_counts: Counter[str] = Counter()
    for text in other_intents:
        other_counts.update(set(_surface_words(text)))
    distinct = [w for w in shared if other_counts[w] * n < counts[w] * max(1, len(other_intents))]
    keywords = " ".join(distinct or shared)
    programs = list(dict.fromkeys(c.split()[0] for c in steps if c.split()))[:4]
    lead = (examples[0] if examples else name.replace("-", " ")).rstrip(".")
    description = (
        f"{lead[:180]}. A recurring procedure distilled from agent sessions, run with "
        f"{', '.join(programs) or 'the tools observed'}."
        + (" Use for: " + "; ".join(e.rstrip(".?!").lower() for e in examples)[:600] + "."
           if examples else "")
    )  # fmt: skip
    # Check the catalogue entry against the matcher: this skill must win for
    # its own prompts. If it does not, its distinctive words join the keywords.
    probe = Skill(name, description, Path(name), "", {"keywords": keywords})
    rate = _match_rate(probe, others, intents)
    if rate < 0.8 and shared:
        keywords = " ".join(dict.fromkeys([*distinct, *shared, *programs]))
        probe = Skill(name, description, Path(name), "", {"keywords": keywords})
        rate = _match_rate(probe, others, intents)
    gotchas: Counter[tuple[str, str, str]] = Counter()
    gotcha_atoms: dict[tuple[str, str, str], list[Atom]] = {}
    for a in atoms:
        for g in a.gotchas:
            key = (g.failed, g.error, g.fix)
            gotchas[key] += 1
            gotcha_atoms.setdefault(key, []).append(a)
    title = " ".join(w.capitalize() for w in name.split("-"))
    body = [f"# {title}", "", description, "", "## When to use", ""]
    body += [f"- {e}" for e in examples] or [f"- {name.replace('-', ' ')}"]
    body += ["", _provenance(atoms), "", "## Steps", ""]
    body += [f"{i}. `{c}`" for i, c in enumerate(steps, start=1)]
    script = scriptable(atoms, steps)
    if script:
        body += ["", "The script scripts/run.py runs these steps in order and stops at the "
                 "first failure; give it a JSON object with cwd, the project folder."]  # fmt: skip
    body += ["", _provenance([rep]), ""]
    if gotchas:
        body += ["## Gotchas", ""]
        seen_fail: set[str] = set()
        for (failed, error, fix), k in gotchas.most_common(5):
            if failed in seen_fail:
                continue
            seen_fail.add(failed)
            body.append(
                f"- `{failed}` failed first ({error.replace('`', chr(39))}). "
                f"What worked: `{fix}` (seen {k} time{'s' if k > 1 else ''})."
            )
        body += [
            "",
            _provenance([a for v in gotcha_atoms.values() for a in v][: MAX_LISTED * 2]),
            "",
        ]
    meta = {
        "version": version,
        "keywords": keywords,
        "distilled": "skillscale-distill",
        "atoms": str(len(atoms)),
        "sessions": str(len({a.session for a in atoms})),
    }
    front = yaml.safe_dump(
        {"name": name, "description": description, "metadata": meta},
        sort_keys=False, allow_unicode=True, width=10_000,
    )  # fmt: skip
    files = {"SKILL.md": f"---\n{front}---\n\n" + "\n".join(body).rstrip() + "\n"}
    if script:
        files["scripts/run.py"] = _run_py(steps, name)
    procedure = "\n".join([description, keywords, *steps, *map(str, sorted(gotchas))])
    return Rendered(
        name, description, keywords, files,
        hashlib.sha256(procedure.encode()).hexdigest()[:16], list(steps), rate,
    )  # fmt: skip


def _match_rate(skill: Skill, others: Sequence[Skill], intents: Sequence[str]) -> float:
    if not intents:
        return 0.0
    matcher = KeywordMatcher([*(o for o in others if o.name != skill.name), skill])
    hits = 0
    for text in intents[:20]:
        result = matcher.match(text)
        ranked = result.ranked
        if ranked and ranked[0].skill.name == skill.name:
            hits += 1
    return hits / min(len(intents), 20)
