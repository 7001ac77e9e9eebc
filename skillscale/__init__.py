"""SkillScale: a distributed ZeroMQ skill execution fabric for AI agents.

The public SDK surface::

    from skillscale import SkillScaleClient

    async with SkillScaleClient() as client:
        print(await client.invoke("TOPIC_DATA_PROCESSING", "summarize: ..."))
"""

from skillscale.client import SkillScaleClient, SyncSkillScaleClient
from skillscale.discovery import Catalog, SkillDiscovery
from skillscale.errors import (
    ConfigError,
    ErrorCode,
    ExecutionError,
    RequestError,
    SkillNotFoundError,
    SkillScaleError,
    SkillTimeoutError,
    UnavailableError,
)
from skillscale.protocol import Reply, Request, parse_intent, topic_for_category
from skillscale.skill_format import Skill, SkillFormatError, load_skill

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
