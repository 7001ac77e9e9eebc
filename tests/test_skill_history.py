"""A skill's history (skillscale/core/skill_history.py): a rollback rewrites a live folder.

A server may start the skill's script at any instant of a rollback, so each
file must go from its old content to its new one in one rename: a script
truncated for a moment ran as an empty program and answered "ok" with nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from skillscale.core import skill_history

pytestmark = pytest.mark.timeout(30)

SKILL_MD = "---\nname: echo\ndescription: says which version it is\n---\nRun scripts/run.sh.\n"


def write_version(folder: Path, version: str) -> None:
    (folder / "scripts").mkdir(parents=True, exist_ok=True)
    (folder / "SKILL.md").write_text(SKILL_MD + f"Version {version}.\n")
    script = folder / "scripts" / "run.sh"
    script.write_text(f"#!/bin/sh\necho v{version}\n")
    script.chmod(0o755)


def test_a_rollback_replaces_each_file_whole_and_skill_md_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "echo"
    write_version(folder, "1")
    assert skill_history.commit(folder, "v1")
    write_version(folder, "2")
    assert skill_history.commit(folder, "v2")
    seen: list[tuple[str, bytes]] = []
    real_replace = os.replace

    def watching_replace(src: Any, dst: Any) -> None:
        # What a server reading the folder sees just before the swap: the old file, whole.
        target = Path(os.fsdecode(dst))
        rel = target.relative_to(folder).as_posix()
        if not rel.startswith(".git/"):  # os is shared: dulwich renames its objects too
            seen.append((rel, target.read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(skill_history.os, "replace", watching_replace)
    skill_history.rollback(folder, "HEAD~1")
    assert [path for path, _ in seen] == ["scripts/run.sh", "SKILL.md"]
    assert dict(seen)["scripts/run.sh"] == b"#!/bin/sh\necho v2\n"
    assert b"Version 2." in dict(seen)["SKILL.md"]
    script = folder / "scripts" / "run.sh"
    assert script.read_text() == "#!/bin/sh\necho v1\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755  # still runnable
    assert not list(folder.rglob("*.skillscale-tmp"))


def test_a_write_cut_short_is_not_committed_as_part_of_the_skill(tmp_path: Path) -> None:
    folder = tmp_path / "echo"
    write_version(folder, "1")
    leftover = folder / "scripts" / ".run.sh.skillscale-tmp"
    leftover.write_text("#!/bin/sh\necho half")
    assert skill_history.commit(folder, "v1")
    leftover.unlink()
    # Had the commit taken it, the tree without it would differ from HEAD.
    assert skill_history.diff(folder, "HEAD") == ""
