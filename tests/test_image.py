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
runs install offline and rebuild skillscale's own wheel only when a file that
goes into it changed (see :func:`wheelhouse`, :func:`fresh_venv`).
"""

from __future__ import annotations

import ensurepip
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


def clean_env() -> dict[str, str]:
    """This environment without what would point a child at this interpreter's packages."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL"))}


def shell(line: str, *, cwd: Path, path: Path | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = clean_env()
    if path is not None:
        env["PATH"] = f"{path}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(["/bin/sh", "-ec", line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def wheel_sources() -> list[Path]:
    """Every file that goes into skillscale's own wheel (pyproject's hatch config)."""
    text = (ROOT / "pyproject.toml").read_text()  # no tomllib on Python 3.10
    section = re.search(r"^\[tool\.hatch\.build\.targets\.wheel\.force-include\]\n(.*?)^\[",
                        text, re.M | re.S)  # fmt: skip
    assert section, "pyproject.toml has no wheel force-include table"
    packages = re.search(r"^\[tool\.hatch\.build\.targets\.wheel\]\n(?:#.*\n)*packages = (.*)$",
                         text, re.M)  # fmt: skip
    assert packages, "pyproject.toml names no wheel packages"
    roots = [*json.loads(packages[1]), *re.findall(r'^"([^"]+)" = ', section[1], re.M)]
    assert "skillscale" in roots and "proxy" in roots, roots
    files = [ROOT / "pyproject.toml", ROOT / "README.md"]
    for root in roots:
        files += sorted(
            f for f in (ROOT / root).rglob("*")
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
        )  # fmt: skip
    return files


def kept_dir(kind: str, *parts: bytes) -> Path:
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return ROOT / ".pytest_cache" / "skillscale-wheels" / f"{kind}-{key}"


def wheelhouse(tmp: Path) -> Path:
    """The build line's output: run it, or reuse the kept one.

    Both halves are kept under ``.pytest_cache``: the dependencies' wheels
    keyed by ``pyproject.toml`` and the build line (the first run downloads
    them, about a minute), and skillscale's own wheel keyed by the content of
    every file that goes into it (rebuilt only when one changed). The test's
    wheel folder is made of hard links to them.
    """
    build, _ = run_lines()
    deps = kept_dir("deps", (ROOT / "pyproject.toml").read_bytes(), build.encode())
    if not deps.is_dir():
        fresh = tmp / "wheels-build"
        # The context as the image build sees it: the checkout ("COPY . .").
        done = shell(build.replace(MOUNT, str(fresh)), cwd=ROOT, path=Path(sys.executable).parent)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        for own in fresh.glob("skillscale-*.whl"):
            own.unlink()  # kept apart, keyed by its sources
        deps.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(fresh, deps)
    sources = wheel_sources()
    own = kept_dir("own", *(f"{f.relative_to(ROOT)}".encode() + b"\0" + f.read_bytes()
                            for f in sources))  # fmt: skip
    if not list(own.glob("skillscale-*.whl")):
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(tmp / "own"), str(ROOT)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert built.returncode == 0, built.stdout + built.stderr
        for stale in own.parent.glob("own-*"):
            shutil.rmtree(stale)  # one own wheel kept: the cache does not grow per edit
        shutil.copytree(tmp / "own", own)
    wheels = tmp / "wheels"
    wheels.mkdir()
    for wheel in [*deps.glob("*.whl"), *own.glob("skillscale-*.whl")]:
        os.link(wheel, wheels / wheel.name)
    return wheels


def fresh_venv(venv: Path) -> None:
    """A new ``python -m venv`` with its own pip, the one ``ensurepip`` would install.

    ``venv`` (via ensurepip) byte-compiles pip's ~1,000 files on the way, a
    third of this test's CPU time on these machines; pip is the installer
    here, not what is tested, so it is installed from the same bundled wheel
    with ``--no-compile``. Everything the Dockerfile's line installs is
    compiled as in the image.
    """
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    bundled = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    assert bundled, "this Python has no bundled pip wheel (ensurepip)"
    pip = str(bundled[-1])
    # A wheel is importable from its zip: pip installs itself from it.
    installed = subprocess.run(
        [str(venv / "bin" / "python"), f"{pip}/pip", "install", "--quiet", "--no-index",
         "--no-compile", "--disable-pip-version-check", pip],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr


@pytest.mark.timeout(900)
def test_the_dockerfile_install_line_works_in_a_fresh_venv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    _, install = run_lines()
    assert install.startswith("python -m pip install ") and "--no-index" in install
    wheels = wheelhouse(tmp_path)
    venv = tmp_path / "venv"
    fresh_venv(venv)
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

    # Every role's command parses, in the installed entrypoint function (one
    # interpreter: eight starts of the same console script prove nothing more;
    # the script itself starts the proxy and `health` below).
    skillscale = str(bin_dir / "skillscale")
    code = (
        "import contextlib, io, json, sys\n"
        "from skillscale.tools.cli import main\n"
        "codes = {}\n"
        "for role in sys.argv[1:]:\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            codes[role] = main([role, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        codes[role] = exc.code or 0\n"
        "print(json.dumps(codes))\n"
    )
    helped = subprocess.run(
        [str(bin_dir / "python"), "-c", code, *ROLES], cwd=work, capture_output=True,
        text=True, timeout=120, check=False,
        env=clean_env(),
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    helps = json.loads(helped.stdout)
    for role, code in helps.items():
        if role != "distill":  # issue 12's command, present once merged
            assert code == 0, (role, code)

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
