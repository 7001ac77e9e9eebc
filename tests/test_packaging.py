"""The built wheel adds exactly one top-level import name: ``skillscale``."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import skillscale
from tests.helpers import ROOT

PROBE = """
import importlib.util, sys
from pathlib import Path
assert importlib.util.find_spec("proxy") is None, "a top-level 'proxy' was installed"
assert importlib.util.find_spec("skill_server") is None, "a top-level 'skill_server'"
import skillscale.proxy.groups, skillscale.skill_server.server, skillscale.tools.cli
from skillscale.core.discovery import bundled_skills_dir
assert (bundled_skills_dir() / "data-processing").is_dir()
import skillscale.gateway.app
assert (Path(skillscale.gateway.app.__file__).parent / "static" / "index.html").is_file()
print(Path(skillscale.proxy.groups.__file__).resolve())
print(Path(skillscale.skill_server.server.__file__).resolve())
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.timeout(300)
def test_the_wheel_installs_one_top_level_name(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "-w", str(dist), str(ROOT), cwd=tmp_path,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next(dist.glob("skillscale-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/", 1)[0] for name in archive.namelist()}
    assert top_level == {"skillscale", f"skillscale-{skillscale.__version__}.dist-info"}

    # A fresh virtual environment with only the wheel installed; the
    # dependencies come from this interpreter's site-packages as a plain path
    # (so this checkout's editable .pth is *not* processed there).
    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = Path(
        run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            cwd=tmp_path).stdout.strip()
    )  # fmt: skip
    installed = run(
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile",
        "--target", str(purelib), str(wheel), cwd=tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    deps = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (purelib / "_outer_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    probe = run(str(python), "-c", PROBE, cwd=tmp_path)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    for line in probe.stdout.split():
        assert Path(line).is_relative_to(purelib / "skillscale"), line
