"""`skillscale bench`: the statistics, and a short run against a live server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from skillscale.tools.bench import BenchConfig, bench_intent, percentile, run_bench, summarize
from tests.helpers import FIXTURE_SKILLS, ROOT, RoleProcess, role_env


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 90) == 7.0
    assert math.isnan(percentile([], 50))


def test_summarize_counts_failures_by_code() -> None:
    config = BenchConfig(topic="T", intent="x", requests=4, concurrency=2)
    result = summarize(
        [1.0, 2.0, 3.0, 4.0], [("timeout", "slow"), ("timeout", "slow")], 2.0, config
    )
    assert result.throughput_rps == 2.0
    assert result.succeeded == 2 and result.success_rate == 0.5
    assert result.failures_by_code == {"timeout": 2}
    assert result.latency_ms["p50"] == 2.0 and result.latency_ms["max"] == 4.0


def test_bench_intent_forms() -> None:
    assert json.loads(bench_intent(None, "echo", "d")) == {"skill": "echo", "data": "d"}
    assert json.loads(bench_intent("t", None, "d")) == {"task": "t", "data": "d"}
    assert bench_intent("plain", None, None) == "plain"


@pytest.mark.integration
async def test_run_bench_against_a_live_server(
    proxy: RoleProcess, testing_server: RoleProcess
) -> None:
    config = BenchConfig(
        topic="TOPIC_TESTING",
        intent=bench_intent(None, "echo", "b"),
        requests=40,
        concurrency=8,
        proxy_xsub=proxy.ready["xsub"],
        proxy_xpub=proxy.ready["xpub"],
        progress=False,
    )
    result = await run_bench(config)
    assert result.requests == 40 and result.succeeded == 40 and result.failed == 0
    assert result.latency_ms["min"] <= result.latency_ms["p50"] <= result.latency_ms["max"]


@pytest.mark.integration
def test_bench_cli_reports_failures_and_writes_json(
    proxy: RoleProcess, testing_server: RoleProcess, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "skillscale", "bench", "--topic", "TOPIC_TESTING",
         "--skill", "crash", "--requests", "6", "--concurrency", "2", "--warmup", "0",
         "--proxy-xsub", proxy.ready["xsub"], "--proxy-xpub", proxy.ready["xpub"],
         "--json-out", str(out)],
        capture_output=True, text=True, timeout=60, env=role_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "exec_failed: 6" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["failed"] == 6 and summary["failures_by_code"] == {"exec_failed": 6}


@pytest.mark.integration
def test_bench_compare_cold_prints_the_same_skill_spawned_cold(
    proxy: RoleProcess, testing_server: RoleProcess, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "skillscale", "bench", "--topic", "TOPIC_TESTING",
         "--skill", "echo", "--data", "hi", "--requests", "5", "--concurrency", "2",
         "--warmup", "0", "--compare-cold", "--skills-dir", str(FIXTURE_SKILLS / "testing"),
         "--proxy-xsub", proxy.ready["xsub"], "--proxy-xpub", proxy.ready["xpub"],
         "--json-out", str(out)],
        capture_output=True, text=True, timeout=60, env=role_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cold spawn" in result.stdout and "of the cold median" in result.stdout
    summary = json.loads(out.read_text())
    cold = summary["cold_baseline"]
    assert summary["succeeded"] == 5 and cold["skill"] == "echo" and cold["runs"] == 5
    assert cold["argv"][-1].endswith("run.py") and 0 < cold["median_ms"] <= cold["p99_ms"]


def test_bench_compare_cold_needs_a_skill_with_a_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "skillscale", "bench", "--compare-cold", "--skills-dir",
         str(tmp_path), "--skill", "nothing-here"],
        capture_output=True, text=True, timeout=60, env=role_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--compare-cold: no skill 'nothing-here'" in result.stderr
