"""What every adapter needs: the tool specs a catalogue yields, and a way to call them."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skillscale.core.discovery import Catalog, SkillDiscovery
from skillscale.core.errors import ConfigError
from skillscale.core.protocol import topic_for_category
from skillscale.core.skill_format import Skill

DATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {
            "type": "string",
            "description": "The skill's input: the text, CSV, code or JSON it works on.",
        }
    },
    "required": ["data"],
}
TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "task": {
            "type": "string",
            "description": "What to do, in words, followed by the data to do it on.",
        }
    },
    "required": ["task"],
}


@dataclass(frozen=True)
class ToolSpec:
    """One tool: a skill (``skill`` set) or a whole topic (task-based)."""

    name: str
    description: str
    topic: str
    schema: dict[str, Any]
    skill: str | None = None

    def intent(self, arguments: dict[str, Any]) -> str:
        """The intent for a call with ``arguments`` (the tool's input)."""
        if self.skill is None:
            return json.dumps({"task": str(arguments.get("task", ""))})
        if set(arguments) == {"data"}:
            data: Any = arguments["data"]
        else:
            data = json.dumps(arguments)  # a skill with its own input schema
        return json.dumps({"skill": self.skill, "data": data})


def input_schema(skill: Skill) -> dict[str, Any]:
    """``metadata.input_schema`` (a JSON Schema object, as a string), else ``{data}``."""
    raw = skill.metadata.get("input_schema")
    if raw:
        try:
            schema = json.loads(raw)
        except ValueError:
            schema = None
        if isinstance(schema, dict) and schema.get("type") == "object":
            return schema
    return DATA_SCHEMA


def skill_specs(catalog: Catalog) -> list[ToolSpec]:
    """One tool per skill; kebab-case names are valid tool names everywhere."""
    return [
        ToolSpec(
            name=skill.name,
            description=skill.description,
            topic=topic_for_category(catalog.category_of[skill.name]),
            schema=input_schema(skill),
            skill=skill.name,
        )
        for skill in sorted(catalog.skills.values(), key=lambda s: s.name)
    ]


def task_specs(catalog: Catalog) -> list[ToolSpec]:
    """One task-based tool per topic; the topic's server picks the skill."""
    specs = []
    for topic, skills in catalog.topics().items():
        name = re.sub(r"[^a-z0-9_-]", "_", topic.lower())[:64]
        listing = "; ".join(f"{s.name}: {s.description}" for s in skills)
        specs.append(
            ToolSpec(
                name=name,
                description=f"Send a task to the {topic} skill server, which picks the right "
                f"skill among: {listing}"[:1024],
                topic=topic,
                schema=TASK_SCHEMA,
            )
        )
    return specs


def catalog_from(path: str | Path | Sequence[str | Path]) -> Catalog:
    """The skills under one root or several (what every ``from_skills_dir`` reads).

    A root that does not exist is an error naming it, not an empty tool list.
    """
    roots = [Path(p).expanduser() for p in ([path] if isinstance(path, (str, Path)) else path)]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise ConfigError(f"no skills folder at {', '.join(missing)}")
    return SkillDiscovery(roots).scan()
