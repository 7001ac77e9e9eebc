"""The subprocess executor against real child processes (no bus)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from skillscale.core.discovery import SkillDiscovery
from skillscale.core.skill_format import load_skill
from skillscale.skill_server.executor import (
    ExecutionLimits,
    ExecutionResult,
    ResourceLimits,
    SubprocessExecutor,
)
from skillscale.skill_server.warm import WarmExecutor
from tests.helpers import FIXTURE_SKILLS, open_fd_count, wait_pid_gone

CATALOG = SkillDiscovery([FIXTURE_SKILLS / "testing"]).scan()


@pytest.fixture(params=["cold", "warm"])
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[SubprocessExecutor]:
    """Every executor test runs against both paths: one suite, two executors."""
    if request.param == "cold":
        yield SubprocessExecutor()
        return
    warm = WarmExecutor()
    await warm.start()
    try:
        yield warm
    finally:
        await warm.close()


async def test_echo_round_trip(executor: SubprocessExecutor) -> None:
    result = await executor.run(CATALOG.skills["echo"], "héllo".encode(), ExecutionLimits(10))
    assert result.ok and result.stdout.decode() == "héllo" and result.exit_code == 0


async def test_shell_entry_point_runs_without_a_shell_command_line(
    executor: SubprocessExecutor,
) -> None:
    result = await executor.run(CATALOG.skills["echo-sh"], b"$(id); x", ExecutionLimits(10))
    assert result.ok and result.stdout == b"sh:$(id); x"


async def test_timeout_kills_the_whole_process_group(
    executor: SubprocessExecutor, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    result = await executor.run(
        CATALOG.skills["hang"], str(pid_file).encode(), ExecutionLimits(1.0)
    )
    assert result.timed_out and not result.ok
    assert time.monotonic() - started < 5
    grandchild = int(pid_file.read_text())
    assert wait_pid_gone(grandchild)


async def test_output_past_the_bound_kills_the_skill(executor: SubprocessExecutor) -> None:
    result = await executor.run(
        CATALOG.skills["flood"], b"", ExecutionLimits(10, max_stdout=1024 * 1024)
    )
    assert result.stdout_overflow and not result.ok
    assert len(result.stdout) == 1024 * 1024


async def test_crash_reports_status_and_stderr_tail(executor: SubprocessExecutor) -> None:
    result = await executor.run(CATALOG.skills["crash"], b"", ExecutionLimits(10))
    assert result.exit_code == 3 and not result.ok
    assert b"RuntimeError: fixture crash" in result.stderr


async def test_large_input_to_a_skill_that_never_reads_stdin(executor: SubprocessExecutor) -> None:
    result = await executor.run(CATALOG.skills["noread"], b"x" * (300 * 1024), ExecutionLimits(10))
    assert result.ok, result
    assert result.stdout.strip() == b"intent-env=0 stdin-only=1"


async def test_small_input_is_also_in_the_environment(executor: SubprocessExecutor) -> None:
    result = await executor.run(CATALOG.skills["noread"], b"abc", ExecutionLimits(10))
    assert result.stdout.strip() == b"intent-env=3 stdin-only=0"


async def test_environment_is_scrubbed(
    executor: SubprocessExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    result = await executor.run(CATALOG.skills["envdump"], b"", ExecutionLimits(10))
    names = set(result.stdout.decode().split())
    assert "OPENAI_API_KEY" not in names and "AWS_SECRET_ACCESS_KEY" not in names
    assert {"PATH", "SKILLSCALE_SKILL", "SKILLSCALE_SKILL_DIR"} <= names


async def test_missing_interpreter_is_a_start_error() -> None:
    executor = SubprocessExecutor(python="/nonexistent/python")
    result = await executor.run(CATALOG.skills["echo"], b"", ExecutionLimits(10))
    assert result.start_error and not result.ok


async def test_background_grandchild_neither_hangs_the_run_nor_survives_it(
    executor: SubprocessExecutor, tmp_path: Path
) -> None:
    pid_file = tmp_path / "bg.pid"
    started = time.monotonic()
    result = await executor.run(
        CATALOG.skills["leaky"], str(pid_file).encode(), ExecutionLimits(10)
    )
    assert result.ok and result.stdout == b"done\n", result
    assert time.monotonic() - started < 3
    grandchild = int(pid_file.read_text())
    assert wait_pid_gone(grandchild)


async def test_nul_bytes_in_input_reach_stdin_not_the_environment(
    executor: SubprocessExecutor,
) -> None:
    result = await executor.run(
        CATALOG.skills["echo"], b"a\x00b", ExecutionLimits(10), env={"SKILLSCALE_TASK": "t\x00"}
    )
    assert result.ok and result.stdout == b"a\x00b"


async def test_metadata_env_lets_one_named_variable_through(
    executor: SubprocessExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKILLSCALE_TEST_ALLOWED", "yes")
    monkeypatch.setenv("SKILLSCALE_TEST_SECRET", "no")
    result = await executor.run(CATALOG.skills["envdump"], b"", ExecutionLimits(10))
    names = set(result.stdout.decode().split())
    assert "SKILLSCALE_TEST_ALLOWED" in names and "SKILLSCALE_TEST_SECRET" not in names


async def test_memory_limit(executor: SubprocessExecutor) -> None:
    limits = ExecutionLimits(10, resources=ResourceLimits(memory_bytes=200 * 1024 * 1024))
    ok = await executor.run(CATALOG.skills["hog"], b"10", limits)
    assert ok.ok, ok.stderr
    refused = await executor.run(CATALOG.skills["hog"], b"400", limits)
    assert not refused.ok and b"MemoryError" in refused.stderr


async def test_file_size_limit(executor: SubprocessExecutor) -> None:
    limits = ExecutionLimits(10, resources=ResourceLimits(fsize_bytes=2 * 1024 * 1024))
    assert (await executor.run(CATALOG.skills["bigfile"], b"1", limits)).ok
    refused = await executor.run(CATALOG.skills["bigfile"], b"5", limits)
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing.
    assert not refused.ok and b"File too large" in refused.stderr


async def test_cpu_limit(executor: SubprocessExecutor, tmp_path: Path) -> None:
    spin = tmp_path / "spin"
    (spin / "scripts").mkdir(parents=True)
    (spin / "SKILL.md").write_text("---\nname: spin\ndescription: Burns CPU.\n---\n")
    (spin / "scripts" / "run.py").write_text("while True:\n    pass\n")
    from skillscale.core.skill_format import load_skill

    limits = ExecutionLimits(20, resources=ResourceLimits(cpu_seconds=1))
    started = time.monotonic()
    result = await executor.run(load_skill(spin), b"", limits)
    assert result.exit_code in (-signal.SIGXCPU, -signal.SIGKILL) and not result.timed_out
    assert time.monotonic() - started < 10


async def test_megabytes_each_way_travel_whole(executor: SubprocessExecutor) -> None:
    # More than any pipe buffer in both directions: the input goes in as the
    # child makes room, and the output is read as it comes.
    data = os.urandom(3 * 1024 * 1024)
    result = await executor.run(CATALOG.skills["echo"], data, ExecutionLimits(30))
    assert result.ok, result
    assert result.stdout == data


async def test_runs_leave_no_fd_and_no_loop_watch_behind(
    executor: SubprocessExecutor, tmp_path: Path
) -> None:
    # Every way a run can end, once each: ok, crash, output over its bound,
    # timeout, input never read. Each run opens pipes, a pidfd and (warm) a
    # report channel and a connection, and watches them on the loop.
    if isinstance(executor, WarmExecutor):
        executor.waiting_children = 0  # children forked ahead hold pipes by design
        executor.drop_waiting()
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)

    async def held() -> tuple[int, int]:
        if isinstance(executor, WarmExecutor):
            # A run's connection closes once the fork server's status line is
            # in; a skill importing a preload candidate (time) starts a fork
            # server beside the first, whose start holds a pipe meanwhile.
            await asyncio.gather(*list(executor._waiters))
            if executor._growing is not None:
                await executor._growing
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in executor._retired)), 20)
            for _ in range(3):
                await asyncio.sleep(0)  # a transport closes a loop step after its EOF
        gc.collect()  # what earlier tests left, closed now rather than mid-test
        watched = len(selector.get_map()) if selector is not None else 0
        return open_fd_count(), watched

    runs = [
        ("echo", b"x", ExecutionLimits(10)),
        ("crash", b"", ExecutionLimits(10)),
        ("flood", b"", ExecutionLimits(10, max_stdout=64 * 1024)),
        ("hang", str(tmp_path / "pid").encode(), ExecutionLimits(0.5)),
        ("noread", b"x" * (300 * 1024), ExecutionLimits(10)),
    ]

    async def every_kind() -> None:
        for name, data, limits in runs:
            result = await executor.run(CATALOG.skills[name], data, limits)
            assert result.exit_code is not None or result.timed_out, (name, result)

    # A first round, not measured: a warm executor grows its preload for the
    # skills' imports (time), which replaces its fork server once.
    await every_kind()
    before = await held()
    await every_kind()
    fds, watched = await held()
    # Not equal: something of an earlier test may still close meanwhile.
    assert fds <= before[0] and watched <= before[1], (fds, watched, before)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("kind", ["cold", "warm"])
def test_an_exit_in_time_wins_over_a_loop_stalled_past_the_deadline(
    loop: str, kind: str, tmp_path: Path
) -> None:
    # The skill ends 0.5 s after it started, while the loop is blocked (a long
    # synchronous step elsewhere in the server) until after the run's 1.5 s
    # deadline. When the loop comes back, the timer and the exit are both
    # due: the exit came first. uvloop (what the roles run on) runs due
    # timers before it polls for I/O.
    folder = tmp_path / "late"
    (folder / "scripts").mkdir(parents=True)
    (folder / "SKILL.md").write_text("---\nname: late\ndescription: Test.\n---\n")
    (folder / "scripts" / "run.py").write_text(
        "import pathlib, sys, time\n"
        "pathlib.Path(sys.stdin.read()).touch()\n"
        "time.sleep(0.5)\n"
        "print('done')\n"
    )
    skill = load_skill(folder)
    started = tmp_path / "started"

    async def main() -> ExecutionResult:
        executor = SubprocessExecutor() if kind == "cold" else WarmExecutor()
        if isinstance(executor, WarmExecutor):
            await executor.start()
        try:
            run = asyncio.ensure_future(
                executor.run(skill, str(started).encode(), ExecutionLimits(1.5))
            )
            deadline = time.monotonic() + 20
            while not started.exists():  # the skill runs, its deadline is armed
                assert time.monotonic() < deadline and not run.done(), run
                await asyncio.sleep(0.01)
            time.sleep(2.0)  # the stall itself, on purpose: nothing else runs meanwhile
            return await asyncio.wait_for(run, 20)
        finally:
            await executor.close()

    run = pytest.importorskip("uvloop").run if loop == "uvloop" else asyncio.run
    result = run(main())
    assert result.ok and not result.timed_out, result
    assert result.stdout == b"done\n"
