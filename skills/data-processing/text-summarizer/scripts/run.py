"""text-summarizer: extractive summary with statistics and keywords."""

from __future__ import annotations

import re
from collections import Counter

from skillscale.skillkit import (
    input_error,
    insights_section,
    json_object,
    md_table,
    read_input,
    read_prose,
)

WORDS_PER_MINUTE = 238
_ABBREVIATIONS = (
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sr",
    "jr",
    "st",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "fig",
    "inc",
    "ltd",
    "no",
    "approx",
    "dept",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")
_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_WANTED_RE = re.compile(
    r"\b(\d{1,2}|" + "|".join(_NUMBERS) + r"|a|a single)[ -](?:sentences?|lines?)\b",
    re.IGNORECASE,
)
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be
because been before being below between both but by can could did do does doing down during each
few for from further had has have having he her here hers herself him himself his how i if in into
is it its itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves one two may might
must shall many much said says also however""".split()
)


def split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    for block in re.split(r"\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)", text):
        block = " ".join(block.split())
        if not block:
            continue
        start = 0
        for match in _SENTENCE_END.finditer(block):
            candidate = block[start : match.start()].strip()
            last_word = candidate.rsplit(" ", 1)[-1].rstrip(".").lower()
            if last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last_word):
                continue
            if candidate:
                sentences.append(candidate)
            start = match.end()
        tail = block[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


def content_words(sentence: str) -> list[str]:
    return [w for w in (m.lower() for m in _WORD.findall(sentence)) if w not in STOPWORDS]


def summarize(sentences: list[str], count: int) -> list[int]:
    freq = Counter(w for s in sentences for w in content_words(s))
    if not freq:
        return list(range(min(count, len(sentences))))
    top = max(freq.values())
    scores = []
    for index, sentence in enumerate(sentences):
        words = content_words(sentence)
        score = sum(freq[w] / top for w in words) / (len(words) ** 0.7) if words else 0.0
        if index == 0:
            score *= 1.15  # openings usually state the topic
        scores.append((score, -index))
    best = sorted(range(len(sentences)), key=lambda i: scores[i], reverse=True)[:count]
    return sorted(best)


def wanted_sentences(raw: str, text: str) -> int | None:
    """A length asked for in the request around the text ("in two sentences")."""
    request = raw.replace(text, " ", 1) if text in raw else ""
    match = _WANTED_RE.search(request[:600])
    if match is None:
        return None
    word = match.group(1).lower()
    count = int(word) if word.isdigit() else _NUMBERS.get(word, 1)
    return count if count > 0 else None


def main() -> None:
    raw = read_input()
    wanted: int | None = None
    obj = json_object(raw)
    if obj is not None and isinstance(obj.get("sentences"), int) and obj["sentences"] > 0:
        wanted = obj["sentences"]
    # The text wherever the caller put it, without the request around it; a
    # request with no text is the caller's mistake (bad_request with a hint).
    text = read_prose(raw, what="text to summarize")
    wanted = wanted or wanted_sentences(raw, text)

    sentences = split_sentences(text)
    words = _WORD.findall(text)
    if not words:
        input_error("the input has no words to summarize", "send text written in Latin letters")
    count = wanted or max(1, min(7, round(len(sentences) * 0.3)))
    chosen = summarize(sentences, count)
    summary = " ".join(sentences[i] for i in chosen)

    lowered = [w.lower() for w in words]
    keywords = Counter(w for w in lowered if w not in STOPWORDS and len(w) > 2).most_common(8)
    summary_words = len(_WORD.findall(summary))
    minutes = len(words) / WORDS_PER_MINUTE
    stats = [
        ("Words", len(words)),
        ("Sentences", len(sentences)),
        ("Characters", len(text.strip())),
        ("Average sentence length", f"{len(words) / max(1, len(sentences)):.1f} words"),
        ("Reading time", f"{minutes:.1f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"),
        ("Lexical diversity", f"{len(set(lowered)) / len(lowered):.2f}"),
        (
            "Summary length",
            f"{len(chosen)} of {len(sentences)} sentences, "
            f"{summary_words / len(words):.0%} of the words",
        ),
    ]
    out = ["## Summary", "", summary, "", "## Statistics", "", md_table(("Metric", "Value"), stats)]
    if keywords:
        out += ["", "## Top keywords", "", ", ".join(f"`{w}` ({n})" for w, n in keywords)]
    out += insights_section(
        "In two sentences, state the main point of this text and what it leaves open:\n" + text
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
