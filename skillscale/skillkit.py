"""Helpers for skill scripts (``scripts/run.py``) running under a skill server.

A skill receives its input on stdin (and, for small inputs, in the
``SKILLSCALE_INTENT`` environment variable) and writes its answer, usually
markdown, to stdout; exit status 0 means success.

Agents send a skill's data in many shapes: bare, after a request on the same
line (``"check this: def f(): ..."``) or on the lines below, before a request
(``"<table> what stands out above?"``), inside a markdown fence with or without
a language tag, or as JSON ``{"data": ...}``. :func:`find_data` finds it in
all of them with one rule: among the candidate pieces of the input, the
largest one that the skill's parser accepts wins. Parsers for the common
kinds are here: :func:`parse_python`, :func:`parse_table`,
:func:`parse_prose`.

When the input is wrong (no data, data that does not parse), a skill calls
:func:`input_error`: it writes one structured line to stderr and exits with
status 65 (``EX_DATAERR`` from ``sysexits.h``), which the server turns into a
``bad_request`` reply carrying the skill's message and hint. Any other
non-zero exit is an execution failure (``exec_failed``).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import sys
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

T = TypeVar("T")

EX_DATAERR = 65
"""Exit status that means "the input is wrong" (``sysexits.h``): the reply is ``bad_request``."""
INPUT_ERROR_PREFIX = "skillscale-input-error: "
"""Start of the structured stderr line that carries an input error's message and hint."""

DATA_KEYS = ("data", "input", "text", "content", "csv", "table", "code", "source")
"""Keys of a JSON object input whose value is the data, in order of preference."""

MAX_LEAD_LINES = 8
"""Request lines that may precede the data."""
MAX_TRAIL_LINES = 4
"""Request lines that may follow the data."""
MIN_DATA_WORDS = 2
"""Prose after (or before) a request counts as the request's data from this many words."""
MAX_REQUEST_WORDS = 30
"""A request longer than this is taken for data (prose), not a request."""

_FENCE_RE = re.compile(
    r"^[ \t]*(```|~~~)[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S
)
_INSTRUCTION_RE = re.compile(r"\A\s*([^\n:]{1,120}?):[ \t]*(?:\n|(?=\S))")
# Where data may start on the request's own line: after "request: ", "request? ",
# "request. ", "request -- " and similar.
_SAME_LINE_SPLIT_RE = re.compile(r"(?:[:?!.;]|\s--|\s\u2014|\s\u2013)[ \t]+(?=\S)")
_CODE_CUE_RE = re.compile(
    r"^[ \t]*(?:def|class|import|from|return|if|elif|else|for|while|with|try|except|async|"
    r"raise|yield|lambda|assert|print|@)\b"
    r"|^[ \t]*[A-Za-z_][\w.]*(?:\[[^\]]*\])?[ \t]*[-+*/|&]?=[^=]"
    r"|^[ \t]*[A-Za-z_][\w.]*\(",
    re.M,
)
# How a piece of Python can begin; a piece that begins with prose is not tried.
_CODE_START_RE = re.compile(
    r"\s*(?:#|@|\"\"\"|'''|(?:def|class|import|from|return|if|for|while|with|try|async|"
    r"raise|assert|print|global|nonlocal|del|pass|yield|lambda|match)\b"
    r"|[A-Za-z_][\w.]*[ \t]*(?:\(|\[|[-+*/|&]?=|:|,))"
)
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?:])\s+(?=\S)")
MAX_INSTRUCTION_WORDS = 12
DELIMITERS = (",", "\t", ";", "|")

# First words of a request to a skill (after fillers such as "please", "can you").
# Summarisation verbs make a request on their own; other imperatives need a
# pointer to the data ("this", "the following", "below", ...); questions need "?".
_SUMMARY_VERBS = frozenset(
    "summarize summarise summarization summary sum tldr tl;dr tl recap condense shorten "
    "abridge distil distill digest boil precis".split()
)
_IMPERATIVES = frozenset(
    "give tell make write create produce provide pull extract reduce compress outline "
    "highlight skim list find show analyse analyze describe explain read check here "
    "heres here's generate prepare draft rewrite paraphrase get identify detect count "
    "measure compute calculate profile spot flag rate grade review assess evaluate "
    "look break help i".split()
)
_QUESTION_WORDS = frozenset(
    "what whats what's which how why who where when is are does do did can could would "
    "will should any anything".split()
)
_FILLERS = frozenset("please pls plz kindly ok okay hi hey hello so now then just".split())
_POINTERS = frozenset(
    "this these that those following below above attached it me my our here text "
    "article passage document".split()
)


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
    except (ValueError, RecursionError):
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


# -- finding the data -----------------------------------------------------


@dataclass(frozen=True)
class Found(Generic[T]):
    """The piece of an input that holds the data, and what its parser made of it."""

    text: str
    value: T
    start: int
    """Offset of the piece in the searched text (-1 when it came from a JSON field)."""
    end: int


def find_data(
    text: str, parse: Callable[[str], T | None], *, keys: Sequence[str] = DATA_KEYS
) -> Found[T] | None:
    """The largest piece of ``text`` that ``parse`` accepts, or None.

    ``parse`` returns None for a piece it cannot use. Candidates are: the
    value under one of ``keys`` when the input is a JSON object (searched
    in turn, so ``{"data": "check this:\\n<csv>"}`` works), the whole input,
    the body of each fenced block, and the input without up to
    ``MAX_LEAD_LINES`` leading request lines (or the request part of the
    first line) and without up to ``MAX_TRAIL_LINES`` trailing ones.
    """
    obj = json_object(text)
    if obj is not None:
        for key in keys:
            value = obj.get(key)
            if value is None:
                continue
            if isinstance(value, (str, dict)):
                # A string may itself wrap the data ("check this:\\n<csv>"); an
                # object may name it again ({"data": {"code": "..."}}).
                inner = value if isinstance(value, str) else json.dumps(value)
                found = find_data(inner, parse, keys=keys if isinstance(value, dict) else ())
                if found is not None:
                    return Found(found.text, found.value, -1, -1)
            else:
                dumped = json.dumps(value, ensure_ascii=False)
                parsed = parse(dumped)
                if parsed is not None:
                    return Found(dumped, parsed, -1, -1)
    spans = _candidate_spans(text)
    if parse is parse_prose:
        return _find_prose(text, spans)  # type: ignore[return-value]
    return _largest(text, spans, parse)


def _find_prose(text: str, spans: list[tuple[int, int]]) -> Found[str] | None:
    # A fence body is data because the caller fenced it, even when it opens like
    # a request ("To all staff: ..."), which parse_prose would take for one.
    bodies = [
        Found(m.group(3).strip(), m.group(3).strip(), m.start(3), m.end(3))
        for m in _FENCE_RE.finditer(text)
        if len(_WORD_RE.findall(m.group(3))) >= MIN_DATA_WORDS
    ]
    if bodies:
        return max(bodies, key=lambda f: len(f.text))
    return _largest(text, spans, parse_prose)


def _largest(
    text: str, spans: list[tuple[int, int]], parse: Callable[[str], T | None]
) -> Found[T] | None:
    tried: set[str] = set()
    for start, end in spans:
        piece = text[start:end]
        if piece in tried:
            continue
        tried.add(piece)
        parsed = parse(piece)
        if parsed is not None:
            return Found(piece, parsed, start, end)
    return None


def _candidate_spans(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` that may hold the data, largest first, trimmed of blank edges."""
    starts = {0}
    first_end = text.find("\n")
    first_end = len(text) if first_end == -1 else first_end
    for match in _SAME_LINE_SPLIT_RE.finditer(text, 0, min(first_end, 400)):
        starts.add(match.end())
    line_starts = [m.end() for m in re.finditer("\n", text)]
    starts.update(line_starts[:MAX_LEAD_LINES])
    ends = {len(text)}
    ends.update(pos - 1 for pos in line_starts[-MAX_TRAIL_LINES:])
    spans: set[tuple[int, int]] = set()
    for start in starts:
        for end in ends:
            if end > start:
                spans.add(_trim(text, start, end))
    for match in _FENCE_RE.finditer(text):
        # A fence body is kept from its first line, blank or not, so that line
        # numbers are those the caller sees inside the fence.
        start, end = match.start(3), match.end(3)
        while end > start and text[end - 1].isspace():
            end -= 1
        spans.add((start, end))
    return sorted((s for s in spans if s[1] > s[0]), key=lambda s: (s[0] - s[1], s[0]))


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    # Drop blank lines at both edges, but keep the first line's indentation.
    while end > start and text[end - 1].isspace():
        end -= 1
    lead = start
    while lead < end and text[lead].isspace():
        if text[lead] == "\n":
            start = lead + 1
        lead += 1
    return start, end


def parse_python(piece: str) -> ast.Module | None:
    """``piece`` as a Python module, if it is Python code (not a lone word or number).

    A uniformly indented piece (pasted from inside a class) is dedented
    first; line numbers stay those of the piece.
    """
    if not _CODE_START_RE.match(piece) or not _CODE_CUE_RE.search(piece):
        return None
    for source in (piece, textwrap.dedent(piece)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escapes in the user's code
                tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if any(not _trivial(stmt) for stmt in tree.body):
            return tree
        return None
    return None


def _trivial(stmt: ast.stmt) -> bool:
    # "tldr", "a, b" or "x+1" parse as Python but are words or data, not code.
    return isinstance(stmt, ast.Expr) and not any(
        isinstance(node, (ast.Call, ast.Lambda, ast.Await, ast.Yield)) for node in ast.walk(stmt)
    )


@dataclass(frozen=True)
class Table:
    """Rows of a delimited table (the header, if any, is the first row)."""

    rows: list[list[str]]
    delimiter: str


def parse_table(piece: str) -> Table | None:
    """``piece`` as a CSV/TSV (or markdown, or JSON array) table, if it is one.

    A table has at least two rows; its first row and most rows have the
    table's width (two or more fields; ragged rows in between are kept for
    the skill to report), its last row has at least two fields, and its cells
    are short. A one-column table needs three or more single-token rows.
    """
    stripped = piece.strip()
    if not stripped or "```" in stripped or "~~~" in stripped:
        return None
    if stripped.startswith("["):
        return _json_table(stripped)
    lines = [ln for ln in stripped.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    if all(ln.strip().startswith("|") and ln.strip().endswith("|") for ln in lines):
        return _markdown_table(lines)
    best: tuple[tuple[int, int], Table] | None = None
    for delimiter in DELIMITERS:
        if delimiter not in lines[0]:
            continue
        rows = [
            row
            for row in csv.reader(io.StringIO(stripped), delimiter=delimiter)
            if any(cell.strip() for cell in row)
        ]
        if len(rows) < 2:
            continue
        width, count = Counter(len(r) for r in rows).most_common(1)[0]
        if width < 2 or len(rows[0]) != width or len(rows[-1]) < 2 or _prose_row(rows[0]):
            continue
        if count < 0.6 * len(rows) or not _short_cells(rows):
            continue
        rank = (count, width)
        if best is None or rank > best[0]:
            best = (rank, Table(rows, delimiter))
    if best is not None:
        return best[1]
    tokens = [ln.strip() for ln in lines]
    if len(tokens) >= 3 and all(
        len(t.split()) == 1 and len(t) <= 40 and not any(d in t for d in DELIMITERS) for t in tokens
    ):
        return Table([[t] for t in tokens], ",")
    return None


def _prose_row(row: list[str]) -> bool:
    # "check this table: a,b" read as a row: its first cell is a request, not a header.
    return any(len(cell.split()) > 5 or re.search(r"\w[:?] +\S", cell) for cell in row)


def _short_cells(rows: list[list[str]]) -> bool:
    # Prose with commas splits into long "cells"; real tables have short ones.
    cells = [len(cell.split()) for row in rows for cell in row]
    return max(cells) <= 12 and sum(cells) / len(cells) <= 4


def _markdown_table(lines: list[str]) -> Table | None:
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        if all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
            continue  # the |---|---| separator
        rows.append(cells)
    width = len(rows[0]) if rows else 0
    if len(rows) < 2 or width < 2:
        return None
    return Table(rows, "|")


def _json_table(text: str) -> Table | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list) or len(value) < 1:
        return None
    if all(isinstance(row, dict) for row in value):
        header: list[str] = []
        for row in value:
            header += [str(k) for k in row if str(k) not in header]
        body = [[_cell(row.get(k)) for k in header] for row in value]
        return Table([header, *body], ",") if header else None
    if all(isinstance(row, list) for row in value) and len(value) >= 2:
        return Table([[_cell(c) for c in row] for row in value], ",")
    return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def parse_prose(piece: str) -> str | None:
    """``piece`` as text to work on, if it does not start or end with a request.

    So that ``"Summarise this in two lines. <text>"`` and ``"<text> Sum up
    the above."`` yield ``<text>`` and a bare request yields nothing.
    """
    stripped = piece.strip()
    if not _WORD_RE.search(stripped) or "```" in stripped:
        return None
    first = _SENTENCE_END_RE.split(stripped.split("\n", 1)[0], maxsplit=1)[0]
    if is_request(first):
        return None
    last = re.split(r"\n\s*\n|\n", stripped)[-1]
    if last.strip() != stripped and is_request(last):
        return None
    return stripped


def is_request(sentence: str) -> bool:
    """True when ``sentence`` reads as a request to a skill rather than as data."""
    text = sentence.strip()
    words = [w.lower().strip("\"'`*,") for w in text.split()]
    words = [w for w in words if w]
    if not words or len(words) > MAX_REQUEST_WORDS:
        return False
    while words and words[0] in _FILLERS:
        words = words[1:]
    if not words:
        return True
    if text.endswith(":"):
        return True
    first = words[0].rstrip(".?!:")
    if first in _SUMMARY_VERBS or first.startswith(("summar", "tl;dr", "tldr")):
        return True
    if first in _QUESTION_WORDS:
        return text.endswith("?")
    if first in ("can", "could", "would") and len(words) > 1 and words[1] == "you":
        return True
    return first in _IMPERATIVES and (
        len(words) <= 3 or any(w.strip(".?!:") in _POINTERS for w in words)
    )


# -- reading each kind of input ------------------------------------------


def read_python_source(raw: str | None = None) -> tuple[str, ast.Module]:
    """The Python code in the input (any shape :func:`find_data` knows) and its AST.

    Calls :func:`input_error` when there is no code, or when the code does
    not parse (naming the line).
    """
    raw = read_input() if raw is None else raw
    found = find_data(raw, parse_python)
    if found is not None:
        return found.text, found.value
    hint = (
        "send Python source after the request (same line after a colon, or the lines "
        'below), in a ``` fence, or as {"data": "<code>"}'
    )
    suspect = _most_code_like(raw)
    if suspect is None:
        input_error(
            "no Python source found in the input; send the code after the request or in `data`",
            hint,
        )
    try:
        ast.parse(suspect)
    except SyntaxError as exc:
        input_error(f"could not parse the input as Python: line {exc.lineno}: {exc.msg}", hint)
    except (ValueError, RecursionError) as exc:
        input_error(f"could not parse the input as Python: {exc}", hint)
    input_error("the input holds no Python statements to analyse", hint)


def _most_code_like(raw: str) -> str | None:
    # For the error message: the piece the caller most likely meant as code.
    obj = json_object(raw)
    if obj is not None:
        values = [obj[k] for k in DATA_KEYS if isinstance(obj.get(k), str)]
        raw = values[0] if values else raw
    fences = _FENCE_RE.findall(raw)
    if fences:
        return str(fences[0][2])
    if not _CODE_CUE_RE.search(raw):
        return None
    for start, end in _candidate_spans(raw):
        piece = raw[start:end]
        first = piece.split("\n", 1)[0]
        if _CODE_CUE_RE.match(first):
            return piece
    return raw


def read_table(raw: str | None = None) -> Table:
    """The table in the input (any shape :func:`find_data` knows).

    Calls :func:`input_error` when there is none.
    """
    raw = read_input() if raw is None else raw
    found = find_data(raw, parse_table)
    if found is None:
        input_error(
            "no CSV table found in the input; send the table after the request or in `data`",
            "a header row then one row per line, fields separated by , ; | or a tab, e.g. "
            "'find duplicates:\\nid,name\\n1,ann\\n2,bob'; or {\"data\": [[...], ...]}",
        )
    return found.value


def read_prose(raw: str | None = None, what: str = "text") -> str:
    """The text to work on in the input, without a leading or trailing request.

    Calls :func:`input_error` when the input is only a request (``what``
    names the missing thing in the message).
    """
    raw = read_input() if raw is None else raw
    found = find_data(raw, parse_prose)
    if found is None:
        input_error(
            f"no {what} found in the input; send the text after the request or in `data`",
            "e.g. 'summarize: <text>', the text on the lines below the request, or "
            '{"data": "<text>"}',
        )
    return found.value


# -- how the matcher sees a request --------------------------------------


@dataclass(frozen=True)
class RequestParts:
    """A task text divided into what is asked and the data it carries."""

    instruction: str
    data: str
    kind: str | None
    """``python``, ``table``, ``text`` or None (no data found)."""


def split_request(text: str, limit: int = 4000) -> RequestParts:
    """Divide ``text`` into the request and its data, and say what kind of data it is.

    Code and tables are found by their parsers (the largest piece wins); for
    prose, a request sentence before or after the text is the instruction.
    Only the first ``limit`` characters are examined.
    """
    if len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        text = text[: cut if cut > limit // 2 else limit]
    spans = _candidate_spans(text)  # computed once for the three parsers
    multiline = "\n" in text.strip()
    for kind, parser, worth_trying in (
        ("python", parse_python, True),
        ("table", parse_table, multiline and any(d in text for d in DELIMITERS)),
    ):
        found: Found[Any] | None = _largest(text, spans, parser) if worth_trying else None
        if found is not None:
            rest = text[: found.start] + "\n" + text[found.end :]
            rest = re.sub(r"^[ \t]*(```|~~~).*$", "", rest, flags=re.M)
            return RequestParts(" ".join(rest.split()), found.text, kind)
    prose = _find_prose(text, spans)
    if prose is not None and (prose.start > 0 or prose.end < len(text)):
        rest = text[: prose.start] + "\n" + text[prose.end :]
        rest = re.sub(r"^[ \t]*(```|~~~).*$", "", rest, flags=re.M)
        if len(_WORD_RE.findall(prose.text)) >= MIN_DATA_WORDS:
            return RequestParts(" ".join(rest.split()), prose.text, "text")
    words = _WORD_RE.findall(text)
    sentences = _SENTENCE_END_RE.split(text.strip())
    if len(words) >= 40 and len(sentences) >= 3 and not is_request(sentences[0]):
        return RequestParts("", text, "text")  # only the data: a text with no request
    return RequestParts(text, "", None)


# -- saying that the input is wrong ----------------------------------------


def input_error(message: str, hint: str | None = None) -> NoReturn:
    """Reject the input: the server replies ``bad_request`` with ``message`` (and ``hint``).

    Writes one line ``skillscale-input-error: {"message": ..., "hint": ...}``
    to stderr and exits with status 65 (``EX_DATAERR``). Use it for the
    caller's mistakes only (no data, data that does not parse); a bug or a
    failing dependency should raise or exit with another status, which the
    server reports as ``exec_failed``.
    """
    record = {"message": message} if hint is None else {"message": message, "hint": hint}
    print(INPUT_ERROR_PREFIX + json.dumps(record, ensure_ascii=False), file=sys.stderr)
    raise SystemExit(EX_DATAERR)


def parse_input_error(stderr: str) -> tuple[str, str | None] | None:
    """The (message, hint) of the last structured input-error line in ``stderr``."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(INPUT_ERROR_PREFIX):
            try:
                record = json.loads(line[len(INPUT_ERROR_PREFIX) :])
            except ValueError:
                return line[len(INPUT_ERROR_PREFIX) :].strip() or "the input is not valid", None
            if isinstance(record, dict) and isinstance(record.get("message"), str):
                hint = record.get("hint")
                return record["message"], hint if isinstance(hint, str) else None
    return None


def fail(message: str, status: int = 2) -> NoReturn:
    """Report a failure on stderr and exit non-zero (``exec_failed``).

    For a problem with the caller's input use :func:`input_error` instead.
    """
    print(message, file=sys.stderr)
    raise SystemExit(status)


def extract_code(text: str) -> str:
    """Python source from an input that may wrap it in prose or a fence (or the input)."""
    found = find_data(text, parse_python)
    return found.text if found is not None else text


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
