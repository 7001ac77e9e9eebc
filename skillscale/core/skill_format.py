"""The Agent Skills on-disk format: ``SKILL.md`` frontmatter, body, scripts.

Validation follows the Agent Skills rules (see PRODUCT.md §5): ``name`` and
``description`` are required, only ``license``, ``compatibility``,
``metadata`` and ``allowed-tools`` may appear beside them, and ``name`` must
equal the directory name. Fabric settings live under ``metadata``:

========================  ==============================================
``metadata`` key          meaning
========================  ==============================================
``version``               the skill's version string (echoed in replies)
``timeout``               per-run time limit in seconds
``keywords``              extra words for keyword matching
========================  ==============================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skillscale.core.errors import ConfigError
from skillscale.core.protocol import is_valid_skill_name

MAX_SKILL_MD_BYTES = 1024 * 1024
ALLOWED_KEYS = frozenset(
    {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
)
ENTRYPOINTS = ("scripts/run.py", "scripts/run.sh")

_FRONTMATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.DOTALL)


class SkillFormatError(ConfigError):
    """A skill directory that does not follow the Agent Skills format."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class Skill:
    """A validated skill loaded from disk."""

    name: str
    description: str
    path: Path
    body: str
    metadata: dict[str, str] = field(default_factory=dict)
    license: str | None = None
    compatibility: str | None = None
    allowed_tools: str | None = None
    entrypoint: Path | None = None
    """``scripts/run.py`` or ``scripts/run.sh``; None for instruction-only skills."""

    @property
    def version(self) -> str | None:
        """``metadata.version``, if set."""
        return self.metadata.get("version")

    @property
    def timeout(self) -> float | None:
        """``metadata.timeout`` in seconds, if set and valid."""
        raw = self.metadata.get("timeout")
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            return None
        return value if value > 0 else None

    @property
    def keywords(self) -> str:
        """``metadata.keywords`` (free text), or empty."""
        return self.metadata.get("keywords", "")

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description for catalogues and CLI output."""
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path),
            "version": self.version,
            "timeout": self.timeout,
            "entrypoint": str(self.entrypoint) if self.entrypoint else None,
            "metadata": dict(self.metadata),
        }


def split_frontmatter(text: str) -> tuple[dict[str, Any], str]:
    """Split ``SKILL.md`` text into its YAML frontmatter mapping and body."""
    text = text.lstrip("\ufeff")
    match = _FRONTMATTER_RE.match(text)
    if not match:
        raise ValueError("SKILL.md must start with a '---' YAML frontmatter block")
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise ValueError(f"frontmatter is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("frontmatter must be a YAML mapping")
    return data, match.group(2)


def validate_frontmatter(data: dict[str, Any], dir_name: str | None) -> list[str]:
    """Return every rule the frontmatter breaks (empty when valid)."""
    problems: list[str] = []
    unknown = sorted(str(k) for k in data if k not in ALLOWED_KEYS)
    if unknown:
        problems.append(
            "unknown frontmatter keys "
            + ", ".join(unknown)
            + " (put fabric settings under metadata)"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name:
        problems.append("'name' is required and must be a string")
    elif len(name) > 64 or not is_valid_skill_name(name):
        problems.append(
            f"name {name!r} must be 1-64 lowercase letters, digits and '-', "
            "without leading, trailing or double '-'"
        )
    elif dir_name is not None and name != dir_name:
        problems.append(f"name {name!r} must equal the directory name {dir_name!r}")
    desc = data.get("description")
    if not isinstance(desc, str) or not desc.strip():
        problems.append("'description' is required and must be a non-empty string")
    elif len(desc) > 1024:
        problems.append(f"description is {len(desc)} characters (at most 1024)")
    for key, limit in (("license", None), ("compatibility", 500), ("allowed-tools", None)):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{key!r} must be a string")
        elif limit is not None and len(value) > limit:
            problems.append(f"{key!r} is {len(value)} characters (at most {limit})")
    meta = data.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            problems.append("'metadata' must be a mapping of strings to strings")
        else:
            for key, value in meta.items():
                if isinstance(value, (dict, list)) or value is None:
                    problems.append(f"metadata.{key} must be a string")
    return problems


def load_skill(directory: Path, *, name: str | None = None) -> Skill:
    """Load and validate the skill in ``directory``; raise :class:`SkillFormatError`.

    ``name``: the name the skill must have; by default the directory's name
    (a stored version under ``.skillscale/candidates/<version>`` passes its skill's).
    """
    directory = directory.resolve()
    skill_md = directory / "SKILL.md"
    try:
        size = skill_md.stat().st_size
        if size > MAX_SKILL_MD_BYTES:
            raise SkillFormatError(directory, [f"SKILL.md is {size} bytes (at most 1 MiB)"])
        text = skill_md.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SkillFormatError(directory, ["no SKILL.md"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SkillFormatError(directory, [f"cannot read SKILL.md: {exc}"]) from None
    try:
        data, body = split_frontmatter(text)
    except ValueError as exc:
        raise SkillFormatError(directory, [str(exc)]) from None
    problems = validate_frontmatter(data, name or directory.name)
    if problems:
        raise SkillFormatError(directory, problems)
    metadata = {str(k): _scalar_str(v) for k, v in (data.get("metadata") or {}).items()}
    entrypoint = next((directory / rel for rel in ENTRYPOINTS if (directory / rel).is_file()), None)
    return Skill(
        name=data["name"],
        description=" ".join(str(data["description"]).split()),
        path=directory,
        body=body.strip(),
        metadata=metadata,
        license=data.get("license"),
        compatibility=data.get("compatibility"),
        allowed_tools=data.get("allowed-tools"),
        entrypoint=entrypoint,
    )


def _scalar_str(value: Any) -> str:
    # YAML turns `timeout: 30` into an int; the spec wants strings, so
    # scalars are kept in their string form rather than rejected.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
