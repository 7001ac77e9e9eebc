"""SkillScale skill servers: match a task to a skill and run it safely."""

from skill_server.executor import ExecutionLimits, ExecutionResult, SubprocessExecutor
from skill_server.handler import HandlerConfig, RequestHandler
from skill_server.matcher import KeywordMatcher, MatchResult
from skill_server.registry import SkillRegistry
from skill_server.server import ServerConfig, SkillServer, run_server

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
    "run_server",
]
