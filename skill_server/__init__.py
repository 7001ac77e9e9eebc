"""SkillScale skill servers: match a task to a skill and run it safely."""

from skillscale.core.matching import KeywordMatcher, MatchResult
from skillscale.skill_server.executor import ExecutionLimits, ExecutionResult, SubprocessExecutor
from skillscale.skill_server.handler import HandlerConfig, RequestHandler
from skillscale.skill_server.registry import SkillRegistry
from skillscale.skill_server.server import ServerConfig, SkillServer

__all__ = [
    "ExecutionLimits",
    "ExecutionResult",
    "HandlerConfig",
    "KeywordMatcher",
    "MatchResult",
    "RequestHandler",
    "ServerConfig",
    "SkillRegistry",
    "SkillServer",
    "SubprocessExecutor",
]
