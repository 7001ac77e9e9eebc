"""Redaction of secrets and personal data before anything leaves the process.

Applied to every captured event (trajectories, trace details): API keys and
tokens of the common providers, bearer and basic credentials, ``key=value``
secrets, private keys, e-mail addresses, IP addresses and home-directory
user names are replaced with ``[REDACTED:<kind>]`` markers.
"""

from __future__ import annotations

import re
from typing import Any

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("private_key", re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S
    )),
    ("openai_key", re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}")),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b")),
    ("slack_token", re.compile(r"\bxox[abpors]-[A-Za-z0-9\-]{10,}\b")),
    ("google_key", re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\b")),
    ("bearer", re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{12,}")),
    ("secret", re.compile(
        r"(?i)\b([a-z0-9_\-]*(?:api[_\-]?key|secret|token|password|passwd|pwd)[a-z0-9_\-]*)"
        r"(\s*[:=]\s*|\"\s*:\s*\")([^\s\"',;]{4,})"
    )),
    ("email", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")),
    ("ip", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    ("home", re.compile(r"(/home/|/Users/|C:\\\\Users\\\\)[^/\\\s]+")),
]  # fmt: skip


def redact(text: str) -> str:
    """``text`` with every secret or personal datum replaced by a marker."""
    for kind, pattern in _PATTERNS:
        if kind == "secret":
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED:secret]", text)
        elif kind == "home":
            text = pattern.sub(lambda m: f"{m.group(1)}[REDACTED:user]", text)
        else:
            text = pattern.sub(f"[REDACTED:{kind}]", text)
    return text


def redact_obj(value: Any) -> Any:
    """Redact every string inside nested dicts, lists and tuples."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    return value
