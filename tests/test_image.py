"""The image's install, proven without a container engine: the Dockerfile's own
``pip`` lines run in a fresh virtual environment, then its entrypoint commands.

No container can run on these machines (see issue 13), so this is the closest
honest check: the *exact* ``RUN`` lines of ``docker/Dockerfile`` (only the
build-time mount point ``/wheels`` is replaced by a folder of the test's), a
real install from PyPI into a new ``python -m venv`` (its own pip, nothing
from this interpreter's site-packages), then ``skillscale ... --help`` for
every role and a real ``skillscale proxy`` answering ``/readyz``.

The wheelhouse the build line makes is kept under ``.pytest_cache`` keyed by
the hash of ``pyproject.toml``: the first run downloads (about a minute), later
runs rebuild only skillscale's own wheel and install offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skillscale.core.health import READINESS_PATH
from tests.helpers import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
MOUNT = "/wheels"
ROLES = ("proxy", "server", "up", "mcp", "operator", "health", "invoke", "distill")


def run_lines() -> tuple[str, str]:
    """(the build stage's ``pip wheel`` line, the runtime stage's ``pip install`` line)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    runs = [m.group(1).strip() for m in re.finditer(r"^RUN (.+)$", text, re.M)]
    build = next(r for r in runs if " pip wheel " in r)
    install = next(r for r in runs if " pip install " in r)
    install = re.sub(r"^--mount=\S+\s+", "", install)  # BuildKit's bind of the wheels
    return build, install


def shell(line: str, *, cwd: Path, path: Path | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL"))}
    if path is not None:
        env["PATH"] = f"{path}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(["/bin/sh", "-ec", line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def wheelhouse(tmp: Path) -> Path:
    """The build line's output: run it, or reuse the kept one (own wheel rebuilt)."""
    build, _ = run_lines()
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + build.encode()).hexdigest()
    kept = ROOT / ".pytest_cache" / "skillscale-wheels" / key[:16]
    if not kept.is_dir():
        fresh = tmp / "wheels-build"
        # The context as the image build sees it: the checkout ("COPY . .").
        done = shell(build.replace(MOUNT, str(fresh)), cwd=ROOT, path=Path(sys.executable).parent)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(fresh, kept)
    wheels = tmp / "wheels"
    shutil.copytree(kept, wheels)
    for own in wheels.glob("skillscale-*.whl"):
        own.unlink()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return wheels


@pytest.mark.timeout(900)
def test_the_dockerfile_install_line_works_in_a_fresh_venv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    _, install = run_lines()
    assert install.startswith("python -m pip install ") and "--no-index" in install
    wheels = wheelhouse(tmp_path)
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    bin_dir = venv / "bin"
    work = tmp_path / "work"  # not the checkout: nothing may be imported from it
    work.mkdir()
    line = install.replace(MOUNT, str(wheels))
    installed = shell(line, cwd=work, path=bin_dir)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    install_seconds = time.monotonic() - started

    probe = shell(
        "python -c 'import skillscale, kopf, mcp, operator, skillscale.topic_operator.handlers;"
        " from skillscale.core.discovery import bundled_skills_dir as b;"
        ' print(skillscale.__file__); print(sorted(p.name for p in b().iterdir()))\'',
        cwd=work, path=bin_dir,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    where, skills = probe.stdout.splitlines()
    assert Path(where).is_relative_to(venv), where
    assert "data-processing" in skills and "code-analysis" in skills

    # Every role's entrypoint command starts (all at once: each is an interpreter start).
    skillscale = str(bin_dir / "skillscale")
    shown = {role: subprocess.Popen([skillscale, role, "--help"], cwd=work,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for role in ROLES}  # fmt: skip
    helps = {}
    for role, child in shown.items():
        _, err = child.communicate(timeout=120)
        helps[role] = child.returncode
        if role != "distill":  # issue 12's command, present once merged
            assert child.returncode == 0, (role, err)

    proc = subprocess.Popen(
        [skillscale, "proxy", "--xsub-bind", "tcp://127.0.0.1:0", "--xpub-bind",
         "tcp://127.0.0.1:0", "--router-bind", "tcp://127.0.0.1:0", "--metrics-port", "0"],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(60), "the installed proxy printed no ready line"
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["health"].endswith(READINESS_PATH)
        probed = shell(f"skillscale health {ready['health']}", cwd=work, path=bin_dir)
        assert probed.returncode == 0, probed.stdout
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    with capsys.disabled():
        print(
            f"\nfresh venv: `{line}` -> ok in {install_seconds:.0f} s "
            f"({len(list(wheels.glob('*.whl')))} wheels); `skillscale ROLE --help` exit "
            f"codes {helps}; installed proxy ready, `skillscale health` on {ready['health']}: 0"
        )
