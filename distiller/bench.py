"""DistillBench: seeded synthetic agent sessions in the native formats, and
the figures the distiller reaches on them (``skillscale distill bench``).

The generator writes sessions of all five agents (Claude Code with a
subagent transcript, Codex with duplicated prompts and injected context,
OpenCode's SQLite in WAL mode, Cursor, OpenClaw snapshots) containing K
recurring procedures (exact commands and flags, a wrong first attempt and the
error it gave), procedures seen only twice, one-off distractors, confusable
pairs (staging/production deploys, frontend build/lint), a house-rules
prompt and command in every session, and planted secrets. The truth is
known, so the pass is scored: skill recall and precision, skills minted from
boilerplate, secrets leaked, fact recall, hallucinated commands, and top-1
routing of new atoms from a second batch into the skills of the first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import resource
import shutil
import sqlite3
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skillscale.core.llm import LLMSettings
from skillscale.core.matching import KeywordMatcher
from skillscale.core.skill_format import load_skill
from skillscale.distiller.cluster import normalize_command
from skillscale.distiller.pipeline import Options, Outcome, distill_once
from skillscale.distiller.state import State

HOUSE_RULES = [
    "House rules: you are a careful senior engineer working in this repository.",
    "Never push to main directly, keep commits small, and explain what you changed.",
    "Read AGENTS.md before you start and follow the conventions it lists.",
]
HOUSE_COMMAND = "cat AGENTS.md"
# One paraphrase per procedure that no generated session uses: the skills'
# descriptions must make the matcher pick them for words they never saw whole.
HELD_OUT = {
    "python-tests": "execute the python test suite",
    "python-coverage": "measure how much of the python code the tests cover",
    "deploy-staging": "push the web app out to staging",
    "deploy-production": "push the web app out to production",
    "db-migrate": "upgrade the database schema with alembic",
    "db-rollback": "undo the newest alembic revision",
    "frontend-build": "make a release build of the frontend",
    "frontend-lint": "run the frontend linter",
    "release-tag": "publish a new release tag",
    "rust-checks": "lint and test the rust crate",
    "api-logs": "look into the api 500 errors in the logs",
    "docs-build": "generate the documentation site with mkdocs",
}


@dataclass(frozen=True)
class Procedure:
    """A recurring procedure: paraphrased prompts, exact commands, one gotcha."""

    key: str
    intents: tuple[str, ...]
    commands: tuple[str, ...]
    wrong: str
    error: str


# Filled per occurrence, so they are noise the skill must generalise over:
# {ver} a version, {test} a test file, {src} a source folder, {sha} an image
# tag, {mins} and {lines} numbers. Everything else (programs, subcommands,
# flags and their fixed values) is the procedure.
BANK = (
    Procedure("python-tests", ("run the python unit tests", "run the pytest unit tests for the api", "please run the python unit tests again",
                               "make sure the unit tests still pass", "execute pytest on the unit test folder", "check that nothing broke in the python unit tests"),
              ("uv sync --frozen", "uv run pytest -q --maxfail=1 {test}"),
              "uv run pytest -q {test}", "E   ModuleNotFoundError: No module named 'pydantic_settings'"),
    # Confusable with python-tests: the same two commands and one more.
    Procedure("python-coverage", ("measure the test coverage", "check the coverage of the unit tests", "make sure coverage stays above 85 percent",
                                  "report the python test coverage", "run the coverage check", "is our coverage still above the bar"),
              ("uv sync --frozen", "uv run pytest -q --maxfail=1 {test}", "uv run coverage report --fail-under=85"),
              "uv run coverage report", "No data to report."),
    Procedure("deploy-staging", ("deploy the web app to staging", "ship the web service to the staging cluster", "roll out the web app to staging",
                                 "put the latest web build on staging", "update staging with the current web image", "release the web service to staging for qa"),
              ("docker build -t registry.example.com/web:{sha} .", "docker push registry.example.com/web:{sha}",
               "kubectl --context staging-eu rollout restart deployment/web -n web"),
              "kubectl rollout restart deployment/web -n web", 'error: context "default" does not exist'),
    Procedure("deploy-production", ("deploy the web app to production", "ship the web service to the production cluster", "roll out the web app to production",
                                    "put the latest web build on production", "update production with the current web image", "release the web service to prod customers"),
              ("docker build -t registry.example.com/web:{sha} --build-arg ENV=prod .", "docker push registry.example.com/web:{sha}",
               "kubectl --context prod-us rollout restart deployment/web -n web --record"),
              "kubectl --context prod rollout restart deployment/web -n web", 'error: context "prod" does not exist'),
    Procedure("db-migrate", ("apply the database migrations", "run the alembic migrations on the dev database", "migrate the database schema to head",
                             "bring the dev database schema up to date", "upgrade the db to the newest alembic revision", "apply the pending schema changes"),
              ("docker compose up -d db", "uv run alembic current", "uv run alembic upgrade head"),
              "uv run alembic upgrade head", "sqlalchemy.exc.OperationalError: connection to server on port 5432 refused"),
    # Confusable with db-migrate: two of its three commands, and the opposite one.
    Procedure("db-rollback", ("roll back the last database migration", "undo the latest alembic migration", "revert the newest schema change",
                              "downgrade the dev database by one revision", "take back the migration we just applied", "roll the db schema back one step"),
              ("docker compose up -d db", "uv run alembic current", "uv run alembic downgrade -1"),
              "uv run alembic downgrade", "alembic: error: the following arguments are required: revision"),
    Procedure("frontend-build", ("build the frontend bundle", "produce a production build of the react frontend", "compile the frontend bundle for release",
                                 "bundle the react app for production", "create the release bundle of the ui", "build the web ui for shipping"),
              ("pnpm install --frozen-lockfile", "pnpm run build -- --mode production"),
              "pnpm run build", "sh: 1: vite: not found"),
    Procedure("frontend-lint", ("lint the frontend code", "run eslint on the react frontend", "check the frontend code for lint errors",
                                "make eslint happy on the ui code", "look for lint warnings in the react components", "run the linter over the ui sources"),
              ("pnpm install --frozen-lockfile", "pnpm exec eslint {src} --max-warnings 0"),
              "pnpm exec eslint {src}", "Error: Cannot find module 'eslint-plugin-react'"),
    Procedure("release-tag", ("tag a new release of the library", "cut a release tag for the library", "create and push a release tag",
                              "make a version tag for the package", "tag this commit as the next release", "publish a git tag for the new version"),
              ("git fetch --tags", "git tag -a v{ver} -m 'release v{ver}'", "git push origin v{ver}"),
              "git push origin v{ver}", "error: src refspec v{ver} does not match any"),
    Procedure("rust-checks", ("run the rust checks", "check the rust crate with clippy and tests", "run clippy and the rust tests",
                              "verify the rust code is clean", "make sure cargo clippy and the tests pass", "do the usual rust lint and test pass"),
              ("cargo fmt --check", "cargo clippy --all-targets -- -D warnings", "cargo test --workspace"),
              "cargo clippy -D warnings", "error: unexpected argument '-D' found"),
    Procedure("api-logs", ("find why the api returns 500 errors", "check the api logs for 500 errors", "investigate the 500 errors of the api",
                           "see what the api logged around the failures", "dig into the api server errors", "why is the api throwing internal server errors"),
              ("kubectl --context staging-eu logs deployment/api -n api --since={mins}m --tail={lines}",),
              "kubectl logs deployment/api", 'Error from server (NotFound): deployments.apps "api" not found'),
    Procedure("docs-build", ("build the documentation site", "render the mkdocs documentation", "build the docs site strictly",
                             "regenerate the project docs", "check that the docs build without warnings", "produce the html documentation"),
              ("uv run mkdocs build --strict", "uv run linkchecker site/"),
              "mkdocs build", "mkdocs: command not found"),
)  # fmt: skip

# How different users (one per session) put the same request.
AUTHORS = (
    "{I}.",
    "Could you please {i}? Thanks!",
    "{i}",
    "We are about to merge, so {i} and tell me what breaks.",
    "URGENT: {i} asap",
    "Can you {i} for me?",
    "ok now {i} pls",
    "Next task. {I}, then report back.",
)
# Commands an agent runs to look around, between a procedure's own steps.
INSPECTION = ("git status", "ls -la", "git diff --stat", "pwd")
TESTS = (
    "tests/unit",
    "tests/unit/test_models.py",
    "tests/unit/test_api.py",
    "tests/unit/test_auth.py",
)
SOURCES = ("src", "src/components", "src/pages", "src/hooks")


DISTRACTORS = (
    ("show the disk usage of node_modules", "du -sh node_modules"),
    ("list the helm releases", "helm list -A"),
    ("print the certificate expiry dates", "openssl x509 -in cert.pem -noout -dates"),
    ("convert the demo video to mp4", "ffmpeg -i demo.mov -c:v libx264 demo.mp4"),
    ("list the tables of the local sqlite db", "sqlite3 app.db .tables"),
    ("plan the terraform changes", "terraform plan -out tf.plan"),
    ("which npm packages are outdated", "npm outdated --long"),
    ("what versions of httpx exist", "pip index versions httpx"),
    ("how full is the root disk", "df -h /"),
    ("archive the notes folder", "tar czf notes.tgz notes/"),
    ("show the dependencies in package.json", "jq .dependencies package.json"),
    ("check the github rate limit", "curl -sS https://api.github.com/rate_limit"),
    ("count lines of python code", "cloc --include-lang=Python src"),
    ("find the biggest files in the repo", "git ls-files -z --exclude-standard"),
    ("show the open ports", "ss -tlnp"),
    ("what is the node version", "node --version"),
    ("generate an ssh key for ci", "ssh-keygen -t ed25519 -f ci_key -N ''"),
    ("resize the logo image", "convert logo.png -resize 50% logo-small.png"),
    ("show the last five commits", "git log --oneline -5"),
    ("check the python version", "python3 --version"),
    ("list docker images", "docker images --format table"),
    ("spell check the readme", "codespell README.md"),
    ("show memory usage", "free -m"),
    ("show the crontab", "crontab -l"),
)


@dataclass
class Call:
    """A tool call in a generated session."""

    command: str
    output: str
    exit_code: int


@dataclass
class Task:
    """One user turn: prompt and the calls that followed."""

    prompt: str
    calls: list[Call]
    label: str | None
    """The procedure key, ``distractor``, or None (boilerplate)."""


@dataclass
class Truth:
    """What the generator planted."""

    recurring: set[str] = field(default_factory=set)
    rare: set[str] = field(default_factory=set)
    secrets: list[str] = field(default_factory=list)
    commands: set[str] = field(default_factory=set)
    facts: dict[str, list[str]] = field(default_factory=dict)
    intents: dict[str, str] = field(default_factory=dict)
    """Paraphrase (lowercase) -> procedure key."""


def _fill(text: str, ver: str, noise: dict[str, str] | None = None) -> str:
    text = text.replace("{ver}", ver)
    for key, value in (noise or {}).items():
        text = text.replace("{" + key + "}", value)
    return text


def _noise(rng: random.Random) -> dict[str, str]:
    """The variable arguments of one occurrence."""
    return {
        "test": rng.choice(TESTS),
        "src": rng.choice(SOURCES),
        "sha": "".join(rng.choice("0123456789abcdef") for _ in range(8)),
        "mins": str(rng.choice((15, 30, 60, 120))),
        "lines": str(rng.choice((200, 500, 1000))),
    }


_FACT_NOISE = {"test": "tests/unit/test_x.py", "src": "src/x", "sha": "0a1b2c3d", "mins": "10",
               "lines": "100"}  # fmt: skip


def _secret(rng: random.Random, truth: Truth, home_user: str) -> tuple[str, str]:
    """A planted secret: (text mentioning it, the sensitive part)."""
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    token = "".join(rng.choice(alnum) for _ in range(36))
    kind = rng.randrange(9)
    if kind == 0:
        value = "sk-proj-" + token
        text = f"The OpenAI key is {value} if you need it."
    elif kind == 1:
        value = "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        text = f"aws access key {value} is in the vault"
    elif kind == 2:
        value = "ghp_" + token
        text = f"use GITHUB_TOKEN={value} for the api"
    elif kind == 3:
        value = f"{token[:8].lower()}@corp-mail.example.com"
        text = f"mail the report to {value} afterwards"
    elif kind == 4:
        value = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        text = f"the database host is {value}"
    elif kind == 5:
        value = token[:14]
        text = f"connect with postgres://admin:{value}@db.internal:5432/app"
    elif kind == 6:
        value = token[:20]
        text = f"-----BEGIN RSA PRIVATE KEY-----\nMIIE{value}\n-----END RSA PRIVATE KEY-----"
    elif kind == 7:
        value = token[:16]
        text = f"export DB_PASSWORD={value}"
    else:
        value = home_user
        text = f"the checkout lives in /home/{home_user}/src/app"
    truth.secrets.append(value)
    return text, value


def generate(
    seed: int, sessions: int, k: int = 8, first: bool = True, per_session: float = 0.0
) -> tuple[list[list[Task]], Truth]:
    """Sessions (lists of tasks) and the truth about them; ``per_session`` > 0 scales
    the recurring procedures' occurrences to about that many tasks per session."""
    rng = random.Random(seed)
    bank = list(BANK)
    rng.shuffle(bank)
    recurring, rare = bank[:k], bank[k:]
    truth = Truth({p.key for p in recurring}, {p.key for p in rare})
    occurrences: list[Procedure | tuple[str, str]] = []
    for p in recurring:
        times = rng.randint(3, 5) if first else 2
        if per_session > 0:
            times = max(times, round(sessions * per_session / k))
        occurrences += [p] * times
        truth.facts[p.key] = [
            _fill(f, "1.0.0", _FACT_NOISE) for f in (*p.commands, p.wrong, p.error.split(":")[0])
        ]
    if first:
        for p in rare:
            occurrences += [p] * 2
        occurrences += list(DISTRACTORS[: min(len(DISTRACTORS), sessions)])
    rng.shuffle(occurrences)
    plan: list[list[Task]] = [[] for _ in range(sessions)]
    authors = [rng.choice(AUTHORS) for _ in range(sessions)]
    home_user = "dev" + "".join(rng.choice("qwxzjkv") for _ in range(5))
    for i, occ in enumerate(occurrences):
        s = i % sessions
        if isinstance(occ, Procedure):
            ver = f"{rng.randint(1, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
            noise = _noise(rng)
            intent = rng.choice(occ.intents)
            truth.intents[intent] = occ.key
            prompt = authors[s].replace("{I}", intent[0].upper() + intent[1:])
            prompt = prompt.replace("{i}", intent)
            calls = []
            if rng.random() < 0.85:
                wrong = _fill(occ.wrong, ver, noise)
                calls.append(Call(wrong, _fill(occ.error, ver, noise), 1))
            steps = [_fill(cmd, ver, noise) for cmd in occ.commands]
            if rng.random() < 0.2:  # the agent looks around between two steps
                steps.insert(rng.randint(0, len(steps)), rng.choice(INSPECTION))
            for cmd in steps:
                calls.append(Call(cmd, f"ok: {cmd.split()[0]} finished", 0))
            if rng.random() < 0.35:
                text, _ = _secret(rng, truth, home_user)
                prompt += " " + text
            if rng.random() < 0.25:
                text, _ = _secret(rng, truth, home_user)
                calls[-1].output += "\n" + text
            plan[s].append(Task(prompt, calls, occ.key))
        else:
            intent, cmd = occ
            text, _ = _secret(rng, truth, home_user)
            asked = authors[s].replace("{I}", intent[0].upper() + intent[1:])
            plan[s].append(
                Task(
                    f"{asked.replace('{i}', intent)} {text}",
                    [Call(cmd, "done", 0)],
                    "distractor",
                )
            )
    for tasks in plan:
        boiler = Task(
            "\n".join(HOUSE_RULES), [Call(HOUSE_COMMAND, "# Conventions\nuse uv", 0)], None
        )
        tasks.insert(0, boiler)
        for task in tasks:
            truth.commands.update(c.command for c in task.calls)
    return plan, truth


# ---------------------------------------------------------------- native writers


def _claude(root: Path, sid: str, tasks: Sequence[Task], rng: random.Random, pad: int) -> None:
    proj = root / "-home-dev-src-app"
    proj.mkdir(parents=True, exist_ok=True)
    lines: list[dict[str, Any]] = []
    sub: list[dict[str, Any]] = []
    base = {"sessionId": sid, "cwd": "/home/dev/src/app", "gitBranch": "main"}
    for ti, task in enumerate(tasks):
        target = sub if (ti == len(tasks) - 1 and ti > 1 and rng.random() < 0.3) else lines
        content: Any = (
            task.prompt if rng.random() < 0.5 else [{"type": "text", "text": task.prompt}]
        )
        target.append(
            {
                **base,
                "type": "user",
                "uuid": uuid.uuid4().hex,
                "message": {"role": "user", "content": content},
            }
        )
        for call in task.calls:
            tid = "toolu_" + uuid.uuid4().hex[:12]
            target.append(
                {
                    **base,
                    "type": "assistant",
                    "message": {
                        "role": "assistant",
                        "content": [
                            {"type": "thinking", "thinking": "let me run it"},
                            {
                                "type": "tool_use",
                                "id": tid,
                                "name": "Bash",
                                "input": {"command": call.command},
                            },
                        ],
                    },
                }
            )
            out = (
                call.output if call.exit_code == 0 else f"Exit code {call.exit_code}\n{call.output}"
            )
            target.append(
                {
                    **base,
                    "type": "user",
                    "message": {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": tid,
                                "content": out,
                                "is_error": call.exit_code != 0,
                            }
                        ],
                    },
                }
            )
        for _ in range(pad):
            target.append(
                {
                    **base,
                    "type": "assistant",
                    "message": {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "text",
                                "text": "Looking at the output, everything is in order so far.",
                            }
                        ],
                    },
                }
            )
        target.append(
            {**base, "type": "assistant", "message": {"role": "assistant", "content": "Done."}}
        )
    lines.append({"type": "summary", "summary": "session summary"})
    (proj / f"{sid}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if sub:
        d = proj / sid / "subagents"
        d.mkdir(parents=True, exist_ok=True)
        (d / "agent-a1.jsonl").write_text(
            "".join(json.dumps({**x, "isSidechain": True}) + "\n" for x in sub)
        )


def _codex(root: Path, sid: str, tasks: Sequence[Task], rng: random.Random, pad: int) -> None:
    d = root / "2026" / "01" / f"{rng.randint(10, 28)}"
    d.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = [
        {
            "type": "session_meta",
            "payload": {"id": sid, "cwd": "/home/dev/src/app", "cli_version": "0.50.0"},
        },
        {
            "type": "response_item",
            "payload": {
                "type": "message",
                "role": "user",
                "content": [
                    {
                        "type": "input_text",
                        "text": "<environment_context>\n  <cwd>/home/dev/src/app</cwd>\n</environment_context>",
                    }
                ],
            },
        },
    ]
    for task in tasks:
        rows.append(
            {
                "type": "response_item",
                "payload": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": task.prompt}],
                },
            }
        )
        rows.append(
            {"type": "event_msg", "payload": {"type": "user_message", "message": task.prompt}}
        )
        rows.append({"type": "turn_context", "payload": {"cwd": "/home/dev/src/app"}})
        for call in task.calls:
            cid = "call_" + uuid.uuid4().hex[:10]
            rows.append(
                {
                    "type": "response_item",
                    "payload": {
                        "type": "function_call",
                        "name": "shell",
                        "call_id": cid,
                        "arguments": json.dumps({"command": ["bash", "-lc", call.command]}),
                    },
                }
            )
            rows.append(
                {
                    "type": "response_item",
                    "payload": {
                        "type": "function_call_output",
                        "call_id": cid,
                        "output": json.dumps(
                            {"output": call.output, "metadata": {"exit_code": call.exit_code}}
                        ),
                    },
                }
            )
        for _ in range(pad):
            rows.append({"type": "event_msg", "payload": {"type": "token_count", "info": None}})
        rows.append(
            {
                "type": "response_item",
                "payload": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Done."}],
                },
            }
        )
    (d / f"rollout-2026-01-01T10-00-00-{sid}.jsonl").write_text(
        "".join(json.dumps({"timestamp": "t", **r}) + "\n" for r in rows)
    )


def _cursor(root: Path, sid: str, tasks: Sequence[Task], rng: random.Random, pad: int) -> None:
    d = root / "home-dev-src-app" / "agent-transcripts"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in tasks:
        rows.append(
            {"role": "user", "message": {"content": [{"type": "text", "text": task.prompt}]}}
        )
        # Cursor records no tool outcomes: only the commands that worked are kept here,
        # as a user who retried by hand would leave them.
        calls = [c for c in task.calls if c.exit_code == 0]
        rows.append(
            {
                "role": "assistant",
                "message": {
                    "content": [
                        {
                            "type": "tool_use",
                            "name": "run_terminal_cmd",
                            "input": {"command": c.command},
                        }
                        for c in calls
                    ]
                    + [{"type": "text", "text": "Done."}]
                },
            }
        )
        rows += [
            {"role": "assistant", "message": {"content": [{"type": "text", "text": "Checking."}]}}
        ] * pad
    (d / f"{sid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _openclaw(root: Path, sid: str, tasks: Sequence[Task], rng: random.Random, pad: int) -> None:
    d = root / "main" / "sessions"
    d.mkdir(parents=True, exist_ok=True)
    messages: list[dict[str, Any]] = []
    env = {"traceSchema": "openclaw-trajectory", "sessionId": sid, "ts": 0}
    rows = [{**env, "type": "session.started", "seq": 0, "data": {}}]
    for i, task in enumerate(tasks):
        messages.append({"role": "user", "content": [{"type": "text", "text": task.prompt}]})
        for call in task.calls:
            cid = "tc" + uuid.uuid4().hex[:8]
            messages.append(
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "toolCall",
                            "id": cid,
                            "name": "exec",
                            "arguments": {"command": call.command},
                        }
                    ],
                }
            )
            messages.append(
                {
                    "role": "toolResult",
                    "toolCallId": cid,
                    "content": [{"type": "text", "text": call.output}],
                    "isError": call.exit_code != 0,
                }
            )
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "Done."}]})
        rows += [{**env, "type": "model.delta", "seq": i, "data": {}}] * pad
        rows.append(
            {
                **env,
                "type": "model.completed",
                "seq": i + 1,
                "data": {"messagesSnapshot": list(messages)},
            }
        )
    (d / f"{sid}.trajectory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _opencode(db_path: Path, sessions: Sequence[tuple[str, Sequence[Task]]]) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        stale.unlink(missing_ok=True)  # generating again writes the same corpus afresh
    db = sqlite3.connect(str(db_path))
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(
        "CREATE TABLE IF NOT EXISTS session (id TEXT PRIMARY KEY, project_id TEXT, parent_id TEXT, directory TEXT, title TEXT, time_created INTEGER, time_updated INTEGER);"
        "CREATE TABLE IF NOT EXISTS message (id TEXT PRIMARY KEY, session_id TEXT, time_created INTEGER, data TEXT);"
        "CREATE TABLE IF NOT EXISTS part (id TEXT PRIMARY KEY, message_id TEXT, session_id TEXT, data TEXT);"
    )
    t = 1_700_000_000_000
    for sid, tasks in sessions:
        db.execute(
            "INSERT INTO session VALUES (?,?,?,?,?,?,?)",
            (sid, "p1", None, "/home/dev/src/app", "s", t, t + 999),
        )
        for ti, task in enumerate(tasks):
            t += 10
            mu, ma = f"msg_{sid}_{ti:03d}u", f"msg_{sid}_{ti:03d}a"
            db.execute(
                "INSERT INTO message VALUES (?,?,?,?)", (mu, sid, t, json.dumps({"role": "user"}))
            )
            db.execute(
                "INSERT INTO part VALUES (?,?,?,?)",
                (f"prt_{mu}_0", mu, sid, json.dumps({"type": "text", "text": task.prompt})),
            )
            db.execute(
                "INSERT INTO message VALUES (?,?,?,?)",
                (ma, sid, t + 1, json.dumps({"role": "assistant"})),
            )
            for ci, call in enumerate(task.calls):
                state: dict[str, Any] = {
                    "status": "completed" if call.exit_code == 0 else "error",
                    "input": {"command": call.command},
                    "metadata": {"exit": call.exit_code},
                }
                state["output" if call.exit_code == 0 else "error"] = call.output
                db.execute(
                    "INSERT INTO part VALUES (?,?,?,?)",
                    (
                        f"prt_{ma}_{ci:03d}",
                        ma,
                        sid,
                        json.dumps(
                            {"type": "tool", "tool": "bash", "callID": f"c{ci}", "state": state}
                        ),
                    ),
                )
            db.execute(
                "INSERT INTO part VALUES (?,?,?,?)",
                (f"prt_{ma}_zzz", ma, sid, json.dumps({"type": "text", "text": "Done."})),
            )
    db.commit()
    db.close()


WRITERS = {"claude-code": _claude, "codex": _codex, "cursor": _cursor, "openclaw": _openclaw}
LAYOUT = {
    "claude-code": "claude/projects", "codex": "codex/sessions", "cursor": "cursor/projects",
    "openclaw": "openclaw/agents", "opencode": "opencode/opencode.db",
}  # fmt: skip


HOME_LAYOUT = {
    "claude-code": ".claude/projects", "codex": ".codex/sessions", "cursor": ".cursor/projects",
    "openclaw": ".openclaw/agents", "opencode": ".local/share/opencode/opencode.db",
}  # fmt: skip


def write_corpus(
    root: Path, plan: Sequence[Sequence[Task]], seed: int, pad: int = 0, *, home: bool = False
) -> list[tuple[str, Path]]:
    """Write ``plan`` under ``root`` in the native formats (``home``: where the agents
    keep them under a home folder); the ``--from`` pairs."""
    layout = HOME_LAYOUT if home else LAYOUT
    rng = random.Random(seed + 7)
    kinds = ["claude-code", "codex", "opencode", "claude-code", "openclaw", "codex", "cursor"]
    opencode: list[tuple[str, Sequence[Task]]] = []
    used: set[str] = set()
    for i, tasks in enumerate(plan):
        kind = kinds[i % len(kinds)]
        sid = str(uuid.UUID(int=rng.getrandbits(128)))
        used.add(kind)
        if kind == "opencode":
            opencode.append((f"ses_{sid[:12]}", tasks))
        else:
            WRITERS[kind](root / layout[kind], sid, tasks, rng, pad)
    if opencode:
        _opencode(root / layout["opencode"], opencode)
    return [(k, root / layout[k]) for k in layout if k in used]


# ---------------------------------------------------------------- scoring


def _label(intent: str, truth: Truth) -> str | None:
    low = intent.lower()
    for text, key in truth.intents.items():
        if text.lower() in low:
            return key
    return "distractor" if low.strip() and not low.startswith("house rules") else None


def _skill_labels(out: Outcome, truth: Truth) -> dict[str, Counter[str | None]]:
    labels: dict[str, Counter[str | None]] = {}
    for name, group in out.groups:
        if name is None:
            continue
        labels.setdefault(name, Counter()).update(_label(a.intent, truth) for a in group.atoms)
    return labels


def _backticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` and a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _leaks(skills_dir: Path, secrets: Sequence[str]) -> int:
    blobs: list[bytes] = []
    for path in skills_dir.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if "/.git/objects/" in path.as_posix():
            try:
                data = zlib.decompress(data)
            except zlib.error:
                continue
        blobs.append(data)
    return sum(1 for s in set(secrets) if any(s.encode() in b for b in blobs))


@dataclass
class Score:
    """The figures of one DistillBench run."""

    figures: dict[str, float | int | str] = field(default_factory=dict)


async def run(
    seed: int, workdir: Path, sessions: int = 40, k: int = 8, llm: LLMSettings | None = None
) -> dict[str, Any]:
    """Generate, distill (with ``llm`` when given: its segmentation and its
    drafts behind the guard), score. Returns the figures."""
    plan, truth = generate(seed, sessions, k)
    sources = write_corpus(workdir / "sources", plan, seed)
    skills_dir = workdir / "skills"
    out = await distill_once(Options(skills_dir, sources, llm=llm))
    # The same sources again: nothing may change (not a skill, not its history, not the state).
    before = _tree(skills_dir)
    await distill_once(Options(skills_dir, sources, llm=llm))
    after = _tree(skills_dir)
    changed = sum(1 for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    labels = _skill_labels(out, truth)
    minted = {n for e in out.skills["created"] for n in [e["name"]]}
    majority = {n: labels[n].most_common(1)[0][0] for n in minted if n in labels}
    found = {m for m in majority.values() if m in truth.recurring}
    true_pos = len(found)  # a second skill for the same procedure is not a hit
    boiler = sum(1 for m in majority.values() if m is None)
    twice = sum(1 for m in majority.values() if m in truth.rare)
    facts_total = facts_found = hallucinated = steps_total = steps_noted = 0
    all_norm = {normalize_command(c) for c in truth.commands}
    for name, key in majority.items():
        text = (skills_dir / "distilled" / name / "SKILL.md").read_text()
        spans = _backticked(text)
        steps_md = text.split("## Steps", 1)[-1].split("\n## ", 1)[0]
        numbered = re.findall(r"^\d+\. `[^`]+`(.*)$", steps_md, re.M)
        steps_total += len(numbered)
        steps_noted += sum(1 for rest in numbered if rest.strip(" :."))
        norm_spans = {normalize_command(s) for s in spans}
        for cmd in spans:
            if cmd not in truth.commands and normalize_command(cmd) not in all_norm and " " in cmd:
                hallucinated += 1
        if key in truth.facts:
            for fact in truth.facts[key]:
                facts_total += 1
                if fact in text or normalize_command(fact) in norm_spans:
                    facts_found += 1
    # The catalogue entries, judged by the fabric's own keyword matcher: does
    # each recurring procedure's prompt pick its own skill from the library?
    library = [load_skill(skills_dir / "distilled" / n) for n in majority]
    matcher = KeywordMatcher(library)
    asked = picked = 0
    for _name, group in out.groups:
        for atom in group.atoms:
            label = _label(atom.intent, truth)
            if label not in truth.recurring:
                continue
            asked += 1
            # The whole prompt, as a user would send it (first sentences can be chatter).
            best = matcher.match(atom.intent).best
            picked += best is not None and majority.get(best.skill.name) == label
    held_asked = held_picked = 0
    for key in sorted(found):
        held_asked += 1
        best = matcher.match(HELD_OUT[key]).best
        held_picked += best is not None and majority.get(best.skill.name) == key
    # Routing: a second batch of the same procedures, into the library as it is.
    plan2, truth2 = generate(seed + 1000, max(6, sessions // 3), k, first=False)
    plan2 = [[t for t in s if t.label in truth.recurring or t.label is None] for s in plan2]
    truth.intents.update(truth2.intents)
    sources2 = write_corpus(workdir / "sources2", plan2, seed + 1000)
    out2 = await distill_once(Options(skills_dir, sources2, llm=llm))
    # Every new atom of a known procedure counts: one that reached no skill is a miss.
    owner = {a.id: name for name, g in out2.groups for a in g.atoms}
    old_ids = {a.id for _, g in out.groups for a in g.atoms}
    state = State(skills_dir / ".skillscale" / "distill.sqlite")
    try:
        batch2 = [a for a in state.atoms() if a.id not in old_ids and a.source != "bus"]
    finally:
        state.close()
    routed = correct = 0
    first_batch = {a.trajectory for _, g in out.groups for a in g.atoms}
    for atom in batch2:
        label = _label(atom.intent, truth)
        if label not in truth.recurring or atom.trajectory in first_batch:
            continue
        routed += 1
        name = owner.get(atom.id)
        if name is not None and majority.get(name) == label:
            correct += 1
    second = len(out2.skills["created"])
    return {
        "seed": seed, "sessions": sessions, "recurring procedures": len(truth.recurring),
        "skills minted": len(minted),
        "skill recall": round(true_pos / max(1, len(truth.recurring)), 3),
        "skill precision": round(true_pos / max(1, len(minted)), 3),
        "skills from boilerplate": boiler,
        "skills from procedures seen twice": twice,
        "secrets planted": len(set(truth.secrets)),
        "secrets leaked": _leaks(skills_dir, truth.secrets),
        "fact recall": round(facts_found / max(1, facts_total), 3),
        "hallucinated commands": hallucinated,
        "steps explained": round(steps_noted / max(1, steps_total), 3),
        "matcher picks the right skill": round(picked / max(1, asked), 3),
        "matcher on held-out prompts": round(held_picked / max(1, held_asked), 3),
        "routing top-1": round(correct / max(1, routed), 3),
        "new atoms of known procedures": routed,
        "files changed by an identical second pass": changed,
        "skills created by the second batch": second,
        "warnings": len(out.report.warnings),
    } | ({
        "llm drafts written": len((out.llm or {}).get("written", [])),
        "llm drafts rejected": len((out.llm or {}).get("rejected", {})),
        "llm drafts that invented a command (rejected)": sum(
            "no source atom" in r for r in (out.llm or {}).get("rejected", {}).values()
        ),
        "llm unavailable": 0 if not (out.llm or {}).get("unavailable") else 1,
    } if llm is not None else {})  # fmt: skip


def _jsonl_lines(sources: Sequence[tuple[str, Path]]) -> tuple[int, int]:
    paths = [p for k, root in sources if k != "opencode" for p in root.rglob("*.jsonl")]
    return len(paths), sum(sum(1 for _ in p.open("rb")) for p in paths)


async def scale(
    workdir: Path, sessions: int = 1000, lines: int = 200, seed: int = 1
) -> dict[str, Any]:
    """Distill ``sessions`` sessions of about ``lines`` lines: seconds and peak memory."""
    plan, _ = generate(seed, sessions, 8, per_session=4)
    per = max(1, sum(len(t) for t in plan) // sessions)
    # A task is about 2 lines per call plus 2; the rest of ``lines`` is padding.
    calls = sum(len(c.calls) for t in plan for c in t) / sessions
    pad = max(0, round((lines - 2 * calls - 2 * per) / per))
    sources = write_corpus(workdir / "sources", plan, seed, pad=pad)
    files, total_lines = _jsonl_lines(sources)
    if total_lines < lines * files:
        # The formats differ in lines per call: pad once more to reach the mean.
        pad = round(pad * lines * files / max(1, total_lines)) + 1
        shutil.rmtree(workdir / "sources")
        sources = write_corpus(workdir / "sources", plan, seed, pad=pad)
        files, total_lines = _jsonl_lines(sources)
    t0, c0 = time.perf_counter(), time.process_time()
    out = await distill_once(Options(workdir / "skills", sources))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "sessions": sessions, "jsonl lines": total_lines,
        "lines per jsonl session": round(total_lines / max(1, files)),
        "seconds": round(elapsed, 1), "cpu seconds": round(cpu, 1), "peak RSS MB": round(peak), "atoms": out.atoms_total,
        "cores": os.cpu_count(),
    }  # fmt: skip


def canary_rows(seed: int) -> dict[str, Any] | None:
    """h12b's canary simulation (``distiller/evolution_sim.py``), when present.

    The hook: ``simulate(seed=N)`` returning a mapping with the false-promotion
    and miss rates at its effect size; its rows are printed as they are.
    """
    import importlib

    try:
        sim = importlib.import_module("skillscale.distiller.evolution_sim")
    except ImportError:
        return None
    result = sim.simulate(seed=seed)
    return dict(result)


HIGHER_WINS = (
    "skill recall", "skill precision", "fact recall", "steps explained",
    "matcher picks the right skill", "matcher on held-out prompts", "routing top-1",
)  # fmt: skip
LOWER_WINS = (
    "skills from boilerplate", "skills from procedures seen twice", "secrets leaked",
    "hallucinated commands", "skills created by the second batch",
    "files changed by an identical second pass",
)  # fmt: skip


def winners(offline: dict[str, Any], llm: dict[str, Any]) -> dict[str, str]:
    """Per scored metric, which column did better (``tie`` when equal). The
    offline pipeline is the floor: an LLM column that loses a row is a defect."""
    out = {}
    for key in (*HIGHER_WINS, *LOWER_WINS):
        if key not in offline or key not in llm:
            continue
        a, b = offline[key], llm[key]
        if a == b:
            out[key] = "tie"
        elif (b > a) == (key in HIGHER_WINS):
            out[key] = "llm"
        else:
            out[key] = "offline"
    return out


def main(
    seed: int, workdir: Path, sessions: int, with_scale: bool, llm: LLMSettings | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Everything ``skillscale distill bench`` prints: the offline column, and
    the LLM column when ``llm`` is given (same corpus, same scoring)."""
    figures = asyncio.run(run(seed, workdir / "bench", sessions))
    llm_figures = asyncio.run(run(seed, workdir / "bench-llm", sessions, llm=llm)) if llm else None
    canary = canary_rows(seed)
    if canary is not None:
        figures.update({f"canary {k}": v for k, v in canary.items()})
    else:
        figures["canary simulation"] = "not in this build (distiller/evolution_sim.py)"
    if with_scale:
        figures.update({f"scale {k}": v for k, v in asyncio.run(scale(workdir / "scale")).items()})
    return figures, llm_figures
