"""One way to reach any OpenAI-compatible endpoint: settings, rate limit, calls.

Settings come from (later wins): the config file (``~/.skillscale/config.yaml``
or ``SKILLSCALE_CONFIG``), the ``openai`` package's own variables
(``OPENAI_BASE_URL``, ``OPENAI_API_KEY``), then ``SKILLSCALE_LLM_BASE_URL``,
``SKILLSCALE_LLM_MODEL`` and ``SKILLSCALE_LLM_API_KEY``. Without a model and
a base URL or key, no LLM is configured and every caller falls back to
keyword matching.

Calls go through the ``openai`` package (imported only when an LLM is
configured: the import costs ~0.5 s), with its retries and backoff on 429
and 5xx and a timeout on every call. A token bucket per base URL, shared by
everything in the process, holds the configured ``rpm``/``tpm``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from skillscale.core.errors import ConfigError
from skillscale.core.runtime import within

CONFIG_TEMPLATE = """\
# SkillScale configuration. Everything is commented out: with no LLM the
# fabric matches skills by keywords. Uncomment the llm block to use a model.
# Environment variables override every value here: SKILLSCALE_LLM_BASE_URL,
# SKILLSCALE_LLM_MODEL, SKILLSCALE_LLM_API_KEY (falling back to the openai
# package's OPENAI_BASE_URL and OPENAI_API_KEY).
#
# llm:
#   # Any OpenAI-compatible endpoint: OpenAI, Azure OpenAI, DeepSeek, Zhipu,
#   # Ollama (http://localhost:11434/v1), vLLM (http://localhost:8000/v1), ...
#   base_url: https://api.openai.com/v1
#   model: gpt-4o-mini
#   # api_key: sk-...          # better: set SKILLSCALE_LLM_API_KEY
#   timeout: 20                # seconds per call
#   max_retries: 2             # on 429, 5xx and connection errors, with backoff
#   # rate_limit:              # one token bucket per base_url, per process
#   #   rpm: 60                # requests per minute
#   #   tpm: 90000             # tokens per minute (estimated from text length)
#   #   burst: 10              # requests allowed at once before pacing
"""


def config_path() -> Path:
    """``SKILLSCALE_CONFIG`` or ``~/.skillscale/config.yaml``."""
    return Path(os.environ.get("SKILLSCALE_CONFIG", "~/.skillscale/config.yaml")).expanduser()


def write_config_template(path: Path | None = None, *, force: bool = False) -> Path:
    """Write the commented template; refuses to overwrite unless ``force``."""
    path = path or config_path()
    if path.exists() and not force:
        raise ConfigError(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIG_TEMPLATE)
    return path


@dataclass(frozen=True)
class RateLimit:
    """Requests and (estimated) tokens per minute, and the burst allowed."""

    rpm: float | None = None
    tpm: float | None = None
    burst: int = 1


@dataclass(frozen=True)
class LLMSettings:
    """Where and how to call the model. Durations in seconds."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    timeout: float = 20.0
    max_retries: int = 2
    rate_limit: RateLimit | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> LLMSettings | None:
        """The configured settings, or None when no LLM is configured."""
        data: dict[str, Any] = {}
        path = path or config_path()
        if path.is_file():
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" line {mark.line + 1}" if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise ConfigError(
                    f"{path}{where}: {problem} (fix the YAML, or run "
                    "`skillscale config init --force` for a fresh template)"
                ) from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path} must be a YAML mapping")
            data = dict(loaded.get("llm") or {})
        env = os.environ
        for key, names in (
            ("base_url", ("OPENAI_BASE_URL", "SKILLSCALE_LLM_BASE_URL")),
            ("api_key", ("OPENAI_API_KEY", "SKILLSCALE_LLM_API_KEY")),
            ("model", ("SKILLSCALE_LLM_MODEL",)),
        ):
            for name in names:
                if env.get(name):
                    data[key] = env[name]
        model = data.get("model")
        if not model or not (data.get("base_url") or data.get("api_key")):
            return None
        limit = data.get("rate_limit")
        try:
            rate = (
                RateLimit(
                    rpm=float(limit["rpm"]) if limit.get("rpm") else None,
                    tpm=float(limit["tpm"]) if limit.get("tpm") else None,
                    burst=int(limit.get("burst", 1)),
                )
                if isinstance(limit, dict)
                else None
            )
            return cls(
                model=str(model),
                base_url=str(data["base_url"]) if data.get("base_url") else None,
                api_key=str(data["api_key"]) if data.get("api_key") else None,
                timeout=float(data.get("timeout", 20.0)),
                max_retries=int(data.get("max_retries", 2)),
                rate_limit=rate,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid llm settings: {exc}") from None

    def skill_env(self) -> dict[str, str]:
        """What a skill that asks for the LLM (``metadata.llm: true``) receives."""
        env = {"SKILLSCALE_LLM_MODEL": self.model, "SKILLSCALE_LLM_TIMEOUT": str(self.timeout)}
        if self.base_url:
            env["SKILLSCALE_LLM_BASE_URL"] = self.base_url
        if self.api_key:
            env["SKILLSCALE_LLM_API_KEY"] = self.api_key
        return env


class TokenBucket:
    """Paces calls to ``rpm`` requests and ``tpm`` tokens per minute.

    Written here rather than taken from a library: it must be shared by
    every coroutine of the process and wait without polling, and the
    candidates (aiolimiter, limits) cover requests or tokens, not both.
    """

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._lock = asyncio.Lock()
        self._requests = float(max(1, limit.burst))
        self._tokens = limit.tpm or 0.0
        self._stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        elapsed, self._stamp = now - self._stamp, now
        if self.limit.rpm:
            self._requests = min(
                max(1, self.limit.burst), self._requests + elapsed * self.limit.rpm / 60
            )
        if self.limit.tpm:
            self._tokens = min(self.limit.tpm, self._tokens + elapsed * self.limit.tpm / 60)

    async def acquire(self, tokens: int = 0, timeout: float | None = None) -> None:
        """Wait for a request slot (and ``tokens``); ``TimeoutError`` past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                self._refill(now)
                need_req = 0.0 if not self.limit.rpm else max(0.0, 1 - self._requests)
                want = min(tokens, self.limit.tpm or 0)
                need_tok = 0.0 if not self.limit.tpm else max(0.0, want - self._tokens)
                wait = max(
                    need_req * 60 / self.limit.rpm if self.limit.rpm else 0.0,
                    need_tok * 60 / self.limit.tpm if self.limit.tpm else 0.0,
                )
                if wait <= 0:
                    if self.limit.rpm:
                        self._requests -= 1
                    if self.limit.tpm:
                        self._tokens -= want
                    return
                if deadline is not None and now + wait > deadline:
                    raise TimeoutError(f"rate limit: next slot in {wait:.1f} s")
                await asyncio.sleep(wait)  # the exact time until the bucket refills


_BUCKETS: dict[tuple[str, RateLimit], TokenBucket] = {}


def bucket_for(settings: LLMSettings) -> TokenBucket | None:
    """The process-wide bucket of ``settings.base_url`` (None when unlimited)."""
    if settings.rate_limit is None:
        return None
    key = (settings.base_url or "default", settings.rate_limit)
    if key not in _BUCKETS:
        _BUCKETS[key] = TokenBucket(settings.rate_limit)
    return _BUCKETS[key]


def json_answer(answer: str) -> Any | None:
    """The JSON value a model answered, fenced in ```json or bare; None when it is
    not JSON, or is nested too deeply to parse (a hostile answer is a bad answer)."""
    text = answer.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


class LLMError(Exception):
    """A call that failed for good (after retries), timed out or was rate-limited."""


class LLMClient:
    """Chat completions against the configured endpoint."""

    def __init__(self, settings: LLMSettings) -> None:
        from openai import AsyncOpenAI  # ~0.5 s: only when an LLM is configured

        self.settings = settings
        self._client = AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key or "not-needed",
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )
        self._bucket = bucket_for(settings)

    async def complete(self, system: str, user: str, *, max_tokens: int = 64) -> str:
        """One chat completion; raises :class:`LLMError` on any failure."""
        import openai

        estimate = (len(system) + len(user)) // 4 + max_tokens
        try:
            if self._bucket is not None:
                await self._bucket.acquire(estimate, timeout=self.settings.timeout)
            response = await within(
                self._client.chat.completions.create(
                    model=self.settings.model,
                    messages=[
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                    ],
                    max_tokens=max_tokens,
                    temperature=0,
                ),
                # openai's own timeout is per attempt; this bounds all retries.
                timeout=self.settings.timeout * (self.settings.max_retries + 1) + 1,
            )
            choice = response.choices[0] if response.choices else None
            content = choice.message.content if choice is not None else None
        # A non-conforming endpoint can make the parser raise anything of these.
        except (openai.OpenAIError, TimeoutError, asyncio.TimeoutError, ValueError, TypeError,
                KeyError, AttributeError) as exc:  # fmt: skip
            raise LLMError(f"{type(exc).__name__}: {exc}") from None
        if not content:
            raise LLMError("the model returned no text")
        return content

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()
