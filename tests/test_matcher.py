"""Keyword matching against the bundled catalogue: a table of task texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillscale.core.discovery import SkillDiscovery
from skillscale.core.matching import (
    SHAPE_WEIGHT,
    KeywordMatcher,
    keyword_terms,
    normalize,
    query_terms,
    read_query,
    tokenize,
)
from skillscale.core.skill_format import load_skill
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


def test_only_the_request_is_scored_and_the_data_adds_its_shape() -> None:
    terms = query_terms("summarize: " + LONG_ARTICLE)
    assert terms[normalize("summarize")] == 1.0
    assert normalize("council") not in terms  # words of the data are not the request
    assert terms[normalize("text")] == SHAPE_WEIGHT
    table = query_terms("csv\n" + CSV_BODY)
    assert table[normalize("csv")] == 1.0 and table[normalize("table")] == SHAPE_WEIGHT
    assert normalize("alice") not in table
    code = read_query("what is wrong here?\n" + CODE_BODY)
    assert code.shape == "python" and code.instruction == "what is wrong here?"


# The tasks issue 11 quotes as refused by the old matcher (none is in the benchmark).
ISSUE_11 = [
    (DATA, "Distil the gist of this memo", "text-summarizer"),
    (DATA, "What does this passage conclude?", "text-summarizer"),
    (CODE, "Quantify the branching in this routine", "code-complexity"),
    (CODE, "Count the independent paths through this code", "code-complexity"),
    (CODE, "Are there helper functions nobody calls?", "dead-code-detector"),
    (CODE, "Flag code left behind after a refactor", "dead-code-detector"),
    (DATA, "What is the spread of the 'age' column?", "csv-analyzer"),
    (DATA, "Tally the records per category", "csv-analyzer"),
    (DATA, "book me a flight", None),
]


@pytest.mark.parametrize(("topic", "text", "expected"), ISSUE_11, ids=[t[1] for t in ISSUE_11])
def test_issue_11_examples(topic: str, text: str, expected: str | None) -> None:
    result = KeywordMatcher(TOPICS[topic]).match(text)
    assert (result.best.skill.name if result.best else None) == expected, result.explain()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("summarise", "summarize"),
        ("colour", "color"),
        ("programme", "program"),
        ("catalogue", "catalog"),
        ("centre", "center"),
        ("distil", "distill"),
        ("analyse", "analyze"),
    ],
)
def test_british_and_american_spellings_meet(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)


def test_accents_and_tldr_are_folded() -> None:
    assert tokenize("Précis") == tokenize("precis")
    assert tokenize("TL;DR") == tokenize("tldr") == tokenize("tl; dr")


def test_keyword_phrases_match_as_phrases() -> None:
    terms, known = keyword_terms("reading time, gist, key points")
    assert terms == [f"{normalize('reading')} {normalize('time')}", "gist", "key point"]
    assert normalize("time") in known  # known, so not "unknown", but not scored alone
    # "time" alone does not reach the summarizer through "reading time".
    assert KeywordMatcher(TOPICS[DATA]).match("What time is it in Tokyo?").best is None
    assert KeywordMatcher(TOPICS[DATA]).match("what's the reading time?").best is not None


def test_quoted_names_are_not_vocabulary() -> None:
    result = KeywordMatcher(TOPICS[DATA]).match("What is the mean of the 'flight' column?")
    assert result.best is not None and result.unknown == ()


def test_unknown_words_weigh_against_object_words() -> None:
    matcher = KeywordMatcher(TOPICS[DATA])
    assert matcher.match("Analyze this CSV file").best is not None  # nothing foreign
    refused = matcher.match("Convert this CSV to JSON")
    assert refused.best is None and refused.unknown == ("convert", "json")
    assert refused.ranked[0].skill.name == "csv-analyzer"  # still the closest, for no_match


def test_a_skill_that_says_little_is_not_held_to_a_rich_vocabulary(tmp_path: Path) -> None:
    folder = tmp_path / "weather-report"
    folder.mkdir()
    (folder / "SKILL.md").write_text(
        "---\nname: weather-report\ndescription: Reports the weather forecast for a city.\n"
        "---\n# Weather\n"
    )
    matcher = KeywordMatcher([load_skill(folder)])
    assert matcher.match("what's the weather in Paris tomorrow?").best is not None
    assert matcher.match("book a flight to Rome").best is None


def test_the_decision_is_explained() -> None:
    result = KeywordMatcher(TOPICS[CODE]).match("Write unit tests for this function")
    explained = result.explain()
    assert explained["chosen"] is None and explained["unknown_terms"] == ["write", "unit"]
    assert explained["threshold"] == result.threshold and explained["penalty"] > 0
    best = result.ranked[0]
    assert explained["candidates"][0] == {  # type: ignore[index]
        "skill": best.skill.name,
        "score": best.score,
        "evidence": best.evidence,
        "terms": ["function"],
    }
    chosen = KeywordMatcher(TOPICS[CODE]).match("any unused imports?").explain()
    assert chosen["chosen"] == "dead-code-detector"
    assert "unused" in chosen["candidates"][0]["terms"]  # type: ignore[index]


def test_words_found_in_the_data_are_the_callers_names() -> None:
    matcher = KeywordMatcher(TOPICS[DATA])
    alone = matcher.match("Which cities appear most often?")
    assert "cities" in alone.unknown
    with_table = matcher.match("Which cities appear most often?\nname,city\nann,Leeds\nbob,York")
    assert "cities" not in with_table.unknown
    assert with_table.best is not None and with_table.best.skill.name == "csv-analyzer"


def test_unknown_words_cost_by_their_place_in_the_request() -> None:
    matcher = KeywordMatcher(TOPICS[DATA])
    # The same unknown word costs less after a preposition than before it ...
    after = matcher.match("What's the typical value of the bananas?")
    before = matcher.match("What's the typical bananas value?")
    assert after.penalty < before.penalty
    # ... and most as the leading verb of an imperative: the task itself.
    leading = matcher.match("Translate this email into German.")
    assert leading.best is None and leading.unknown[0] == "translate"
    assert leading.penalty > matcher.match("This email, translate into German.").penalty


def test_fenced_prose_is_data_even_when_it_opens_like_a_request() -> None:
    query = read_query("```\nTo all staff: " + LONG_ARTICLE + "\n```\nWhat's the upshot?")
    assert query.shape == "text" and query.instruction == "What's the upshot?"
    assert KeywordMatcher(TOPICS[DATA]).match(query.instruction).best is not None
