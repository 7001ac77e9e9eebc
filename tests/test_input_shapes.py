"""Each bundled skill finds its data in the shapes agents send, or says the input is wrong.

A table per skill: the input as an agent sends it, and a marker the answer
must contain (or, for ``None``, the skill must reject the input with exit
status 65 and a structured message). The skills run as the server runs them:
``scripts/run.py`` with the input on stdin.
"""

from __future__ import annotations

import io
import json
import runpy
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import pytest

from skillscale.skillkit import (
    EX_DATAERR,
    find_data,
    input_error,
    is_request,
    parse_input_error,
    parse_prose,
    parse_python,
    parse_table,
    split_request,
)
from tests.helpers import BUNDLED_SKILLS

CODE = "def classify(score, strict=False):\n    if score > 90:\n        return 'A'\n    return 'F'"
DEAD = (
    "import os\nimport json\n\n\ndef main():\n    unused = 1\n    return json.dumps({})\n"
    "    print('x')"
)
CSV = "name,age,city\nAlice,34,Leeds\nBob,29,Boston\nCarla,41,Leeds\nBob,29,Boston"
TEXT = (
    "The city council approved a new cycling plan on Monday after months of debate. "
    "The plan adds forty kilometres of protected lanes over the next five years. "
    "Supporters say it will cut traffic and improve air quality in the centre. "
    "Shop owners worry that losing parking spaces will drive customers away. "
    "The council promised to review the scheme after two years."
)


@dataclass(frozen=True)
class Run:
    """What a skill run printed and how it exited."""

    returncode: int
    stdout: str
    stderr: str


def run_skill(path: str, stdin: str) -> Run:
    """Run ``scripts/run.py`` in this process (a fresh interpreter per case would cost
    most of a second here); ``test_a_real_process_exits_65`` checks the real exit."""
    script = BUNDLED_SKILLS / path / "scripts" / "run.py"
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = saved
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _no_llm_no_env_input(monkeypatch: pytest.MonkeyPatch) -> None:
    # The offline answer only, and no fallback to an intent in the environment.
    for name in ("SKILLSCALE_LLM_MODEL", "SKILLSCALE_INTENT"):
        monkeypatch.delenv(name, raising=False)


Case = tuple[str, str, "str | None"]

COMPLEXITY: list[Case] = [
    ("bare code", CODE, "`classify`"),
    ("fence with language", f"```python\n{CODE}\n```", "`classify`"),
    ("fence without language", f"```\n{CODE}\n```", "`classify`"),
    ("fence between prose", f"Rate this:\n```py\n{CODE}\n```\nThanks!", "`classify`"),
    ("tilde fence", f"~~~\n{CODE}\n~~~", "`classify`"),
    ("unclosed fence", f"```python\n{CODE}", "`classify`"),
    ("after a colon", "measure the complexity: def f(x): return x+1", "`f`"),
    ("issue 11: after a question", "how complex is this? def f(x): return x+1", "`f`"),
    ("on the lines below", f"how complex is this?\n{CODE}", "`classify`"),
    ("several request lines", f"Hi!\nPlease grade this.\nCheers\n\n{CODE}", "`classify`"),
    ("request after the code", f"{CODE}\n\nHow hard is that to maintain?", "`classify`"),
    ("JSON data", json.dumps({"data": CODE}), "`classify`"),
    ("JSON code", json.dumps({"code": CODE}), "`classify`"),
    ("JSON data with a lead-in", json.dumps({"data": f"check:\n{CODE}"}), "`classify`"),
    ("indented (from a class)", "    def m(self, a):\n        return a or 1\n", "`m`"),
    ("CRLF line endings", f"complexity?\r\n{CODE}".replace("\n", "\r\n"), "`classify`"),
    (
        "largest of two fences",
        f"```\nnot code at all\n```\nand\n```python\n{CODE}\n```",
        "`classify`",
    ),
    ("no code at all", "how complex is my code?", None),
    ("code that does not parse", "def (:", None),
    ("empty JSON data", json.dumps({"data": ""}), None),
]

DEAD_CODE: list[Case] = [
    ("bare code", DEAD, "unreachable code"),
    ("fence with language", f"```python\n{DEAD}\n```", "unreachable code"),
    ("fence without language", f"```\n{DEAD}\n```", "unreachable code"),
    (
        "issue 11: after a colon",
        "detect unreachable statements in this python code: def h():\n    y = 3\n"
        "    return 0\n    z = 1",
        "| 4 | unreachable code |",
    ),
    ("after a question", "Which imports can I drop? import os, sys\nprint(sys.argv)", "`os`"),
    ("on the lines below", f"find dead code\n{DEAD}", "`unused`"),
    ("request after the code", f"{DEAD}\n\nAnything unused above?", "`os`"),
    ("fence then request", f"```\n{DEAD}\n```\nIs any of this dead?", "unreachable code"),
    ("JSON data", json.dumps({"data": DEAD}), "`os`"),
    ("JSON code", json.dumps({"code": DEAD}), "`os`"),
    ("JSON data with a lead-in", json.dumps({"data": f"find dead code in:\n{DEAD}"}), "`os`"),
    ("JSON data as an object", json.dumps({"data": {"code": DEAD}}), "`os`"),
    ("indented", "    def f():\n        return 1\n        x = 2\n", "unreachable code"),
    ("CRLF line endings", DEAD.replace("\n", "\r\n"), "`os`"),
    ("tilde fence with a lead-in", f"prune this:\n~~~py\n{DEAD}\n~~~", "`os`"),
    ("no code at all", "Find dead code in my project.", None),
    ("code that does not parse", "find dead code: def x(:\n  pass", None),
    ("only a fence marker", "```python\n```", None),
]

CSV_CASES: list[Case] = [
    ("bare with header", CSV, "**4 rows x 3 columns**"),
    ("bare without header", "north,1200,10\nsouth,1350,12\neast,980,11", "header not detected"),
    ("TSV", CSV.replace(",", "\t"), "delimiter `\\t`"),
    ("semicolons", CSV.replace(",", ";"), "delimiter `;`"),
    ("after a request line", f"analyze this CSV:\n{CSV}", "**4 rows x 3 columns**"),
    ("TSV after prose", "Profile this export:\n" + CSV.replace(",", "\t"), "delimiter `\\t`"),
    (
        "after prose, no header",
        "Any outliers here?\nnorth,1200,10\nsouth,1350,12\neast,980,11\nwest,99999,12",
        "header not detected",
    ),
    ("after a colon on the line", "Check this table: x,y\n1,2\n3,4\n5,6", "**3 rows x 2 columns**"),
    (
        "request with commas",
        f"Give me the mean, median and max of each column.\n{CSV}",
        "**4 rows x 3 columns**",
    ),
    ("request after the table", f"{CSV}\n\nWhat stands out above?", "duplicate row(s)"),
    ("fence with language", f"Describe this\n```csv\n{CSV}\n```", "**4 rows x 3 columns**"),
    ("fence without language", f"```\n{CSV}\n```", "**4 rows x 3 columns**"),
    ("JSON data", json.dumps({"data": CSV}), "**4 rows x 3 columns**"),
    ("JSON csv", json.dumps({"csv": CSV}), "**4 rows x 3 columns**"),
    ("JSON rows", json.dumps({"data": [["a", "b"], [1, 2], [3, 4]]}), "**2 rows x 2 columns**"),
    (
        "JSON records",
        json.dumps({"data": [{"a": 1, "b": 2}, {"a": 3, "b": None}]}),
        "**b**: 1 missing value(s)",
    ),
    ("markdown table", "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |", "**2 rows x 2 columns**"),
    ("CRLF line endings", CSV.replace("\n", "\r\n"), "**4 rows x 3 columns**"),
    ("quoted commas", 'name,note\n"Smith, J",ok\n"Doe, A",late', "**2 rows x 2 columns**"),
    ("issue 11: no table", "Find duplicate rows in the CSV below.", None),
    ("words only", "just words", None),
    ("empty JSON data", json.dumps({"data": ""}), None),
]

SUMMARY_CASES: list[Case] = [
    ("bare text", TEXT, "5 sentences"),
    ("after a colon", "summarize: " + TEXT, "5 sentences"),
    ("same line, with a length", "Summarise this in two sentences. " + TEXT, "2 of 5 sentences"),
    ("request line above", "Can you condense the following?\n" + TEXT, "5 sentences"),
    ("request after the text", TEXT + "\n\nSummarize the above.", "5 sentences"),
    ("TL;DR lead-in", "TL;DR:\n" + TEXT, "5 sentences"),
    ("question above", "What does this say?\n\n" + TEXT, "5 sentences"),
    ("dash separator", "Sum this up -- " + TEXT, "5 sentences"),
    ("fence", "Summarize:\n```\n" + TEXT + "\n```", "5 sentences"),
    ("fence with language", "Summarise this:\n```text\n" + TEXT + "\n```", "5 sentences"),
    (
        "fenced text opening like a request",
        "```\nTo all staff: " + TEXT + "\n```\nWhat's the upshot?",
        "To all staff: The city council",
    ),
    ("JSON data", json.dumps({"data": TEXT}), "5 sentences"),
    ("JSON text and length", json.dumps({"text": TEXT, "sentences": 1}), "1 of 5 sentences"),
    ("JSON data with a lead-in", json.dumps({"data": "tl;dr: " + TEXT}), "5 sentences"),
    ("greeting paragraph", "Hi, please summarise the text below, thanks!\n\n" + TEXT, "5 sent"),
    ("CRLF line endings", ("Summarize:\n" + TEXT).replace("\n", "\r\n"), "5 sentences"),
    ("one line", "The meeting moved to Friday because the room was booked.", "1 sentences"),
    ("only a request", "Summarize this article.", None),
    ("blank JSON data", json.dumps({"data": "   "}), None),
    ("no words", "1234 5678", None),
]

SKILLS = {
    "code-analysis/code-complexity": COMPLEXITY,
    "code-analysis/dead-code-detector": DEAD_CODE,
    "data-processing/csv-analyzer": CSV_CASES,
    "data-processing/text-summarizer": SUMMARY_CASES,
}
TABLE = [(path, *case) for path, cases in SKILLS.items() for case in cases]


def test_every_skill_has_fifteen_shapes_including_failures() -> None:
    for cases in SKILLS.values():
        assert len([c for c in cases if c[2] is not None]) >= 15
        assert any(c[2] is None for c in cases)


@pytest.mark.parametrize(
    ("path", "shape", "stdin", "marker"),
    TABLE,
    ids=[f"{p.split('/')[1]}:{shape}" for p, shape, *_ in TABLE],
)
def test_input_shape(path: str, shape: str, stdin: str, marker: str | None) -> None:
    result = run_skill(path, stdin)
    if marker is None:
        assert result.returncode == EX_DATAERR, (result.returncode, result.stderr)
        said = parse_input_error(result.stderr)
        assert said is not None and said[0] and said[1], result.stderr
        assert result.stdout == ""
    else:
        assert result.returncode == 0, result.stderr
        assert marker in result.stdout, result.stdout


def test_a_real_process_exits_65() -> None:
    script = BUNDLED_SKILLS / "data-processing" / "csv-analyzer" / "scripts" / "run.py"
    result = subprocess.run(
        [sys.executable, str(script)],
        input="Find duplicate rows in the CSV below.",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == EX_DATAERR and parse_input_error(result.stderr) is not None


def test_issue_11_table_error_message() -> None:
    result = run_skill("data-processing/csv-analyzer", "Find duplicate rows in the CSV below.")
    message, hint = parse_input_error(result.stderr) or ("", None)
    assert message == (
        "no CSV table found in the input; send the table after the request or in `data`"
    )
    assert hint and "header row" in hint


def test_summary_leaves_the_request_out() -> None:
    result = run_skill("data-processing/text-summarizer", "Summarise this, please: " + TEXT)
    summary = result.stdout.split("## Statistics")[0]
    assert "Summarise" not in summary and "council" in summary


# -- the helpers themselves ----------------------------------------------------


def test_largest_piece_that_parses_wins() -> None:
    text = "fix this: x = 1\nand this:\n```python\ny = 2\nw = 3\n```"
    found = find_data("look at this: x = 1\ny = 2\nz = 3", parse_python)
    assert found is not None and found.text == "x = 1\ny = 2\nz = 3"
    fenced = find_data(text, parse_python)
    assert fenced is not None and fenced.text == "y = 2\nw = 3"  # the whole does not parse


def test_words_are_not_code_and_prose_is_not_a_table() -> None:
    assert parse_python("tldr") is None and parse_python("a, b") is None
    assert parse_python("print('x')") is not None
    assert parse_table("Give me the mean, median and max, please.\nThanks, bye") is None
    assert parse_table("a\nb\nc") is not None  # a one-column list
    assert parse_prose("Summarize this.") is None


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Summarize this article.", True),
        ("tl;dr", True),
        ("What does this passage conclude?", True),
        ("Please give me the key points of this:", True),
        ("The council met on Monday.", False),
        ("What a day it was.", False),
        ("Make no mistake about the plan and its costs to the town in the long run.", False),
    ],
)
def test_is_request(sentence: str, expected: bool) -> None:
    assert is_request(sentence) is expected


def test_split_request_kinds() -> None:
    assert split_request("find outliers\na,b\n1,2\n3,4").kind == "table"
    assert split_request("dead code? def f(): return 1").kind == "python"
    parts = split_request("Summarize: " + TEXT)
    assert parts.kind == "text" and parts.instruction == "Summarize:"
    assert split_request("book a flight").kind is None


def test_input_error_writes_one_structured_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        input_error("no table", "send a table")
    assert exc.value.code == EX_DATAERR
    assert parse_input_error("noise\n" + capsys.readouterr().err) == ("no table", "send a table")
    assert parse_input_error("Traceback ...\nValueError: x") is None
