"""SkillScale: a distributed ZeroMQ skill execution fabric for AI agents.

The public SDK surface::

    from skillscale import SkillScaleClient

    async with SkillScaleClient() as client:
        print(await client.invoke("TOPIC_DATA_PROCESSING", "summarize: ..."))
"""

import os as _os

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
