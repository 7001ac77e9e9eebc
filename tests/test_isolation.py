"""Issue 8: one bad skill must not read the fabric's secrets, outlive its run,
drive the fork server, or smuggle credentials out through its stderr.

Every test runs a hostile fixture skill (``tests/fixtures/skills/hostile``)
through the executors directly, on both the warm and the cold path, with
secrets in the server's environment the way a real deployment has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from skillscale.core.discovery import SkillDiscovery
from skillscale.skill_server import warm as warm_module
from skillscale.skill_server.executor import ExecutionLimits, ResourceLimits, SubprocessExecutor
from skillscale.skill_server.forkserver import RUN
from skillscale.skill_server.warm import WarmExecutor
from tests.helpers import FIXTURE_SKILLS, open_fd_count, pid_alive, wait_pid_gone

HOSTILE = SkillDiscovery([FIXTURE_SKILLS / "hostile"]).scan().skills
SECRETS = {
    "SKILLSCALE_LLM_API_KEY": "sk-isolation-llm-4f1c9e2a7b",
    "OPENAI_API_KEY": "sk-isolation-openai-8d3b6a",
    "AWS_SECRET_ACCESS_KEY": "isolation-aws-secret-55e0c1",
}


@pytest.fixture
def server_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The server's environment holds API keys, as in production."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    yield SECRETS


@pytest.fixture(params=["cold", "warm"])
async def executor(
    request: pytest.FixtureRequest, server_secrets: dict[str, str]
) -> AsyncIterator[SubprocessExecutor]:
    # server_secrets first: the fork server must start from a poisoned environment.
    if request.param == "cold":
        yield SubprocessExecutor()
        return
    warm = WarmExecutor(preload=["json", "colorsys"])
    await warm.start()
    try:
        yield warm
    finally:
        await warm.close()


@pytest.fixture
async def warm(server_secrets: dict[str, str]) -> AsyncIterator[WarmExecutor]:
    executor = WarmExecutor(preload=["json", "colorsys"])
    await executor.start()
    try:
        yield executor
    finally:
        await executor.close()


async def run_json(
    executor: SubprocessExecutor, skill: str, data: bytes = b"", **env: str
) -> dict[str, Any]:
    result = await executor.run(HOSTILE[skill], data, ExecutionLimits(20), env=env or None)
    assert result.ok, result
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


# 1. Secrets through /proc -------------------------------------------------


async def test_no_secret_in_any_environment_block_a_skill_can_read(
    executor: SubprocessExecutor,
) -> None:
    seen = await run_json(executor, "snoop")
    for value in SECRETS.values():
        assert value not in seen["self"], "initial environ block of the skill"
        assert value not in json.dumps(seen["os"]), "os.environ of the skill"
    if isinstance(executor, WarmExecutor):
        # The parent of a warm skill is the fork server, which must have
        # been exec'd with a clean environment.
        assert executor._proc is not None and seen["ppid"] == executor._proc.pid
        assert not seen["parent"].startswith("unreadable"), seen["parent"]
        for value in SECRETS.values():
            assert value not in seen["parent"], "the fork server's environ block"


async def test_llm_key_goes_only_to_the_run_that_was_given_it(
    executor: SubprocessExecutor,
) -> None:
    key = "sk-isolation-handed-to-one-run-91ab"
    given = await run_json(executor, "snoop", SKILLSCALE_LLM_API_KEY=key)
    assert given["os"]["SKILLSCALE_LLM_API_KEY"] == key
    if isinstance(executor, WarmExecutor):
        # A warm run gets it in os.environ only, never in the fork server's block.
        assert key not in given["self"] and key not in given["parent"]
    other = await run_json(executor, "snoop")
    assert "SKILLSCALE_LLM_API_KEY" not in other["os"]
    assert key not in other["self"] and key not in other["parent"]


async def test_a_key_given_to_one_warm_run_is_not_in_the_next_runs_memory(
    warm: WarmExecutor,
) -> None:
    key = "sk-isolation-memory-residue-3c7d5e"
    for _ in range(3):
        await run_json(warm, "snoop", SKILLSCALE_LLM_API_KEY=key)
    result = await warm.run(HOSTILE["memscan"], key[::-1].encode(), ExecutionLimits(30))
    assert result.ok, result
    # Forked from the fork server: anything it ever held, every skill holds.
    assert result.stdout.strip() == b"0"


# 2. Daemons ---------------------------------------------------------------


@contextlib.contextmanager
def reaped_daemons(pid_file: Path) -> Iterator[None]:
    """Whatever the test finds, leave no daemon behind on this machine."""
    try:
        yield
    finally:
        if pid_file.exists():
            for pid in map(int, pid_file.read_text().split()):
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", ["exit", "hang", "kill", "os-exit", "hold"])
async def test_a_setsid_double_forked_daemon_dies_with_its_run(
    executor: SubprocessExecutor, tmp_path: Path, mode: str
) -> None:
    pid_file = tmp_path / "daemon.pids"
    with reaped_daemons(pid_file):
        started = time.monotonic()
        result = await executor.run(
            HOSTILE["daemonize"], f"{mode} {pid_file}".encode(), ExecutionLimits(2.0)
        )
        assert result.stdout.startswith(b"daemon up"), result
        assert result.timed_out == (mode == "hang")
        assert time.monotonic() - started < 10
        daemon, daemons_child = map(int, pid_file.read_text().split())
        # Dead by the time the result is out, not just soon after: a warm run
        # that left a process behind reports no early end (forkserver._report_over).
        assert not pid_alive(daemon) and not pid_alive(daemons_child), mode
        assert wait_pid_gone(daemon, 3), f"daemon {daemon} outlived its run ({mode})"
        assert wait_pid_gone(daemons_child, 3), f"the daemon's child outlived the run ({mode})"


SHELL_DAEMON = """\
pid_file="$(cat)"
# A new session, detached from our process group: only the subreapers hold it.
setsid bash -c 'sleep 300 & echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"; wait' _ "$pid_file" \\
    < /dev/null > /dev/null 2>&1 &
while [ ! -s "$pid_file" ]; do sleep 0.01; done
echo "daemon up $PPID"
"""


async def test_a_shell_skills_daemon_dies_with_its_run(
    executor: SubprocessExecutor, tmp_path: Path
) -> None:
    # run.sh runs are forked by the fork server's exec server on the warm
    # path: what they leave behind is killed there, as for Python runs.
    folder = tmp_path / "shell-daemon"
    (folder / "scripts").mkdir(parents=True)
    (folder / "SKILL.md").write_text("---\nname: shell-daemon\ndescription: Test.\n---\n")
    (folder / "scripts" / "run.sh").write_text(SHELL_DAEMON)
    skill = SkillDiscovery([tmp_path]).scan().skills["shell-daemon"]
    pid_file = tmp_path / "daemon.pids"
    with reaped_daemons(pid_file):
        result = await executor.run(skill, str(pid_file).encode(), ExecutionLimits(10))
        assert result.ok and result.stdout.startswith(b"daemon up"), result
        if isinstance(executor, WarmExecutor):
            assert int(result.stdout.split()[2]) == executor.exec_server_pid
        daemon, daemons_child = map(int, pid_file.read_text().split())
        assert wait_pid_gone(daemon, 5), f"daemon {daemon} outlived its run"
        assert wait_pid_gone(daemons_child, 5), "the daemon's child outlived the run"


async def read_fifo(path: Path) -> str:
    """Everything one writer puts into the FIFO at ``path``, on readiness events."""
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    try:
        while True:
            readable = loop.create_future()
            loop.add_reader(fd, readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            chunk = os.read(fd, 4096)
            if not chunk:
                return data.decode()
            data += chunk
    finally:
        os.close(fd)


async def test_a_daemon_dies_when_the_run_is_cancelled(
    executor: SubprocessExecutor, tmp_path: Path
) -> None:
    fifo = tmp_path / "daemon.fifo"
    os.mkfifo(fifo)
    pids_read = asyncio.ensure_future(read_fifo(fifo))
    task = asyncio.ensure_future(
        executor.run(HOSTILE["daemonize"], f"hang {fifo}".encode(), ExecutionLimits(30))
    )
    try:
        # The daemon reports its pids just before the skill starts to hang.
        pids = [int(p) for p in (await asyncio.wait_for(pids_read, 20)).split()]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            for pid in pids:
                assert wait_pid_gone(pid, 3), f"{pid} outlived a cancelled run"
        finally:
            for pid in pids:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
    finally:
        pids_read.cancel()
        task.cancel()
        await asyncio.gather(pids_read, task, return_exceptions=True)


async def test_a_daemon_dies_when_the_run_is_cancelled_while_it_starts(
    executor: SubprocessExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The skill is running but asyncio has not finished setting the process
    # up (its transport's connection step, a loop step or more) when the run
    # is cancelled: nobody holds the child's pid yet to kill it. The skill
    # reads its input from SKILLSCALE_INTENT, since nothing feeds its stdin
    # before set-up ends.
    if isinstance(executor, WarmExecutor):
        pytest.skip("a warm child starts the skill only after set-up: see the next test")
    if not isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        pytest.skip("the set-up step is held through asyncio's own subprocess transport")
    released, entered = asyncio.Event(), asyncio.Event()
    transport = asyncio.base_subprocess.BaseSubprocessTransport
    original = transport._connect_pipes

    async def slow(self: Any, waiter: Any) -> None:
        entered.set()
        await released.wait()
        await original(self, waiter)

    monkeypatch.setattr(transport, "_connect_pipes", slow)
    fifo = tmp_path / "daemon.fifo"
    os.mkfifo(fifo)
    pids_read = asyncio.ensure_future(read_fifo(fifo))
    task = asyncio.ensure_future(
        executor.run(HOSTILE["daemonize"], f"hang {fifo}".encode(), ExecutionLimits(30))
    )
    try:
        pids = [int(p) for p in (await asyncio.wait_for(pids_read, 20)).split()]
        assert entered.is_set() and not task.done(), "the run got past its set-up"
        task.cancel()
        released.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
        try:
            for pid in pids:
                assert wait_pid_gone(pid, 3), f"{pid} outlived a run cancelled while starting"
        finally:
            for pid in pids:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
    finally:
        released.set()
        pids_read.cancel()
        task.cancel()
        await asyncio.gather(pids_read, task, return_exceptions=True)


def forkserver_children(warm: WarmExecutor) -> list[int]:
    pid = warm.forkserver_pid
    assert pid is not None
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        # Its exec server (which forks run.sh runs) is a child for good.
        return [int(p) for p in fh.read().split() if int(p) != warm.exec_server_pid]


async def test_a_warm_run_cancelled_while_it_is_set_up_never_starts(
    warm: WarmExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warm child is forked first and reads its run's header only once the
    # executor has set the run up; a run cancelled before then must leave no
    # child behind, and its skill must never have started.
    warm.waiting_children = 0
    warm.drop_waiting()
    released, entered = asyncio.Event(), asyncio.Event()
    original = warm_module._send_with_fds

    async def slow(sock: socket.socket, data: bytes, fds: list[int]) -> None:
        # Held once the fork server was asked to fork, before the executor
        # has the child's pid (so before it can give the child its run).
        await original(sock, data, fds)
        if data == RUN:
            entered.set()
            await released.wait()

    monkeypatch.setattr(warm_module, "_send_with_fds", slow)
    fifo = tmp_path / "daemon.fifo"
    os.mkfifo(fifo)
    pids_read = asyncio.ensure_future(read_fifo(fifo))
    task = asyncio.ensure_future(
        warm.run(HOSTILE["daemonize"], f"hang {fifo}".encode(), ExecutionLimits(30))
    )
    try:
        await asyncio.wait_for(entered.wait(), 20)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
        monkeypatch.setattr(warm_module, "_send_with_fds", original)
        released.set()  # a refill (forking a waiting child) may be held up too
        # The fork server handles requests in order: once a later run is
        # done, the abandoned one was forked and found abandoned.
        later_input = f"exit {tmp_path / 'later.pids'}".encode()
        later = await warm.run(HOSTILE["daemonize"], later_input, ExecutionLimits(20))
        assert later.ok, later
        warm.drop_waiting()  # the refill's child, if the later run did not take it
        for pid in forkserver_children(warm):
            # In a thread: the dropped child's connection closes on the loop.
            gone = await asyncio.to_thread(wait_pid_gone, pid, 3)
            assert gone, f"{pid} outlived a run cancelled while set up"
        assert not pids_read.done(), "the skill of a cancelled warm run started"
    finally:
        released.set()
        pids_read.cancel()
        task.cancel()
        await asyncio.gather(pids_read, task, return_exceptions=True)


# 3a. The fork server's socket -----------------------------------------------


async def test_a_skill_cannot_make_the_fork_server_run_anything(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    report = await run_json(warm, "knock", str(marker).encode())
    answered = [r for r in report["reached"] if "answer" in r]
    assert answered == [], answered
    assert not marker.exists()
    # One socket only: the run's report channel to the skill server
    # (forkserver._report_over), which reads one byte from it and nothing else.
    assert len(report["inherited_sockets"]) == 1, report


# 3b. No Python code between fork and exec in a threaded server ----------------


async def test_cold_spawn_runs_no_python_between_fork_and_exec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []

    class Recording(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    result = await SubprocessExecutor().run(HOSTILE["limits"], b"", ExecutionLimits(20))
    assert result.ok, result
    assert seen and all(kw.get("preexec_fn") is None for kw in seen)


async def test_limits_death_signal_and_session_still_apply(executor: SubprocessExecutor) -> None:
    limits = ResourceLimits(
        cpu_seconds=7, memory_bytes=1536 * 1024**2, nproc=4000, fsize_bytes=10**8
    )
    result = await executor.run(HOSTILE["limits"], b"", ExecutionLimits(20, resources=limits))
    assert result.ok, result
    seen = json.loads(result.stdout)
    assert seen["cpu"] == [7, 7] and seen["as"] == [1536 * 1024**2] * 2
    assert seen["nproc"] == [4000, 4000] and seen["fsize"] == [10**8, 10**8]
    assert seen["deathsig"] == signal.SIGKILL and seen["leader"] is True
    assert seen["subreaper"] == 1
    # A shell entry point is exec'd by the trampoline: same limits, same session.
    shell = await executor.run(HOSTILE["limits-sh"], b"", ExecutionLimits(20, resources=limits))
    assert shell.ok, shell
    fields = dict(item.split("=") for item in shell.stdout.decode().split())
    assert fields["cpu"] == "7" and fields["fsize_blocks"] == str(10**8 // 1024)
    assert fields["sid"] == fields["pid"]


# 3c. Credentials in stderr ----------------------------------------------------


async def test_stderr_comes_back_redacted(executor: SubprocessExecutor) -> None:
    result = await executor.run(HOSTILE["leak-stderr"], b"", ExecutionLimits(20))
    assert result.exit_code == 2
    stderr = result.stderr.decode()
    for leaked in ("sk-proj-abcdefghij", "AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghij"):
        assert leaked not in stderr, stderr
    assert "[REDACTED:" in stderr and "connecting with" in stderr


def test_a_truncated_stderr_tail_loses_its_partial_first_line_and_keeps_its_bytes() -> None:
    from skillscale.skill_server.executor import redact_stderr

    tail = b"oj-abcdefghijklmnopqrstuvwxyz0123\nkey AKIAIOSFODNN7EXAMPLE \xff\n"
    assert redact_stderr(tail, truncated=True) == b"key [REDACTED:aws_key] \xff\n"
    assert redact_stderr(b"no secrets \xfe", truncated=False) == b"no secrets \xfe"


def test_an_orphan_out_of_reach_is_skipped_and_its_pidfd_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An orphan that changed its uid (a setuid program a run started) cannot
    # be signalled: the kill says so with None, keeps no pidfd, raises nothing.
    from skillscale.skill_server import forkserver

    child = subprocess.Popen(["sleep", "30"])
    try:

        def refused(*_: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(signal, "pidfd_send_signal", refused)
        monkeypatch.setattr(os, "kill", refused)
        before = open_fd_count()
        assert forkserver._kill_verified(child.pid, {os.getpid()}) is None
        assert open_fd_count() == before
        assert child.poll() is None  # not signalled, as the refusal said
    finally:
        monkeypatch.undo()
        child.kill()
        child.wait()
