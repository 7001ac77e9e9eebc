"""SkillScale: a distributed ZeroMQ skill execution fabric for AI agents.

The public SDK surface::

    from skillscale import SkillScaleClient

    async with SkillScaleClient() as client:
        print(await client.invoke("TOPIC_DATA_PROCESSING", "summarize: ..."))
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skillscale.core.discovery import Catalog, SkillDiscovery
    from skillscale.core.errors import (
        ConfigError,
        ErrorCode,
        ExecutionError,
        RequestError,
        SkillNotFoundError,
        SkillScaleError,
        SkillTimeoutError,
        UnavailableError,
    )
    from skillscale.core.protocol import Reply, Request, parse_intent, topic_for_category
    from skillscale.core.skill_format import Skill, SkillFormatError, load_skill
    from skillscale.sdk.client import SkillScaleClient, SyncSkillScaleClient

# The public names are imported on first use (PEP 562), not here: every process
# that imports any skillscale module runs this file, the fork server and each
# cold skill using skillkit among them, and the SDK with pydantic costs about
# 23 MiB and 150-400 ms that those processes never use.
_LAZY = {
    "Catalog": "skillscale.core.discovery",
    "SkillDiscovery": "skillscale.core.discovery",
    "ConfigError": "skillscale.core.errors",
    "ErrorCode": "skillscale.core.errors",
    "ExecutionError": "skillscale.core.errors",
    "RequestError": "skillscale.core.errors",
    "SkillNotFoundError": "skillscale.core.errors",
    "SkillScaleError": "skillscale.core.errors",
    "SkillTimeoutError": "skillscale.core.errors",
    "UnavailableError": "skillscale.core.errors",
    "Reply": "skillscale.core.protocol",
    "Request": "skillscale.core.protocol",
    "parse_intent": "skillscale.core.protocol",
    "topic_for_category": "skillscale.core.protocol",
    "Skill": "skillscale.core.skill_format",
    "SkillFormatError": "skillscale.core.skill_format",
    "load_skill": "skillscale.core.skill_format",
    "SkillScaleClient": "skillscale.sdk.client",
    "SyncSkillScaleClient": "skillscale.sdk.client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'skillscale' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# The roles live in their own folders beside this package in a checkout
# (proxy/, skill_server/) and inside it once installed (the wheel maps them to
# skillscale/proxy, skillscale/skill_server): either way they are imported as
# skillscale.proxy and skillscale.skill_server, and installing adds exactly
# one top-level name.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "proxy")) and _os.path.isfile(
    _os.path.join(_checkout, "proxy", "__init__.py")
):
    __path__.append(_checkout)

__version__ = "0.1.0"

__all__ = [
    "Catalog",
    "ConfigError",
    "ErrorCode",
    "ExecutionError",
    "Reply",
    "Request",
    "RequestError",
    "Skill",
    "SkillDiscovery",
    "SkillFormatError",
    "SkillNotFoundError",
    "SkillScaleClient",
    "SkillScaleError",
    "SkillTimeoutError",
    "SyncSkillScaleClient",
    "UnavailableError",
    "__version__",
    "load_skill",
    "parse_intent",
    "topic_for_category",
]
