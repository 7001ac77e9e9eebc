"""The documentation as tests.

Every fenced ``bash`` and ``python`` block of README.md, docs/*.md and
examples/*/README.md is extracted here (no second copy) and run against one
live fabric, a real ``skillscale up`` on free loopback ports, unless the line
before its fence is ``<!-- not-run: <reason> -->``. The snippets find the
fabric the way a user's would: through ``SKILLSCALE_XSUB_PORT`` /
``SKILLSCALE_XPUB_PORT`` / ``SKILLSCALE_ROUTER_PORT``, the variables ``up``
itself reads. The README's CLI synopsis and the rule "every flag has an
environment variable" are checked against the argparse definitions.

``python3 -m tests.test_readme`` (from the checkout) prints how many blocks are run and marked.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, RoleProcess, free_port, role_env

MARKER = re.compile(r"^<!--\s*not-run\s*:?(?P<reason>.*?)-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
RUN_LANGS = ("bash", "python")
BLOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class Block:
    """One fenced block of a markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # the line before the fence, when it is a not-run marker

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def reason(self) -> str:
        match = MARKER.match(self.marker or "")
        return match.group("reason").strip() if match else ""


def doc_files() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples").glob("*/README.md")),
    ]


def blocks(path: Path) -> Iterator[Block]:
    """The ``bash`` and ``python`` blocks of ``path``, with their markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i].strip())
        if opening is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        lang = opening.group("lang")
        before = lines[i - 1].strip() if i else ""
        if lang in RUN_LANGS:
            marker = before if before.startswith("<!--") and "not-run" in before else None
            yield Block(path, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", marker)
        i = end + 1


ALL_BLOCKS = [block for path in doc_files() for block in blocks(path)]
RUN = [b for b in ALL_BLOCKS if b.marker is None]
MARKED = [b for b in ALL_BLOCKS if b.marker is not None]


def inventory() -> str:
    return f"documentation blocks: {len(RUN)} run by tests, {len(MARKED)} marked not-run"


# -- markers and the inventory ------------------------------------------------


def test_every_marker_gives_a_reason_and_precedes_a_block() -> None:
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if not line.strip().startswith("<!--") or "not-run" not in line:
                continue
            where = f"{path.relative_to(ROOT)}:{n + 1}"
            match = MARKER.match(line.strip())
            assert match and len(match.group("reason").strip()) >= 10, (
                f"{where}: a not-run marker needs a reason: <!-- not-run: <reason> -->"
            )
            fence = FENCE.match(lines[n + 1].strip()) if n + 1 < len(lines) else None
            assert fence and fence.group("lang") in RUN_LANGS, (
                f"{where}: a not-run marker must be the line right before a bash/python fence"
            )


def test_the_readme_has_runnable_blocks(record_property: pytest.RecordProperty) -> None:
    print(inventory())
    record_property("blocks_run", len(RUN))
    record_property("blocks_marked", len(MARKED))
    readme_run = [b for b in RUN if b.path.name == "README.md" and b.path.parent == ROOT]
    # The quickstart's invoke, the SDK, the in-memory fabric, the adapters
    # and the LLM config block at least: a marker must not swallow them all.
    assert len(readme_run) >= 5, inventory()


# -- the CLI synopsis and the environment twins -------------------------------


def test_the_readme_synopsis_is_generated_from_the_parser() -> None:
    from skillscale.tools.cli import build_parser
    from skillscale.tools.cli.synopsis import block, replace_block

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert replace_block(text, block(build_parser())) == text, (
        "the README's CLI synopsis is stale: run "
        "python -m skillscale.tools.cli.synopsis --write README.md"
    )


def test_the_synopsis_names_every_command_and_flag() -> None:
    from skillscale.tools.cli import build_parser
    from skillscale.tools.cli.synopsis import commands, options, synopsis

    text = synopsis(build_parser())
    entries = re.split(r"\n(?=skillscale )", text)
    found = 0
    for name, parser in commands(build_parser()):
        entry = next(e for e in entries if e.startswith(f"skillscale {name} "))
        for action in options(parser):
            flag = max(action.option_strings, key=len)
            # A required flag is shown bare, an optional one in brackets.
            opening = r"(?:\[|\s)" if action.required else r"\["
            assert re.search(rf"{opening}{re.escape(flag)}[\] ]", entry), f"{name}: {flag} missing"
            found += 1
    assert found > 50  # the walk reached the real parser, not an empty one


def test_every_flag_names_its_environment_variable() -> None:
    from skillscale.tools.cli import build_parser
    from skillscale.tools.cli.synopsis import commands, env_exempt, options

    missing = []
    for name, parser in commands(build_parser()):
        for action in options(parser):
            flag = max(action.option_strings, key=len)
            if env_exempt(name, flag) or isinstance(action, argparse._VersionAction):
                continue
            if not re.search(r"SKILLSCALE_[A-Z_]+", action.help or ""):
                missing.append(f"{name} {flag}")
    assert not missing, f"flags without a SKILLSCALE_* twin in their help: {missing}"


def test_env_twins_of_mcp_and_bench_take_effect() -> None:
    from skillscale.tools.cli import build_parser

    env = {
        "SKILLSCALE_MCP_PORT": "9911",
        "SKILLSCALE_MCP_HOST": "127.0.0.2",
        "SKILLSCALE_MCP_TRANSPORT": "http",
        "SKILLSCALE_BENCH_REQUESTS": "7",
        "SKILLSCALE_BENCH_CONCURRENCY": "3",
        "SKILLSCALE_BENCH_WARMUP": "0",
        "SKILLSCALE_BENCH_MODE": "bus",
        "SKILLSCALE_BENCH_NO_PROGRESS": "1",
        "SKILLSCALE_XSUB_PORT": "6444",
        "SKILLSCALE_XPUB_PORT": "6555",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        parser = build_parser()
        mcp = parser.parse_args(["mcp"])
        bench = parser.parse_args(["bench"])
        invoke = parser.parse_args(["invoke", "T", "x"])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert (mcp.port, mcp.host, mcp.transport) == (9911, "127.0.0.2", "http")
    assert (bench.requests, bench.concurrency, bench.warmup, bench.no_progress) == (7, 3, 0, True)
    # One variable for `up` and its clients: invoke follows up's ports.
    assert (invoke.proxy_xsub, invoke.proxy_xpub) == (
        "tcp://127.0.0.1:6444",
        "tcp://127.0.0.1:6555",
    )


# -- the blocks, against a live fabric -----------------------------------------


@pytest.fixture(scope="module")
def fabric_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    ports = {
        "SKILLSCALE_XSUB_PORT": str(free_port()),
        "SKILLSCALE_XPUB_PORT": str(free_port()),
        "SKILLSCALE_ROUTER_PORT": str(free_port()),
    }
    up = RoleProcess(
        "up", "--json", "--metrics-port", "-1", "--workers", "2", env=role_env(**ports)
    )
    bin_dir = tmp_path_factory.mktemp("bin")
    # `skillscale` on PATH is this checkout's entry point (the same
    # skillscale.tools.cli:main the console script calls), not whatever
    # copy the shared interpreter has installed.
    shim = bin_dir / "skillscale"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m skillscale "$@"\n')
    shim.chmod(0o755)
    env = role_env(**ports)
    env.pop("SKILLSCALE_CONFIG", None)  # the default ~/.skillscale/config.yaml, in a fresh HOME
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    try:
        assert up.ready["xsub"].endswith(":" + ports["SKILLSCALE_XSUB_PORT"])
        yield env
    finally:
        up.close()


def _workdir(tmp: Path) -> None:
    # The checkout's files, seen from a scratch folder: a snippet that
    # writes (keys/, config files) writes there, never into the repository.
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "__pycache__"):
            (tmp / entry.name).symlink_to(entry)


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs(block: Block, fabric_env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "work"
    cwd.mkdir()
    _workdir(cwd)
    env = {**fabric_env, "HOME": str(home)}
    if block.lang == "python":
        script = tmp_path / "snippet.py"
        script.write_text(block.code)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False
    )
    assert result.returncode == 0, (
        f"{block.id} ({block.lang}) failed with {result.returncode}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if block.lang == "python":
        assert result.stdout.strip(), f"{block.id} printed nothing: what does it show?"


if __name__ == "__main__":
    print(inventory())
    for b in MARKED:
        print(f"  not run: {b.id}: {b.reason}")
