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
import json
import re
import shlex
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from skillscale.core.llm import LLMClient, LLMError, json_answer
from skillscale.core.matching import KeywordMatcher, tokenize
from skillscale.core.protocol import is_valid_skill_name
from skillscale.core.redact import Redactor
from skillscale.core.skill_format import Skill, split_frontmatter, validate_frontmatter
from skillscale.distiller.cluster import Corpus, is_look_around, normalize_command
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
# A redacted home folder reads as "~": dropping only its marker left
# "/home//src/app" in descriptions.
_REDACTED_HOME = re.compile(r"(?:/home/|/Users/|[A-Za-z]:\\+Users\\+)\[REDACTED:user\]")


def _readable(text: str) -> str:
    """A prompt for people: home folders as ``~``, other redaction markers dropped."""
    return _MARKER.sub("", _REDACTED_HOME.sub("~", text))


@dataclass(frozen=True)
class Draft:
    """The parts of a SKILL.md an LLM may write instead of the offline writer.

    Commands are copied from the source atoms (the guard checks that); the
    notes and the why are the model's words.
    """

    description: str
    when: tuple[str, ...]
    steps: tuple[tuple[str, str], ...]
    """(command, note) in order."""
    gotchas: tuple[tuple[str, str, str, str], ...]
    """(failed command, error, fix command, why)."""
    model: str


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
    writer: str = "offline"
    """Who wrote the text: ``offline`` or ``llm <model>``."""
    facts: tuple[str, ...] = ()
    """The exact strings a reader needs (commands, flags, errors, fixes)."""
    note: str = ""
    """Why the offline text was kept when an LLM was asked (empty otherwise)."""


def _clean_intent(corpus: Corpus, atom: Atom, words: frozenset[str] = frozenset()) -> str:
    """The prompt's sentence that says what the procedure is, without
    boilerplate lines or redaction markers: the first sentence, or the one
    with most of ``words`` (the procedure's common words), since a prompt
    may open with chatter ("Next task.")."""
    text = " ".join(corpus.intent(atom).split())
    text = _readable(text)
    sentences = [t.strip() for t in re.split(r"(?<=[.?!])\s", text) if t.strip()] or [""]
    if not words or len(sentences) == 1:
        return sentences[0]
    return max(sentences, key=lambda t: (len(words & set(_surface_words(t))), -sentences.index(t)))


def _common_words(corpus: Corpus, atoms: Sequence[Atom]) -> frozenset[str]:
    """Words at least half of the atoms' prompts use."""
    counts: Counter[str] = Counter()
    for a in atoms:
        counts.update(set(_surface_words(corpus.intent(a))))
    return frozenset(w for w, k in counts.items() if 2 * k >= len(atoms))


def _surface_words(text: str) -> list[str]:
    text = _MARKER.sub(" ", text.lower())
    return [w for w in _WORD.findall(text) if tokenize(w)]


def chatter_words(groups: Sequence[Sequence[str]]) -> frozenset[str]:
    """Words the prompts of many procedures use (``groups``: each group's
    prompts): how users ask (``urgent``, ``please``, ``asap``), not what."""
    spread: Counter[str] = Counter()
    for texts in groups:
        spread.update({w for t in texts for w in _surface_words(t)})
    limit = max(3, len(groups) // 8)
    return frozenset(w for w, k in spread.items() if k > limit)


def derive_name(
    intents: Sequence[str],
    commands: Sequence[str],
    taken: set[str],
    chatter: frozenset[str] = frozenset(),
) -> str:
    """A kebab-case name from the words most of the procedure's prompts share,
    leaving out ``chatter`` (:func:`chatter_words`) while other words remain."""
    counts: Counter[str] = Counter()
    for text in intents:
        counts.update(set(_surface_words(text)))
    n = max(1, len(intents))
    shared = [w for w, k in counts.items() if 2 * k >= n]
    shared = [w for w in shared if w not in chatter] or shared
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


# Runners whose next word is the tool actually run (``uv run alembic``).
_RUNNERS = {("uv", "run"), ("poetry", "run"), ("pnpm", "exec"), ("npm", "exec"), ("yarn", "exec"),
            ("python", "-m"), ("python3", "-m"), ("pipx", "run"), ("bundle", "exec")}  # fmt: skip
_LAUNCHERS = ("npx", "uvx", "bunx", "pnpx")


def _programs(steps: Sequence[str]) -> list[str]:
    """The tools the steps run, the one behind a runner first (``uv run
    mkdocs`` is mkdocs, run with uv): words users say when they ask."""
    tools: list[str] = []
    runners: list[str] = []
    for cmd in steps:
        words = cmd.split()
        if len(words) > 2 and (words[0], words[1]) in _RUNNERS and not words[2].startswith("-"):
            tools.append(words[2])
            runners.append(words[0])
        elif len(words) > 1 and words[0] in _LAUNCHERS and not words[1].startswith("-"):
            tools.append(words[1])
        elif words:
            tools.append(words[0])
    return list(dict.fromkeys([*tools, *runners]))[:5]


def _shape(atom: Atom) -> tuple[str, ...]:
    """The atom's command sequence without its noise: variable arguments as
    placeholders, look-around commands left out."""
    norm = [normalize_command(c) for c in atom.commands]
    return tuple(n for n in norm if n and not is_look_around(n)) or tuple(norm)


def _representative(atoms: Sequence[Atom]) -> Atom:
    """An occurrence of the most common sequence (file names aside), one that
    did not stop to look around if there is one: its exact commands are the steps."""
    shapes = Counter(_shape(a) for a in atoms)
    best = max(shapes.items(), key=lambda kv: (kv[1], -len(kv[0]), kv[0]))[0]
    return min((a for a in atoms if _shape(a) == best), key=lambda a: len(a.commands))


def scriptable(atoms: Sequence[Atom], steps: Sequence[str]) -> bool:
    """A deterministic, safe-to-re-run command sequence (argv only, no shell)."""
    if not steps or not all(a.success for a in atoms):
        return False
    if len({_shape(a) for a in atoms}) != 1:
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
    draft: Draft | None = None,
    note: str = "",
    chatter: frozenset[str] = frozenset(),
) -> Rendered:
    """The skill's files for ``atoms`` (already known to be one procedure).

    ``draft``: an LLM's text (checked by :func:`check_draft` before it is
    kept) for the description, the when-to-use list, the step notes and the
    gotchas; ``note``: why the offline text was kept, recorded in the provenance.
    """
    atoms = sorted(atoms, key=lambda a: (a.session, a.trajectory, a.line_start))
    rep = _representative(atoms)
    steps = rep.commands
    common = _common_words(corpus, atoms)
    intents = [t for t in (_clean_intent(corpus, a, common) for a in atoms) if t]
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
    shared = [w for w in shared if w not in chatter] or shared
    distinct = [w for w in shared if other_counts[w] * n < counts[w] * max(1, len(other_intents))]
    keywords = " ".join(distinct or shared)
    programs = _programs(steps)
    lead = (examples[0] if examples else name.replace("-", " ")).rstrip(".")
    description = (
        f"{lead[:180]}. A recurring procedure distilled from agent sessions, run with "
        f"{', '.join(programs) or 'the tools observed'}."
        + (" Use for: " + "; ".join(e.rstrip(".?!").lower() for e in examples)[:600] + "."
           if examples else "")
    )  # fmt: skip
    notes: dict[int, str] = {}
    if draft is not None:
        description = draft.description
        examples = list(draft.when) or examples
        steps = [c for c, _ in draft.steps]
        notes = {i: t for i, (_, t) in enumerate(draft.steps) if t}
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
    shown = _shown_gotchas(gotchas)
    writer = "offline" if draft is None else f"llm {draft.model}"
    title = " ".join(w.capitalize() for w in name.split("-"))
    body = [f"# {title}", "", description, "", "## When to use", ""]
    body += [f"- {e}" for e in examples] or [f"- {name.replace('-', ' ')}"]
    body += ["", _provenance(atoms), ""]
    body += [f"_Written by: {writer}" + (f"; {note}" if note else "") + "._", ""]
    body += ["## Steps", ""]
    body += [
        f"{i}. `{c}`" + (f": {notes[i - 1]}" if i - 1 in notes else "")
        for i, c in enumerate(steps, start=1)
    ]
    script = scriptable(atoms, steps)
    if script:
        body += ["", "The script scripts/run.py runs these steps in order and stops at the "
                 "first failure; give it a JSON object with cwd, the project folder."]  # fmt: skip
    body += ["", _provenance([rep]), ""]
    if draft is not None and draft.gotchas:
        body += ["## Gotchas", ""]
        for failed, error, fix, why in draft.gotchas:
            k = sum(v for (f, e, x), v in gotchas.items() if f == failed and x == fix)
            seen = f" (seen {k} time{'s' if k > 1 else ''})" if k else ""
            body.append(
                f"- `{failed}` failed first ({error.replace('`', chr(39))}). "
                f"What worked: `{fix}`{seen}." + (f" {why}" if why else "")
            )
        body += [
            "",
            _provenance([a for v in gotcha_atoms.values() for a in v][: MAX_LISTED * 2]),
            "",
        ]
    elif draft is None and shown:
        body += ["## Gotchas", ""]
        for (failed, error, fix), k in shown:
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
        "writer": writer,
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
    # The procedure is what the skill says to do, not who wrote it down or
    # from how many sessions: a change of it is a new version.
    said = [description, keywords, *steps, *map(str, sorted(gotchas))]
    if draft is not None:
        said += [*draft.when, *notes.values(), *map(str, draft.gotchas)]
    facts = [*rep.commands, *(x for (f, e, fx), _ in shown for x in (f, e, fx))]
    return Rendered(
        name, description, keywords, files,
        hashlib.sha256("\n".join(said).encode()).hexdigest()[:16], list(steps), rate,
        writer, tuple(dict.fromkeys(facts)), note,
    )  # fmt: skip


def _shown_gotchas(
    gotchas: Counter[tuple[str, str, str]],
) -> list[tuple[tuple[str, str, str], int]]:
    """The gotchas the offline text lists: the five most seen, one per failed command."""
    out = []
    seen_fail: set[str] = set()
    for key, k in gotchas.most_common(5):
        if key[0] in seen_fail:
            continue
        seen_fail.add(key[0])
        out.append((key, k))
    return out


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


# ---------------------------------------------------------------- the LLM writer

PROMPT_VERSION = "1"
MAX_SAMPLES = 6
_SYSTEM = (
    "You write an Agent Skill (a SKILL.md) for a procedure that recurs in AI coding agents' "
    "sessions. You get the prompts that asked for it, the commands each occurrence ran "
    "(with the failures and what fixed them), and an offline draft. Write a better "
    "description (one or two sentences: when to use the skill, in the words users say; "
    "at most 900 characters), a list of when_to_use lines, the steps with a short note "
    "each, and the gotchas with why the first attempt failed. Copy every command exactly "
    "as given: never invent, edit or combine commands, and keep every step and gotcha of "
    "the offline draft. Answer with JSON only: "
    '{"description": "...", "when_to_use": ["..."], '
    '"steps": [{"command": "...", "note": "..."}], '
    '"gotchas": [{"failed": "...", "error": "...", "fix": "...", "why": "..."}]}'
)
_TICKED = re.compile(r"`([^`\n]*)`")
_FLAG = re.compile(r"(?<![\w`'\"/-])(--?[A-Za-z][\w-]*)")
_SHELL_OPS = ("| sh", "| bash", "|sh", "|bash", "&&", "$(", "sudo ", "; rm ", "rm -rf")


def _unquoted_commands(draft: Draft, ran: set[str]) -> list[str]:
    """Command fragments in the model's prose (not quoted): flags the sessions
    never passed, shell operators they never used."""
    words = {w.partition("=")[0] for c in ran for w in c.split()}
    prose = " ".join([draft.description, *draft.when, *(n for _, n in draft.steps),
                      *(y for *_, y in draft.gotchas)])  # fmt: skip
    prose = _TICKED.sub(" ", prose)  # quoted spans are checked on their own
    bad = [f for f in _FLAG.findall(prose) if f not in words]
    bad += [op for op in _SHELL_OPS if op in prose and not any(op in c for c in ran)]
    return bad


def writing_request(
    name: str, atoms: Sequence[Atom], corpus: Corpus, offline: Rendered, redactor: Redactor
) -> str:
    """What the LLM is sent for one skill: redacted prompts, occurrences, the offline draft."""
    sample = sorted(atoms, key=lambda a: a.id)[:MAX_SAMPLES]
    counted: Counter[tuple[str, str, str]] = Counter(
        (g.failed, g.error, g.fix) for a in atoms for g in a.gotchas
    )
    # The gotchas the offline draft shows: the ones the LLM's text must keep.
    gotchas = [{"failed": f, "error": e, "fix": x} for (f, e, x), _ in _shown_gotchas(counted)]
    payload = {
        "name": name,
        "prompts": sorted(
            {_readable(" ".join(corpus.intent(a).split()))[:300] for a in atoms} - {""}
        )[:12],
        "occurrences": [
            {
                "commands": [s.command for s in a.steps if s.command and s.ok][:20],
                "failures": [
                    {"command": s.command, "error": s.error[:300]}
                    for s in a.steps
                    if s.command and not s.ok
                ][:5],
            }
            for a in sample
        ],
        "offline_draft": {
            "description": offline.description,
            "steps": offline.commands,
            "gotchas": gotchas,
        },
    }
    # Every string redacted on its own (the atoms were redacted at ingest;
    # this is the last gate before text leaves the machine).
    return json.dumps(redactor.obj(payload), ensure_ascii=False)


def parse_draft(answer: str, model: str, redactor: Redactor) -> Draft | None:
    """The model's draft if the answer is the JSON asked for, else None."""
    try:
        return _parse_draft(answer, model, redactor)
    except RecursionError:
        # Nested too deeply for json.loads, the redactor or str(): one bad
        # answer is a rejected draft, not a dead pass.
        return None


def _parse_draft(answer: str, model: str, redactor: Redactor) -> Draft | None:
    data = json_answer(answer)
    if not isinstance(data, dict):
        return None
    data = redactor.obj(data)
    desc, when, steps, gotchas = (
        data.get("description"), data.get("when_to_use", []), data.get("steps"),
        data.get("gotchas", []),
    )  # fmt: skip
    if not isinstance(desc, str) or not desc.strip() or not isinstance(steps, list) or not steps:
        return None
    if not isinstance(when, list) or not isinstance(gotchas, list):
        return None
    try:
        return Draft(
            description=" ".join(desc.split()),
            when=tuple(" ".join(str(w).split()) for w in when if isinstance(w, str) and w.strip()),
            steps=tuple(
                (str(s["command"]).strip(), " ".join(str(s.get("note", "")).split())) for s in steps
            ),
            gotchas=tuple(
                (
                    str(g["failed"]).strip(),
                    " ".join(str(g["error"]).strip().splitlines()),
                    str(g["fix"]).strip(),
                    " ".join(str(g.get("why", "")).split()),
                )
                for g in gotchas
            ),
            model=model,
        )
    except (KeyError, TypeError, AttributeError):
        return None


def fact_recall(text: str, facts: Sequence[str]) -> float:
    """Share of ``facts`` (exact commands, flags, errors) found verbatim in ``text``."""
    if not facts:
        return 1.0
    # Exact, spaces included (an error line is quoted as seen); only ` is
    # shown as ' inside the error text.
    return sum(1 for f in facts if f in text or f.replace("`", "'") in text) / len(facts)


def check_draft(
    draft: Draft, atoms: Sequence[Atom], offline: Rendered, candidate: Rendered
) -> str | None:
    """Why the LLM's ``candidate`` may not replace ``offline`` (None: it may).

    It must pass ``skillscale skills validate``, name no command that no
    source atom contains, keep the offline draft's fact recall and route its
    own prompts through the keyword matcher at least as well. The reason
    never quotes the model's commands: it goes into the skill.
    """
    ran = {s.command for a in atoms for s in a.steps if s.command}
    worked = {c for a in atoms for c in a.commands}
    invented = [c for c, _ in draft.steps if c not in worked]
    invented += [f for f, _, x, _ in draft.gotchas if f not in ran]
    invented += [x for _, _, x, _ in draft.gotchas if x not in worked]
    skill_md = candidate.files["SKILL.md"]
    # Quoted spans elsewhere (the description, notes, why) may cite a flag or
    # a command, but only one the sessions ran.
    invented += [t for t in _TICKED.findall(skill_md) if t.strip() and not any(t in c for c in ran)]
    invented += _unquoted_commands(draft, ran)
    if invented or "```" in skill_md:
        n = len(set(invented)) or 1
        return f"it named {n} command{'s' if n > 1 else ''} that no source atom contains"
    try:
        data, _ = split_frontmatter(skill_md)
        problems = validate_frontmatter(data, candidate.name)
    except ValueError as exc:
        problems = [str(exc)]
    if problems:
        return f"it failed validation ({problems[0][:120]})"
    mine, theirs = (
        fact_recall(skill_md, offline.facts),
        fact_recall(offline.files["SKILL.md"], offline.facts),
    )
    if mine < theirs:
        return f"its fact recall {mine:.2f} is below the offline draft's {theirs:.2f}"
    if candidate.match_rate < offline.match_rate:
        return (
            f"its description routes {candidate.match_rate:.2f} of the procedure's prompts to it, "
            f"the offline draft {offline.match_rate:.2f}"
        )
    return None


@dataclass
class LLMWriter:
    """Asks the LLM for each skill's text and keeps it only when it beats the
    offline draft's floor (:func:`check_draft`); one per pass.

    Answers are cached by the offline procedure they were asked about
    (``cache_get``/``cache_put``), so an unchanged procedure is not asked
    again and a pass over unchanged sources writes the same files. After a
    failed call (429s past the retries, a timeout) the rest of the pass is
    offline: one warning, not one per skill.
    """

    client: LLMClient
    redactor: Redactor
    cache_get: Callable[[str], str | None]
    cache_put: Callable[[str, str], None]
    down: str | None = None
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    fresh_rejections: dict[str, str] = field(default_factory=dict)

    async def write(
        self,
        name: str,
        atoms: Sequence[Atom],
        corpus: Corpus,
        offline: Rendered,
        candidate: Callable[[Draft], Rendered],
    ) -> tuple[Draft | None, str]:
        """The LLM's draft when its rendering (by ``candidate``) passes the guard,
        else None and why not (the note the offline text records)."""
        model = self.client.settings.model
        key = hashlib.sha256(
            f"{PROMPT_VERSION}\0{model}\0{offline.procedure_hash}".encode()
        ).hexdigest()
        answer = self.cache_get(key)
        fresh = answer is None
        if answer is None:
            if self.down is not None:
                return None, "the LLM was unavailable for this pass"
            try:
                request = writing_request(name, atoms, corpus, offline, self.redactor)
                answer = await self.client.complete(_SYSTEM, request, max_tokens=1500)
            except LLMError as exc:
                self.down = str(exc)[:200]
                return None, "the LLM was unavailable for this pass"
            answer = self.redactor.text(answer)
        draft = parse_draft(answer, model, self.redactor)
        if fresh and draft is not None:
            # Only answers that parse are kept: a cached answer that cannot
            # be read would be re-read (and re-rejected) on every pass.
            self.cache_put(key, answer)
        if draft is None:
            reason = "its answer was not the JSON asked for"
        else:
            reason = check_draft(draft, atoms, offline, candidate(draft)) or ""
            if not reason:
                self.accepted.append(name)
                return draft, ""
        self.rejected[name] = reason
        if fresh:
            self.fresh_rejections[name] = reason
        return None, f"the LLM draft ({model}) was rejected: {reason}"

    def summary(self) -> list[str]:
        """The pass's warnings about the LLM: at most one per kind of failure."""
        out = []
        if self.down is not None:
            out.append(
                f"LLM unavailable ({self.down}); the rest of this pass used the offline writer"
            )
        if self.fresh_rejections:
            parts = "; ".join(f"{n}: {r}" for n, r in sorted(self.fresh_rejections.items()))
            out.append(
                f"LLM drafts of {len(self.fresh_rejections)} skill(s) rejected, offline drafts "
                f"kept ({parts})"
            )
        return out
