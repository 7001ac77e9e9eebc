"""Helpers for skill scripts (``scripts/run.py``) running under a skill server.

A skill receives its input on stdin (and, for small inputs, in the
``SKILLSCALE_INTENT`` environment variable) and writes its answer, usually
markdown, to stdout; exit status 0 means success. These helpers cover what
every bundled skill needs: reading the input robustly, separating a leading
instruction ("summarize: ...") from the payload, pulling code out of a
markdown fence, and rendering markdown tables.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_INSTRUCTION_RE = re.compile(r"\A\s*([^\n:]{1,120}?):[ \t]*(?:\n|(?=\S))")
MAX_INSTRUCTION_WORDS = 12


def read_input() -> str:
    """The skill's input: stdin (invalid UTF-8 replaced), else ``SKILLSCALE_INTENT``."""
    data = sys.stdin.buffer.read() if not sys.stdin.closed else b""
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        text = os.environ.get("SKILLSCALE_INTENT", "")
    return text


def json_object(text: str) -> dict[str, Any] | None:
    """The input as a JSON object, if it is one."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def split_instruction(text: str) -> tuple[str, str]:
    """Split ``"summarize this article: <text>"`` into (instruction, payload).

    An instruction is a short phrase (at most 12 words, on the first line)
    ending in a colon. Without one, the instruction is empty and the whole
    text is the payload.
    """
    match = _INSTRUCTION_RE.match(text)
    if match:
        phrase = match.group(1).strip()
        words = phrase.split()
        if 0 < len(words) <= MAX_INSTRUCTION_WORDS and not phrase.startswith(("http", "{")):
            return phrase, text[match.end() :].strip("\n")
    return "", text


def extract_code(text: str) -> str:
    """Python source from an input that may wrap it in prose or a fence."""
    fences = _FENCE_RE.findall(text)
    if fences:
        python = [body for lang, body in fences if lang.lower() in ("python", "py", "")]
        chosen: str = (python or [fences[0][1]])[0]
        return chosen
    if _parses(text):
        return text
    # "analyze this code:\n<code>" or "check: def f(): ..." - drop the lead-in.
    instruction, payload = split_instruction(text)
    if instruction and _parses(payload):
        return payload
    _first, _, rest = text.partition("\n")
    if rest and _parses(rest):
        return rest
    return text


def read_python_source() -> tuple[str, ast.Module]:
    """The input as Python source (``{"code": ...}``, fenced, or bare) and its AST.

    Exits with status 2 and a message for empty input or a syntax error.
    """
    raw = read_input()
    obj = json_object(raw)
    code = obj.get("code") if obj is not None else None
    source = code if isinstance(code, str) else extract_code(raw)
    if not source.strip():
        fail("no Python source: send the code on stdin")
    try:
        return source, ast.parse(source)
    except SyntaxError as exc:
        fail(f"could not parse the input as Python: line {exc.lineno}: {exc.msg}")


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; ``|`` in cells is escaped."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def llm_available() -> bool:
    """True when the server passed LLM settings (the skill's ``metadata.llm`` is true)."""
    return bool(os.environ.get("SKILLSCALE_LLM_MODEL"))


def llm_insights(prompt: str, *, system: str | None = None, max_tokens: int = 400) -> str | None:
    """Ask the configured model; None when no LLM was given or the call failed.

    The offline result of a skill must stand on its own: a failed call costs
    the optional insights section, never the answer (the reason goes to
    stderr, which the server keeps in ``_trace``).
    """
    if not llm_available():
        return None
    try:
        from openai import OpenAI  # imported here: skills without an LLM never pay for it

        client = OpenAI(
            base_url=os.environ.get("SKILLSCALE_LLM_BASE_URL") or None,
            api_key=os.environ.get("SKILLSCALE_LLM_API_KEY") or "not-needed",
            timeout=float(os.environ.get("SKILLSCALE_LLM_TIMEOUT", "20")),
            max_retries=1,
        )
        response = client.chat.completions.create(
            model=os.environ["SKILLSCALE_LLM_MODEL"],
            messages=[
                {"role": "system", "content": system or "You are a concise expert analyst."},
                {"role": "user", "content": prompt[:12000]},
            ],
            max_tokens=max_tokens,
            temperature=0.2,
        )
        text = response.choices[0].message.content if response.choices else None
    except Exception as exc:  # any failure of an optional section is reported, not raised
        print(f"llm insights unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return text.strip() if text else None


def insights_section(prompt: str) -> list[str]:
    """Markdown lines of an ``## Insights`` section, or none without an LLM."""
    text = llm_insights(prompt)
    return ["", "## Insights", "", text] if text else []


def fail(message: str, status: int = 2) -> NoReturn:
    """Report a problem with the input on stderr and exit non-zero."""
    print(message, file=sys.stderr)
    raise SystemExit(status)
