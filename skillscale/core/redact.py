"""Redaction of secrets and personal data before anything leaves the process.

Applied to every captured event (trajectories, trace details) and, by the
distiller, to every line of an agent session before it is stored, written
into a skill or sent to an LLM: API keys and tokens of the common providers,
AWS access keys and secret keys, bearer and basic credentials, passwords in
URLs, in ``key=value`` assignments and in ``--password VALUE`` flags, PEM
blocks, e-mail addresses, IP addresses (not loopback or the unspecified
address: those are facts of a command, not personal data) and home-directory
user names and paths are replaced with ``[REDACTED:<kind>]`` markers.

:class:`Redactor` adds the user's own patterns (``redact.patterns`` in the
config file, or the distiller's ``--redact`` flag); :func:`redact` is the
built-in set.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from skillscale.core.errors import ConfigError

# Each pattern: (kind, regex). Order matters: whole blocks and specific
# tokens first, so a generic rule never sees half of a known token.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("private_key", re.compile(
        # A block ends before the next BEGIN: many unclosed BEGINs stay linear.
        r"-----BEGIN [A-Z0-9 ]*(?:PRIVATE KEY|CERTIFICATE|PGP PRIVATE KEY BLOCK)-----"
        r"(?:(?!-----BEGIN ).)*?"
        r"-----END [A-Z0-9 ]*(?:PRIVATE KEY|CERTIFICATE|PGP PRIVATE KEY BLOCK)-----", re.S
    )),
    ("anthropic_key", re.compile(r"\bsk-ant-[A-Za-z0-9_\-]{16,}")),
    ("openai_key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}")),
    ("stripe_key", re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}")),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b")),
    ("aws_secret", re.compile(
        r"(?i)(aws_?secret_?access_?key|aws_?session_?token)(\s*[:=]\s*[\"']?)"
        r"([A-Za-z0-9/+=]{20,})"
    )),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})")),
    ("gitlab_token", re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}")),
    ("slack_token", re.compile(r"\bxox[abpors]-[A-Za-z0-9\-]{10,}")),
    ("google_key", re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}")),
    ("huggingface_token", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("npm_token", re.compile(r"\bnpm_[A-Za-z0-9]{30,}")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}")),
    # Linear time, without capping a name's length: the lookbehind lets a
    # match start only where a run of name characters starts, and nothing
    # after a run can match inside it, so each run is scanned a bounded number
    # of times. (With a bare ``\b`` 16 KB of "a-a-a-..." took 40 s, and the
    # same text is redacted on a server's event loop for trace events.)
    ("url_password", re.compile(
        r"(?<![a-zA-Z0-9+.\-])([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@\"']+):([^\s@/\"']+)@"
    )),
    ("bearer", re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{12,}")),
    ("secret_flag", re.compile(
        r"(?i)(--?(?:password|passwd|pass|token|api-key|apikey|secret|client-secret)(?:=|\s+))"
        r"([^\s\"'-][^\s\"']{3,})"
    )),
    ("secret", re.compile(
        # The keyword is found once per run (the lookahead), then the whole
        # run is the name: a prefix and a suffix both searched would rescan
        # the run per keyword in it ("token-token-...", quadratic).
        r"(?i)(?<![a-z0-9_\-])"
        r"(?=[a-z0-9_\-]*?(?:api[_\-]?key|secret|token|password|passwd|pwd|credential))"
        r"([a-z0-9_\-]+)"
        r"(\s*[:=]\s*[\"']?|\"\s*:\s*\")([^\s\"',;]{4,})"
    )),
    ("email", re.compile(
        r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*"
        r"\.[A-Za-z]{2,}\b"
    )),
    ("ip", re.compile(
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])"
    )),
    ("ipv6", re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])")),
    ("home", re.compile(r"(/home/|/Users/|C:\\\\Users\\\\|C:\\Users\\)(?!\[REDACTED)[^/\\\s\"']+")),
]  # fmt: skip

# Addresses that name no one: kept, because `curl http://127.0.0.1:8000`
# is a fact of the procedure a skill describes.
_PUBLIC_IPS = frozenset({"127.0.0.1", "0.0.0.0", "255.255.255.255"})  # noqa: S104
_MARKER = re.compile(r"\[REDACTED:[a-z_0-9]+\]")


def _replace(kind: str, match: re.Match[str]) -> str:
    if kind in ("secret", "aws_secret"):
        return f"{match.group(1)}{match.group(2)}[REDACTED:secret]"
    if kind == "secret_flag":
        return f"{match.group(1)}[REDACTED:secret]"
    if kind == "url_password":
        return f"{match.group(1)}:[REDACTED:password]@"
    if kind == "home":
        return f"{match.group(1)}[REDACTED:user]"
    if kind == "ip" and match.group(0) in _PUBLIC_IPS:
        return match.group(0)
    if kind == "secret" and _MARKER.fullmatch(match.group(3)):
        return match.group(0)
    return f"[REDACTED:{kind}]"


@lru_cache(maxsize=1)
def _local_user_names() -> tuple[str, ...]:
    """The login and home-folder names of this machine's user (long enough to be a name)."""
    names = set()
    with contextlib.suppress(KeyError, OSError):
        names.add(getpass.getuser())
    names.add(os.path.basename(os.path.expanduser("~")))
    # Short or generic names would redact ordinary words (and "root" is no one).
    return tuple(sorted(n for n in names if len(n) >= 4 and n not in {"root", "user", "home"}))


def _redact_builtin(text: str) -> str:
    for kind, pattern in _PATTERNS:
        text = pattern.sub(lambda m, k=kind: _replace(k, m), text)  # type: ignore[misc]
    for name in _local_user_names():
        text = re.sub(rf"(?<![\w\-]){re.escape(name)}(?![\w\-])", "[REDACTED:user]", text)
    return text


def redact(text: str) -> str:
    """``text`` with every secret or personal datum replaced by a marker."""
    return _redact_builtin(text)


def redact_obj(value: Any) -> Any:
    """Redact every string inside nested dicts, lists and tuples."""
    return Redactor().obj(value)


class Redactor:
    """The built-in patterns plus the user's own (regular expressions, each
    match replaced by ``[REDACTED:custom]``)."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra: list[re.Pattern[str]] = []
        for source in extra:
            try:
                self.extra.append(re.compile(source))
            except re.error as exc:
                raise ConfigError(
                    f"redaction pattern {source!r} is not a valid regex: {exc}"
                ) from None

    def text(self, text: str) -> str:
        """``text`` redacted."""
        text = _redact_builtin(text)
        for pattern in self.extra:
            text = pattern.sub("[REDACTED:custom]", text)
        return text

    def obj(self, value: Any) -> Any:
        """Every string inside nested dicts, lists and tuples redacted (keys too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                (self.text(k) if isinstance(k, str) else k): self.obj(v) for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.obj(v) for v in value]
        return value
