"""Lint, format, strict typing and the import layering are part of the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT


def run(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package as the wheel lays it out: roles inside ``skillscale/``."""
    base = tmp_path_factory.mktemp("layout")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "skillscale", base / "skillscale", ignore=ignore)
    for role in ("proxy", "skill_server", "topic_operator", "gateway", "distiller"):
        shutil.copytree(ROOT / role, base / "skillscale" / role, ignore=ignore)
    yield base


@pytest.mark.timeout(300)
def test_ruff_lint_and_format() -> None:
    if shutil.which("ruff") is None:
        pytest.fail("ruff is not installed: install the dev extra")
    lint = run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.timeout(300)
def test_mypy_strict(installed_layout: Path) -> None:
    # The cache lives in the checkout (git-ignored), not in the fresh temporary
    # layout: a cold run re-analyses every typed dependency (~28 s CPU), a warm
    # one ~1.3 s. mypy still rechecks every module whose content changed and
    # everything depending on its interface (it compares hashes when the
    # layout's path differs), so the verdict is the same.
    result = run(
        sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "skillscale", cwd=installed_layout,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_import_layering(installed_layout: Path) -> None:
    """Roles import the core; the core imports no role; the SDK imports no role."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = run(
        str(lint_imports), str(ROOT / "pyproject.toml"),
        cwd=installed_layout, PYTHONPATH=str(installed_layout),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout, result.stdout
