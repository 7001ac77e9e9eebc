"""A seeded simulation of the canary: how often it promotes wrongly, how often it misses.

Each simulated canary runs the real decision code
(:class:`skillscale.core.rollout.Canary`: pairing, SPRT, time limit) on
synthetic traffic: every request goes to the candidate with probability
``share``, and succeeds with the probability of the arm it went to. A run
ends at the test's decision or at its time limit (one second per request),
which rejects it as inconclusive.

* **false promotions**: share of runs promoting a candidate exactly as good as
  the active version (the worst case for ``alpha``) and of runs promoting a
  worse one;
* **misses**: share of runs not promoting a candidate better by the design
  effect (its success odds ``odds_ratio`` times the active's).

``skillscale distill bench`` prints these figures; ``tests/test_evolution.py``
holds them to false promotions <= 5 % and misses <= 20 % on a fixed seed.
"""

from __future__ import annotations

import math
import random
from typing import Any

from skillscale.core.rollout import Canary, TestSettings

P_ACTIVE = 0.6
"""Success rate of the active version in the simulation."""


def better_rate(p_active: float, odds_ratio: float) -> float:
    """The success rate whose odds are ``odds_ratio`` times those of ``p_active``."""
    odds = p_active / (1 - p_active) * odds_ratio
    return odds / (1 + odds)


def run_canary(
    rng: random.Random,
    p_active: float,
    p_candidate: float,
    *,
    share: float,
    test: TestSettings,
    max_requests: int,
) -> tuple[str, int]:
    """One canary to its end: (``promote`` or ``reject``, requests it took)."""
    canary = Canary(version="2", share=share, started=0.0, time_limit=float(max_requests),
                    test=test)  # fmt: skip
    for n in range(1, max_requests + 1):
        if rng.random() < share:
            canary.record("candidate", rng.random() < p_candidate)
        else:
            canary.record("active", rng.random() < p_active)
        verdict, _ = canary.decision(now=float(n))
        if verdict != "continue":
            return verdict, n
    return "reject", max_requests


def simulate(
    seed: int = 0,
    runs: int = 400,
    *,
    share: float = 0.2,
    test: TestSettings | None = None,
    p_active: float = P_ACTIVE,
    max_requests: int = 5000,
) -> dict[str, Any]:
    """False-promotion and miss rates of the canary over ``runs`` seeded canaries each."""
    test = test or TestSettings()
    rng = random.Random(seed)
    p_better = better_rate(p_active, test.odds_ratio)
    p_worse = better_rate(p_active, 1 / test.odds_ratio)
    results: dict[str, tuple[float, float]] = {}
    for label, p_candidate in (("equal", p_active), ("worse", p_worse), ("better", p_better)):
        promoted, lengths = 0, []
        for _ in range(runs):
            verdict, n = run_canary(rng, p_active, p_candidate, share=share, test=test,
                                    max_requests=max_requests)  # fmt: skip
            promoted += verdict == "promote"
            lengths.append(n)
        results[label] = (promoted / runs, sum(lengths) / runs)
    return {
        "seed": seed,
        "runs per case": runs,
        "effect": f"success {p_active:.2f} -> {p_better:.3f} (odds ratio {test.odds_ratio:g})",
        "alpha": test.alpha,
        "beta": test.beta,
        "share": share,
        "false promotions (equal)": round(results["equal"][0], 4),
        "false promotions (worse)": round(results["worse"][0], 4),
        "misses (better)": round(1 - results["better"][0], 4),
        "mean requests to decide (equal)": round(results["equal"][1]),
        "mean requests to decide (better)": round(results["better"][1]),
        "wald bounds": [
            round(math.log(test.beta / (1 - test.alpha)), 3),
            round(math.log((1 - test.beta) / test.alpha), 3),
        ],
    }


if __name__ == "__main__":  # pragma: no cover - `python -m skillscale.distiller.evolution_sim`
    import json

    print(json.dumps(simulate(), indent=2))
