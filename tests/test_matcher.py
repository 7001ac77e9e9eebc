"""Keyword matching against the bundled catalogue: a table of task texts."""

from __future__ import annotations

import pytest

from skill_server.matcher import KeywordMatcher, normalize, query_terms, tokenize
from skillscale.discovery import SkillDiscovery
from tests.helpers import BUNDLED_SKILLS

CATALOG = SkillDiscovery([BUNDLED_SKILLS]).scan()
TOPICS = CATALOG.topics()
DATA = "TOPIC_DATA_PROCESSING"
CODE = "TOPIC_CODE_ANALYSIS"
LONG_ARTICLE = (
    "The city council met on Tuesday to discuss the new budget. Members debated road repairs, "
    "school funding and the library. The mayor proposed a modest tax increase. "
) * 5
CSV_BODY = "name,age,score\nalice,30,88\nbob,25,92\ncarol,41,79\n"
CODE_BODY = "def f(x):\n    if x:\n        return 1\n    return 2\n"

# (topic, task text, expected skill or None)
TABLE: list[tuple[str, str, str | None]] = [
    (DATA, "summarize: " + LONG_ARTICLE, "text-summarizer"),
    (DATA, "Summarise this article for me: " + LONG_ARTICLE, "text-summarizer"),
    (DATA, "give me a tl;dr of the following text", "text-summarizer"),
    (DATA, "what are the key points of this document?", "text-summarizer"),
    (DATA, "condense these meeting notes into a short summary", "text-summarizer"),
    (DATA, "write an abstract for this essay", "text-summarizer"),
    (DATA, "can you shorten this paragraph", "text-summarizer"),
    (DATA, "I need a digest of this report", "text-summarizer"),
    (DATA, "summarization of a long transcript please", "text-summarizer"),
    (DATA, "/text-summarizer ignored by the matcher but named", "text-summarizer"),
    (DATA, "analyze this CSV:\n" + CSV_BODY, "csv-analyzer"),
    (DATA, "analyze the CSV data: a,b\n1,2", "csv-analyzer"),
    (DATA, "profile this dataset and find outliers", "csv-analyzer"),
    (DATA, "compute column statistics for this spreadsheet export", "csv-analyzer"),
    (DATA, "what is the mean and median of each column in this table", "csv-analyzer"),
    (DATA, "check this TSV file for anomalies and missing values", "csv-analyzer"),
    (DATA, "describe the tabular data below:\n" + CSV_BODY, "csv-analyzer"),
    (DATA, "use csv-analyzer on my data", "csv-analyzer"),
    (CODE, "analyze the complexity of this code:\n" + CODE_BODY, "code-complexity"),
    (CODE, "what is the cyclomatic complexity of this function", "code-complexity"),
    (CODE, "which functions are too deeply nested?", "code-complexity"),
    (CODE, "compute McCabe metrics for my python module", "code-complexity"),
    (CODE, "what should I refactor first? find the hotspots", "code-complexity"),
    (CODE, "rate the maintainability of this code", "code-complexity"),
    (CODE, "find dead code in this file:\n" + CODE_BODY, "dead-code-detector"),
    (CODE, "are there unused imports here?", "dead-code-detector"),
    (CODE, "detect unreachable code after return statements", "dead-code-detector"),
    (CODE, "list unused variables and functions that are never called", "dead-code-detector"),
    (CODE, "clean up redundant imports before my refactor", "dead-code-detector"),
    (CODE, "run dead-code-detector", "dead-code-detector"),
    # Nothing fits: an explicit no_match is the right answer.
    (DATA, "what is the weather in Paris tomorrow?", None),
    (DATA, "translate this sentence into French", None),
    (DATA, "book a flight to Berlin", None),
    (DATA, "hello", None),
    (CODE, "what is the weather in Paris tomorrow?", None),
    (CODE, "order a pizza with extra cheese", None),
    (CODE, "send an email to my manager", None),
    (CODE, "play some jazz music", None),
]


@pytest.mark.parametrize(("topic", "text", "expected"), TABLE, ids=[t[1][:40] for t in TABLE])
def test_table(topic: str, text: str, expected: str | None) -> None:
    matcher = KeywordMatcher(TOPICS[topic])
    result = matcher.match(text)
    got = result.best.skill.name if result.best else None
    assert got == expected, [(c.skill.name, c.score) for c in result.ranked]


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 30
    assert sum(1 for *_, e in TABLE if e is None) >= 5


def test_whole_catalogue_routes_across_topics() -> None:
    matcher = KeywordMatcher(CATALOG.skills.values())
    assert matcher.match("summarize: " + LONG_ARTICLE).best.skill.name == "text-summarizer"  # type: ignore[union-attr]
    assert matcher.match("find unused imports").best.skill.name == "dead-code-detector"  # type: ignore[union-attr]


def test_single_skill_catalogue_still_needs_a_real_match() -> None:
    matcher = KeywordMatcher([CATALOG.skills["csv-analyzer"]])
    assert matcher.match("analyze this csv").best is not None
    assert matcher.match("tell me a joke").best is None


def test_empty_catalogue_matches_nothing() -> None:
    assert KeywordMatcher([]).match("summarize this").best is None


def test_ranking_is_deterministic_and_sorted() -> None:
    matcher = KeywordMatcher(CATALOG.skills.values())
    ranked = matcher.rank("analyze code and data")
    assert ranked == matcher.rank("analyze code and data")
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)


def test_normalize_folds_word_families() -> None:
    assert normalize("summary") == normalize("summarize") == normalize("summarise")
    assert normalize("analysis") == normalize("analyze") == normalize("analyse")
    assert tokenize("The, of and 123") == []


def test_payload_words_weigh_less_than_the_instruction() -> None:
    terms = query_terms("summarize: csv csv csv")
    assert terms[normalize("summarize")] == 1.0
    assert terms[normalize("csv")] < 1.0
