"""The matching benchmark (``bench/matching.py``): its data, its split, and the floors.

The floors of issue 11 are checked on the held-out third of the labelled
tasks, keyword matcher only. One of them is not met yet (legitimate tasks
refused: 3.7 % on the held-out third, floor 2 %); it is kept here as an
expected failure next to a regression bound at the measured level, so that a
change that reaches the floor shows up (the xfail is strict).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections import Counter
from types import ModuleType

import pytest

from tests.helpers import ROOT


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_matching", ROOT / "bench" / "matching.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench()
TASKS = BENCH.load_tasks()
OUTCOMES = BENCH.evaluate(TASKS)
HOLDOUT = BENCH.Report("held-out", [o for o in OUTCOMES if o.task.split == "holdout"])


def test_the_data_is_large_and_varied_enough() -> None:
    batch1 = [t for t in TASKS if t.batch == 1]
    per_skill = Counter(t.expected for t in batch1 if t.group == "topic")
    assert sum(per_skill.values()) >= 300 and min(per_skill.values()) >= 60
    assert len(per_skill) == 4
    assert sum(1 for t in batch1 if t.group == "offtopic") >= 60
    assert sum(1 for t in batch1 if t.group == "catalog") >= 100
    styles = Counter(s for t in TASKS for s in t.style)
    for style in ("imperative", "question", "british", "american", "terse", "data"):
        assert styles[style] >= 10, style
    assert len({t.id for t in TASKS}) == len(TASKS)


def test_the_split_is_the_recorded_seeded_hash() -> None:
    # Recompute the rule of the data file: within each (batch, group, topic,
    # expected) stratum, the third with the smallest seeded hash is held out.
    strata: dict[tuple[object, ...], list[object]] = {}
    for task in TASKS:
        strata.setdefault((task.batch, task.group, task.topic, task.expected), []).append(task)
    for members in strata.values():
        ordered = sorted(
            members,
            key=lambda t: hashlib.sha256(
                f"skillscale-matching-bench-v1:{t.id}".encode()  # type: ignore[attr-defined]
            ).hexdigest(),
        )
        cut = round(len(ordered) / 3)
        assert [t.split for t in ordered] == ["holdout"] * cut + ["tune"] * (len(ordered) - cut)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("figure", "floor"),
    [("top1_within_topic", 0.95), ("offtopic_refused", 0.90), ("catalog_top1", 0.92)],
)
def test_floor_on_the_held_out_third(figure: str, floor: float) -> None:
    rate, hits, total = HOLDOUT.figures()[figure]
    assert total >= 30
    assert rate >= floor, f"{figure} = {rate:.3f} ({hits}/{total}) on the held-out third"


def test_legitimate_refusals_do_not_regress() -> None:
    rate, hits, total = HOLDOUT.figures()["legit_refused"]
    assert rate <= 0.04, f"{hits}/{total} legitimate held-out tasks refused"


@pytest.mark.xfail(
    strict=True, reason="keywords refuse 3.7 % of held-out legitimate tasks; the floor is 2 %"
)
def test_legitimate_refusal_floor_on_the_held_out_third() -> None:
    assert HOLDOUT.figures()["legit_refused"][0] <= 0.02


def test_the_bench_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    BENCH.main([])
    out = capsys.readouterr().out
    for text in ("held-out third", "whole set", "latency per match", "confusion", "(refused)"):
        assert text in out
