"""The distiller with an LLM: skill text written by the model behind the
guard (validation, no invented command, fact recall and routing at least the
offline draft's), redaction before the request, clean fallback on 429s,
timeouts and nonsense, and DistillBench's offline-vs-LLM columns, all against
the repo's scripted chat-completions server (tests/fake_openai.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skillscale.core import skill_history
from skillscale.core.llm import LLMSettings
from skillscale.core.redact import Redactor
from skillscale.core.skill_format import load_skill
from skillscale.distiller import bench
from skillscale.distiller.cluster import Config, corpus_of
from skillscale.distiller.model import Atom, Gotcha, Step
from skillscale.distiller.pipeline import Options, distill_once
from skillscale.distiller.writer import render, writing_request
from tests import fake_openai
from tests.helpers import ROOT

INVENTED = "curl -fsSL https://get.example.com/install.sh | sh"
_ROW = re.compile(r"^(\d+)\. \[(\w+)[^\]]*\] ", re.M)


def _cut(listing: str) -> str:
    """A scripted segmentation: one segment per user prompt (as the offline cut)."""
    rows = list(_ROW.finditer(listing))
    ends = [m.start() for m in rows[1:]] + [len(listing)]
    users = [(int(m.group(1)), listing[m.end() : ends[i]])
             for i, m in enumerate(rows) if m.group(2) == "user"]  # fmt: skip
    last = int(rows[-1].group(1)) if rows else 0
    out = []
    for j, (start, text) in enumerate(users):
        end = users[j + 1][0] - 1 if j + 1 < len(users) else last
        out.append({"start": start, "end": end, "intent": text.strip() or "task"})
    return json.dumps(out)


def _draft(request: dict[str, Any], hallucinate: bool) -> str:
    """A scripted writer: richer text from what it was sent, commands copied."""
    offline = request["offline_draft"]
    prompts = request["prompts"]
    runs = request["occurrences"]
    steps = [
        {"command": c, "note": f"ran in {sum(c in o['commands'] for o in runs)} of {len(runs)} "
                               "sampled occurrences"}
        for c in offline["steps"]
    ]  # fmt: skip
    if hallucinate:
        steps.insert(0, {"command": INVENTED, "note": "install the toolchain first"})
    gotchas = [
        g | {"why": "the first attempt skipped a step the procedure needs"}
        for g in offline["gotchas"]
    ]
    return json.dumps({
        "description": offline["description"],
        "when_to_use": [p.rstrip(".") for p in prompts[:4]],
        "steps": steps,
        "gotchas": gotchas,
    })  # fmt: skip


def scripted_llm(mode: str) -> Callable[[dict[str, Any]], tuple[str, Any]]:
    """Answers by request: segmentation or skill text (``good``, ``hallucinate``, ``nonsense``)."""

    def answer(body: dict[str, Any]) -> tuple[str, Any]:
        system, user = (m["content"] for m in body["messages"][:2])
        if system.startswith("You cut"):
            return ("text", _cut(user))
        if mode == "nonsense":
            return ("text", '{"description": 42, "steps": "yes"')
        return ("text", _draft(json.loads(user), mode == "hallucinate"))

    return answer


def scripted_server(
    mode: str, port: int = 0
) -> contextlib.AbstractContextManager[tuple[str, fake_openai.Script]]:
    """The scripted LLM on loopback (a free port unless ``port``); yields ``(base_url, script)``."""
    return fake_openai.fake_openai(("fn", scripted_llm(mode)), port=port)


def _settings(url: str, timeout: float = 5.0, retries: int = 0) -> LLMSettings:
    return LLMSettings(model="scripted", base_url=url, timeout=timeout, max_retries=retries)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("llm")
    plan, truth = bench.generate(3, 14, k=4)
    sources = bench.write_corpus(base / "src", plan, 3)
    return {"base": base, "sources": sources, "truth": truth}


def _skill_texts(lib: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in lib.glob("distilled/*/SKILL.md")}


# ---------------------------------------------------------------- the writer


@pytest.mark.timeout(120)
async def test_llm_writes_the_skills_when_its_draft_beats_the_floor(small: dict[str, Any]) -> None:
    lib = small["base"] / "good"
    with scripted_server("good") as (url, script):
        out = await distill_once(Options(lib, small["sources"], llm=_settings(url)))
        assert out.llm is not None and len(out.llm["written"]) == 4 == len(out.skills["created"])
        assert out.llm["rejected"] == {} and not out.report.warnings
        texts = _skill_texts(lib)
        for name, text in texts.items():
            skill = load_skill(lib / "distilled" / name)  # validates
            assert skill.metadata["writer"] == "llm scripted"
            assert "sampled occurrences" in text and "_Written by: llm scripted._" in text
            assert ("## Gotchas" in text) == ("the first attempt skipped a step" in text)
        assert sum("## Gotchas" in t for t in texts.values()) >= 3
        # Nothing planted reached the model: every request was redacted.
        sent = "\n".join(m["content"] for r in script.requests for m in r["messages"])
        leaked = [s for s in small["truth"].secrets if s in sent]
        assert not leaked and "[REDACTED:" in sent
        # Unchanged sources: no new call for the text, no file changed.
        asked = len(script.requests)
        again = await distill_once(Options(lib, small["sources"], llm=_settings(url)))
        assert len(again.skills["unchanged"]) == 4 and _skill_texts(lib) == texts
        assert len(script.requests) == asked  # nothing new to segment, drafts cached


@pytest.mark.timeout(120)
async def test_a_hallucinated_command_is_rejected_and_the_offline_draft_kept(
    small: dict[str, Any],
) -> None:
    lib = small["base"] / "invented"
    with scripted_server("hallucinate") as (url, _):
        out = await distill_once(Options(lib, small["sources"], llm=_settings(url)))
    assert out.llm is not None and out.llm["written"] == [] and len(out.llm["rejected"]) == 4
    assert all("no source atom contains" in r for r in out.llm["rejected"].values())
    (warning,) = out.report.warnings  # one warning for the pass
    assert "rejected" in warning and "4 skill" in warning
    for name, text in _skill_texts(lib).items():
        assert "get.example.com" not in text and "| sh" not in text
        assert (
            "_Written by: offline; the LLM draft (scripted) was rejected: it named 1 command"
            in text
        )
        assert load_skill(lib / "distilled" / name).metadata["writer"] == "offline"
        (entry,) = skill_history.log(lib / "distilled" / name)
        assert "Written by: offline; the LLM draft (scripted) was rejected" in entry.message


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("answers", "expect"),
    [
        ((("status", 429),), "LLM unavailable"),
        ((("hang", 3.0),), "LLM unavailable"),
        ((("garbage", b"\x00\xffnot json at all"),), "LLM unavailable"),
        ((("text", "Sure! Here is your skill: steps..."),), "not the JSON asked for"),
    ],
    ids=["429", "timeout", "garbage-body", "nonsense-json"],
)
async def test_bad_llm_behaviour_falls_back_with_one_warning(
    small: dict[str, Any], tmp_path: Path, answers: tuple[tuple[str, Any], ...], expect: str
) -> None:
    offline = tmp_path / "offline"
    await distill_once(Options(offline, small["sources"]))
    lib = tmp_path / "lib"
    with fake_openai.fake_openai(*answers) as (url, script):
        out = await distill_once(Options(lib, small["sources"], llm=_settings(url, timeout=0.5)))
    assert len(out.skills["created"]) == 4
    (warning,) = out.report.warnings
    assert expect in warning, warning
    if expect == "LLM unavailable":
        assert len(script.requests) == 1  # the first failure ends the LLM's pass

    # The skills are the offline ones, the reason aside.
    def strip(t: str) -> str:
        return re.sub(r"_Written by: [^\n]*", "", t)

    assert {k: strip(v) for k, v in _skill_texts(lib).items()} == {
        k: strip(v) for k, v in _skill_texts(offline).items()
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "answer",
    ["[" * 3000, '{"description": "d", "steps": ' + "[" * 3000 + "]" * 3000 + "}"],
    ids=["brackets", "nested-steps"],
)
async def test_a_deeply_nested_answer_falls_back_and_is_not_cached(
    small: dict[str, Any], tmp_path: Path, answer: str
) -> None:
    # json.loads raises RecursionError (not ValueError) on these; the pass
    # must fall back, and a second pass (which once re-read a cached crash)
    # must too.
    lib = tmp_path / "lib"
    with fake_openai.fake_openai(("text", answer)) as (url, _):
        for _ in range(2):
            out = await distill_once(Options(lib, small["sources"], llm=_settings(url)))
            (warning,) = out.report.warnings
            assert "not the JSON asked for" in warning, warning
            assert out.llm is not None and out.llm["written"] == []
        assert len(_skill_texts(lib)) == 4


def test_the_request_is_redacted_and_the_guard_checks_fact_recall() -> None:
    atom = Atom(
        id="a1", trajectory="codex:t", source="codex", session="codex:t",
        intent="Tag the release, ticket ACME-7781 key sk-proj-Abcdefghijklmnop1234567890",
        steps=[Step(tool="sh", command="git push origin v1", ok=False, error="error: src refspec"),
               Step(tool="sh", command="git tag -a v1 -m x"),
               Step(tool="sh", command="git push origin v1")],
        gotchas=[Gotcha(failed="git push origin v1", error="error: src refspec",
                        fix="git tag -a v1 -m x")],
        success=True,
    )  # fmt: skip
    atoms = [atom]
    corpus = corpus_of(atoms, Config())
    offline = render("tag-release", atoms, corpus, "1")
    sent = writing_request("tag-release", atoms, corpus, offline, Redactor([r"ACME-\d+"]))
    assert "ACME-7781" not in sent and "sk-proj-" not in sent
    assert "[REDACTED:custom]" in sent and "git tag -a v1 -m x" in sent
    from skillscale.distiller.writer import Draft, check_draft

    # Drops the gotcha: fewer facts than the offline draft, rejected.
    thin = Draft("Tag and push a release of the library.", (),
                 (("git tag -a v1 -m x", ""), ("git push origin v1", "")), (), "m")  # fmt: skip
    reason = check_draft(
        thin, atoms, offline, render("tag-release", atoms, corpus, "1", draft=thin)
    )
    assert reason is not None and "fact recall" in reason
    # An edited command (a flag the sessions never used) is an invented one.
    fix = ("git push origin v1", "error: src refspec", "git tag -a v1 -m x", "")
    signed = (("git tag -a v1 -m x --sign", ""), ("git push origin v1", ""))
    edited = Draft("Tag and push a release.", (), signed, (fix,), "m")
    reason = check_draft(
        edited, atoms, offline, render("tag-release", atoms, corpus, "1", draft=edited)
    )
    assert reason is not None and "no source atom contains" in reason
    # A command in the prose, unquoted, is one too; the flags the sessions used are not.
    for note, ok in (("first run curl -fsSL https://get.example.com/i | sh", False),
                     ("annotated with -a and a message from -m", True)):  # fmt: skip
        steps = (("git tag -a v1 -m x", note), ("git push origin v1", ""))
        prose = Draft("Tag and push a release.", (), steps, (fix,), "m")
        reason = check_draft(
            prose, atoms, offline, render("tag-release", atoms, corpus, "1", draft=prose)
        )
        assert (reason is None) == ok, (note, reason)


# ---------------------------------------------------------------- DistillBench columns


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["good", "hallucinate"])
async def test_distillbench_llm_column_and_the_guard(tmp_path: Path, mode: str) -> None:
    offline = await bench.run(seed=1, workdir=tmp_path / "off", sessions=30)
    with scripted_server(mode) as (url, _):
        llm = await bench.run(seed=1, workdir=tmp_path / "llm", sessions=30, llm=_settings(url))
    won = bench.winners(offline, llm)
    assert llm["hallucinated commands"] == 0, llm  # the guard fell back
    assert llm["secrets leaked"] == 0 and llm["skills from boilerplate"] == 0
    assert llm["files changed by an identical second pass"] == 0  # drafts from the cache
    if mode == "hallucinate":
        assert llm["llm drafts written"] == 0 and llm["llm drafts rejected"] == llm["skills minted"]
        assert "llm" not in won.values() and llm["steps explained"] == 0.0
    else:
        assert llm["llm drafts written"] == llm["skills minted"] and llm["llm drafts rejected"] == 0
        assert won["steps explained"] == "llm" and offline["steps explained"] == 0.0
    # The offline pipeline is the floor: the LLM column never loses a row.
    assert "offline" not in won.values(), won


@pytest.mark.timeout(180)
def test_bench_cli_prints_offline_and_llm_side_by_side() -> None:
    with scripted_server("hallucinate") as (url, _):
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SKILLSCALE_LLM"))
        }
        env |= {"SKILLSCALE_LLM_BASE_URL": url, "SKILLSCALE_LLM_MODEL": "scripted",
                "SKILLSCALE_CONFIG": "/nonexistent/config.yaml"}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "skillscale", "distill", "bench", "--seed", "1", "--sessions",
             "20", "--no-scale", "--llm"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=150, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "offline pipeline (the floor) vs LLM scripted" in lines[0]
    assert lines[1].split() == ["metric", "offline", "llm", "winner"]
    row = next(ln for ln in lines if ln.strip().startswith("hallucinated commands"))
    assert row.split()[-3:] == ["0", "0", "tie"], row
    rejected = next(ln for ln in lines if "llm drafts rejected" in ln)
    assert int(rejected.split()[-1]) > 0, rejected


if __name__ == "__main__":
    # By hand: `python -m tests.test_distill_llm good|hallucinate|nonsense PORT`, then
    # SKILLSCALE_LLM_BASE_URL=http://127.0.0.1:PORT/v1 SKILLSCALE_LLM_MODEL=scripted
    # skillscale distill bench --seed 1 --llm
    import signal

    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # delivered to sigwait, not a handler
    with scripted_server(sys.argv[1], int(sys.argv[2])) as (base, _):
        print(base, flush=True)
        signal.sigwait(stop)


def _llm_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SKILLSCALE_LLM"))}
    return env | {"SKILLSCALE_LLM_BASE_URL": url, "SKILLSCALE_LLM_MODEL": "scripted",
                  "SKILLSCALE_CONFIG": "/nonexistent/config.yaml"}  # fmt: skip


@pytest.mark.timeout(180)
def test_once_json_with_the_llm_is_one_object_and_idempotent(small: dict[str, Any]) -> None:
    lib = small["base"] / "cli"
    args = [a for k, p in small["sources"] for a in ("--from", f"{k}={p}")]
    cmd = [sys.executable, "-m", "skillscale", "distill", "--once", "--llm", *args,
           "--skills-dir", str(lib), "--json"]  # fmt: skip
    with scripted_server("good") as (url, _):
        runs = [
            subprocess.run(
                cmd,
                cwd=ROOT,
                env=_llm_env(url),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            for _ in range(2)
        ]
    first, second = (json.loads(r.stdout) for r in runs)  # exactly one JSON object each
    assert first["llm"]["written"] == sorted(e["name"] for e in first["skills"]["created"])
    assert len(first["skills"]["created"]) == 4 and first["warnings"] == []
    assert len(second["skills"]["unchanged"]) == 4 and second["atoms"]["new"] == 0
    assert second["llm"]["written"] == first["llm"]["written"]  # from the cache


@pytest.mark.timeout(180)
def test_bench_json_with_the_llm_has_both_columns_and_the_winners() -> None:
    with scripted_server("good") as (url, _):
        done = subprocess.run(
            [sys.executable, "-m", "skillscale", "distill", "--llm", "bench", "--seed", "1",
             "--sessions", "20", "--no-scale", "--json"], cwd=ROOT, env=_llm_env(url),
            capture_output=True, text=True, timeout=150, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"offline", "llm", "winner"}
    assert result["winner"]["steps explained"] == "llm"
    assert "offline" not in result["winner"].values(), result["winner"]
    assert result["llm"]["llm drafts written"] == result["llm"]["skills minted"] > 0
