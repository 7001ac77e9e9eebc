"""The warm executor's own promises: clean state, fresh files, self-healing, opt-out."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import marshal
import os
import signal
import socket
import struct
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from skillscale.core.events import SKILLS_CHANGED_TOPIC, SkillsChangedEvent
from skillscale.core.skill_format import Skill, load_skill
from skillscale.skill_server.executor import ExecutionLimits, _Run
from skillscale.skill_server.forkserver import (
    RUN,
    ForkServer,
    _read_header,
    encode_header,
    premade_stdio,
)
from skillscale.skill_server.warm import WarmExecutor, imported_names, wanted
from tests.helpers import open_fd_count, wait_pid_gone

PROBE = """\
import os
import sys

import colorsys

colorsys.runs = getattr(colorsys, "runs", 0) + 1
print(f"runs={colorsys.runs} leader={os.getsid(0) == os.getpid()} version=VERSION")
"""


def make_skill(root: Path, name: str, body: str, metadata: str = "") -> Skill:
    folder = root / name
    (folder / "scripts").mkdir(parents=True, exist_ok=True)
    (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: Test.\n{metadata}---\n")
    (folder / "scripts" / "run.py").write_text(body)
    return load_skill(folder)


@pytest.fixture
async def warm() -> AsyncIterator[WarmExecutor]:
    executor = WarmExecutor(preload=["colorsys", "json"])
    await executor.start()
    try:
        yield executor
    finally:
        await executor.close()


async def test_each_run_is_a_fresh_fork_in_its_own_session(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    skill = make_skill(tmp_path, "probe", PROBE.replace("VERSION", "1"))
    outputs = [(await warm.run(skill, b"", ExecutionLimits(10))).stdout for _ in range(3)]
    # The preloaded module's state never carries over from one run to the next.
    assert outputs == [b"runs=1 leader=True version=1\n"] * 3
    assert warm.stats["warm"] == 3 and warm.stats["cold"] == 0


async def test_edits_take_effect_on_the_next_request(warm: WarmExecutor, tmp_path: Path) -> None:
    skill = make_skill(tmp_path, "probe", PROBE.replace("VERSION", "1"))
    assert b"version=1" in (await warm.run(skill, b"", ExecutionLimits(10))).stdout
    script = skill.path / "scripts" / "run.py"
    # Same size, same mtime: the compiled script the skill server caches is
    # checked against the content, not the file's timestamps.
    stat = script.stat()
    script.write_text(PROBE.replace("VERSION", "2"))
    os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert b"version=2" in (await warm.run(skill, b"", ExecutionLimits(10))).stdout
    # A script that does not compile is compiled (and reported) by its child.
    script.write_text("print('unbalanced'\n")
    result = await warm.run(skill, b"", ExecutionLimits(10))
    assert result.exit_code == 1 and b"SyntaxError" in result.stderr, result
    assert b"run.py" in result.stderr


async def test_preloaded_modules_are_already_imported(warm: WarmExecutor, tmp_path: Path) -> None:
    skill = make_skill(tmp_path, "check", "import sys\nprint('colorsys' in sys.modules)\n")
    assert (await warm.run(skill, b"", ExecutionLimits(10))).stdout == b"True\n"


async def test_opt_out_runs_cold(warm: WarmExecutor, tmp_path: Path) -> None:
    skill = make_skill(
        tmp_path, "cold", "import sys\nprint('colorsys' in sys.modules)\n",
        metadata="metadata:\n  warm: \"false\"\n",
    )  # fmt: skip
    assert (await warm.run(skill, b"", ExecutionLimits(10))).stdout == b"False\n"
    assert warm.stats["cold"] == 1 and warm.stats["warm"] == 0


async def test_the_fork_server_comes_back_after_it_dies(warm: WarmExecutor, tmp_path: Path) -> None:
    skill = make_skill(tmp_path, "probe", PROBE.replace("VERSION", "1"))
    assert warm._proc is not None
    os.kill(warm._proc.pid, signal.SIGKILL)
    await warm._proc.wait()
    # The run while it is down still answers (cold), and schedules a restart.
    assert (await warm.run(skill, b"", ExecutionLimits(10))).ok
    assert warm.stats["cold"] == 1 and warm._restarting is not None
    await warm._restarting
    assert warm.running and warm.stats["restarts"] == 1
    assert (await warm.run(skill, b"", ExecutionLimits(10))).ok
    assert warm.stats["warm"] == 1


async def test_each_run_takes_a_fresh_waiting_child(warm: WarmExecutor, tmp_path: Path) -> None:
    # Children forked ahead are used once each: no pid, session or state repeats.
    body = "import os\nprint(os.getpid(), os.getsid(0), os.environ['SKILLSCALE_X'])\n"
    skill = make_skill(tmp_path, "pids", body)
    assert warm.waiting_children >= 1
    seen = []
    for i in range(4):
        result = await warm.run(skill, b"", ExecutionLimits(10), env={"SKILLSCALE_X": str(i)})
        pid, sid, x = result.stdout.split()
        assert pid == sid and x == str(i).encode()
        seen.append(pid)
    assert len(set(seen)) == 4 and warm.stats["warm"] == 4


MAIN_VIEW = """\
import os
import sys

print(__name__, sys.argv == [__file__], sys.path[0] == os.path.dirname(__file__))
print(sys.modules["__main__"].__dict__ is globals(), sorted(k for k in globals() if k[0] != "_"))
print([m for m in sys.modules if "prewarm" in m])
print([k for k in sys.path_importer_cache if k == os.devnull])


def f(x: int) -> None: ...


# Compiled by the skill server for a warm run: none of its __future__ flags, no -O.
print(f.__annotations__["x"] is int, __debug__)
try:
    assert False
except AssertionError:
    print("asserts on")
"""


async def test_a_warm_run_sees_main_as_a_cold_one_does(warm: WarmExecutor, tmp_path: Path) -> None:
    # Both paths run the script in a fresh __main__ (forkserver._run_main
    # and executor.TRAMPOLINE): a script sees the same either way.
    warm_skill = make_skill(tmp_path, "warm-view", MAIN_VIEW)
    cold_skill = make_skill(
        tmp_path, "cold-view", MAIN_VIEW, metadata='metadata:\n  warm: "false"\n'
    )
    assert warm.waiting_children >= 1
    warm_out = (await warm.run(warm_skill, b"", ExecutionLimits(10))).stdout
    cold_out = (await warm.run(cold_skill, b"", ExecutionLimits(10))).stdout
    assert warm.stats["warm"] == 1 and warm.stats["cold"] == 1
    assert warm_out.startswith(b"__main__ True True\nTrue ['os', 'sys']\n"), warm_out
    assert warm_out.endswith(b"True True\nasserts on\n"), warm_out
    assert warm_out == cold_out


async def test_run_sh_is_execd_by_a_warm_child(warm: WarmExecutor, tmp_path: Path) -> None:
    folder = tmp_path / "shell"
    (folder / "scripts").mkdir(parents=True)
    (folder / "SKILL.md").write_text("---\nname: shell\ndescription: Test.\n---\n")
    (folder / "scripts" / "run.sh").write_text(
        'echo "$$ $(ps -o sid= -p $$) $SKILLSCALE_X $(ulimit -n) $(pwd) $PPID"; cat\n'
    )
    skill = load_skill(folder)
    result = await warm.run(skill, b"in", ExecutionLimits(10), env={"SKILLSCALE_X": "y"})
    assert result.ok, result
    first, rest = result.stdout.decode().split("\n", 1)
    pid, sid, x, _nofile, cwd, parent = first.split()
    assert pid == sid and x == "y" and cwd == str(folder) and rest == "in"
    # Forked by the fork server's small exec server, not the preloaded interpreter.
    assert warm.exec_server_pid is not None and int(parent) == warm.exec_server_pid
    assert warm.stats["warm"] == 1 and warm.stats["cold"] == 0
    # Without its exec server, the fork server forks such runs itself.
    os.kill(warm.exec_server_pid, signal.SIGKILL)
    for _ in range(2):  # the first may have been handed to the dying exec server
        result = await warm.run(skill, b"in", ExecutionLimits(10), env={"SKILLSCALE_X": "z"})
    assert result.ok, result
    assert int(result.stdout.split()[5]) == warm.forkserver_pid and warm.stats["cold"] == 0


async def test_waiting_children_come_with_runs_and_go_when_idle(tmp_path: Path) -> None:
    # php-fpm's ondemand: none at start, forked once runs come, let go when idle.
    executor = WarmExecutor(preload=["json"], waiting_children=2, waiting_idle=0.5)
    await executor.start()
    try:
        skill = make_skill(tmp_path, "pids", "import os\nprint(os.getpid())\n")
        assert executor.waiting == 0 and _forkserver_children(executor) == set()
        first = await executor.run(skill, b"", ExecutionLimits(10))
        assert first.ok
        await _until(lambda: executor.waiting == 2)
        waiting = _forkserver_children(executor)
        assert len(waiting) == 2 and int(first.stdout) not in waiting
        # The waiting children serve the next runs; then, idle, they go.
        assert int((await executor.run(skill, b"", ExecutionLimits(10))).stdout) in waiting
        await _until(lambda: executor.waiting == 0 and not _forkserver_children(executor))
        # And the next run after the idle period forks its own child.
        assert (await executor.run(skill, b"", ExecutionLimits(10))).ok
        assert executor.stats["warm"] == 3 and executor.stats["cold"] == 0
    finally:
        await executor.close()


def _forkserver_children(executor: WarmExecutor) -> set[int]:
    pid = executor.forkserver_pid
    assert pid is not None
    children = {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    return children - {executor.exec_server_pid}


async def _until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll the executor's state: no event says a refill or a retirement happened."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_heavy_optional_modules_are_preloaded_once_a_skill_imports_them(
    tmp_path: Path,
) -> None:
    pytest.importorskip("httpx")
    executor = WarmExecutor()  # the default preload: lean until a skill needs more
    await executor.start()
    try:
        assert "httpx" not in executor.preload
        plain = make_skill(tmp_path, "plain", "import sys\nprint('httpx' in sys.modules)\n")
        assert (await executor.run(plain, b"", ExecutionLimits(10))).stdout == b"False\n"
        assert executor._growing is None  # a skill without the import changes nothing
        old = executor.forkserver_pid
        # A run under way on the old fork server while it is replaced.
        slow = make_skill(tmp_path, "slow", "import sys\nsys.stdout.write(sys.stdin.read())\n")
        limits = ExecutionLimits(10)
        proc = await executor.spawn(slow, {}, limits)
        body = "import sys\nprint('httpx' in sys.modules)\nimport httpx\n"
        llm = make_skill(tmp_path, "llm", body)
        # Its first run finds httpx missing (imports it itself) and starts a
        # fork server that has it.
        assert (await executor.run(llm, b"", limits)).stdout == b"False\n"
        assert executor._growing is not None
        await executor._growing
        assert "httpx" in executor.preload and executor.forkserver_pid != old
        assert (await executor.run(llm, b"", limits)).stdout == b"True\n"
        # The old fork server's run still completes, and then it exits.
        result = await _Run(proc, limits, time.monotonic(), sweep=False).complete(b"still here")
        assert result.stdout == b"still here" and result.exit_code == 0
        assert old is not None
        await asyncio.wait_for(executor._retired[0].wait(), 10)
        assert executor.stats["cold"] == 0
    finally:
        await executor.close()


async def test_closing_right_after_a_run_leaves_no_refill_behind(tmp_path: Path) -> None:
    # A finished run refills the waiting children REFILL_DELAY later; closed
    # before that, the executor must not come back to life: no retirement
    # timer, no fill task, no child forked.
    executor = WarmExecutor(preload=["json"], waiting_children=2, waiting_idle=30)
    await executor.start()
    try:
        skill = make_skill(tmp_path, "pids", "import os\nprint(os.getpid())\n")
        assert (await executor.run(skill, b"", ExecutionLimits(10))).ok
    finally:
        await executor.close()
    # Let any refill timer due by now fire (REFILL_DELAY is 2 ms).
    await asyncio.sleep(0.1)
    assert executor._retire is None
    assert executor._refilling is None or executor._refilling.done()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert executor.waiting == 0


FIND_REPORT_CHANNEL = """\
import os
import stat
import sys
import time

# The one socket beyond stdio a warm run holds is its report channel
# (forkserver._report_over): a skill can find it and write to it.
channels = []
for name in os.listdir("/proc/self/fd"):
    try:
        if int(name) > 2 and stat.S_ISSOCK(os.fstat(int(name)).st_mode):
            channels.append(int(name))
    except OSError:
        pass  # the listing's own descriptor, closed by now
assert len(channels) == 1, channels
print(os.getpid(), flush=True)
os.write(channels[0], WRITE)
print("after", flush=True)
AFTER
"""


async def test_a_run_that_reports_its_own_end_early_is_killed_and_gains_nothing(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    body = FIND_REPORT_CHANNEL.replace("WRITE", "bytes((5,))").replace("AFTER", "time.sleep(60)")
    skill = make_skill(tmp_path, "forger", body)
    result = await warm.run(skill, b"", ExecutionLimits(30))
    # The end it claimed, with the code it claimed, as if it had exited so;
    # and it is killed, not left running to its sleep.
    assert result.exit_code == 5 and not result.timed_out, result
    pid = int(result.stdout.split()[0])
    assert wait_pid_gone(pid, 5), "a run that reported its end still runs"


async def test_bytes_that_are_no_report_leave_the_exit_to_decide(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    body = FIND_REPORT_CHANNEL.replace("WRITE", "b'not a report'").replace("AFTER", "sys.exit(3)")
    skill = make_skill(tmp_path, "scribbler", body)
    result = await warm.run(skill, b"", ExecutionLimits(30))
    assert result.exit_code == 3 and result.stdout.endswith(b"after\n"), result


async def test_a_reported_run_keeps_its_code_and_all_its_output(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    # Written unflushed, then an exception: the wrapper flushes, closes
    # stdio, reports 1 (the traceback's code) and only then exits.
    body = "import sys\nsys.stdout.write('x' * 300000)\nraise RuntimeError('boom')\n"
    skill = make_skill(tmp_path, "loud", body)
    for _ in range(3):
        result = await warm.run(skill, b"", ExecutionLimits(30))
        assert result.exit_code == 1 and result.stdout == b"x" * 300000, result.exit_code
        assert b"RuntimeError: boom" in result.stderr


def _framed(blob: bytes) -> bytes:
    return struct.pack("!I", len(blob)) + blob


def _header(**fields: object) -> bytes:
    return _framed(marshal.dumps(fields))


@pytest.mark.parametrize(
    ("tail", "error"),
    [
        (_header(script="/x", code=0), "bad compiled script size"),
        (_header(script="/x", code="3"), "bad compiled script size"),
        (_header(script="/x", code=True), "bad compiled script size"),
        (_header(script="/x", code=99999999999), "bad compiled script size"),
        (_header(script="/x", code=4) + b"abc", "incomplete compiled script"),
        (_header(script="/x", code=2) + b"abc", "more bytes than"),
        (_header(script="/x") + b"abc", "bytes after a header"),
        (_header(script="/x")[:-1], "incomplete header"),
        (b"\x00\x00", "incomplete header"),
        (struct.pack("!I", 1 << 30), "more than"),
        (_framed(b"\xff\x00"), "unreadable header"),
        (_framed(marshal.dumps(["/x"])), "not a mapping"),
    ],
)
def test_a_run_request_is_read_within_its_bounds(tail: bytes, error: str) -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.sendall(tail)
        ours.shutdown(socket.SHUT_WR)
        with pytest.raises(ValueError, match=error):
            _read_header(theirs)
    finally:
        ours.close()
        theirs.close()


def test_a_run_request_carries_its_compiled_script_after_the_header() -> None:
    code = marshal.dumps(compile("x = 1", "/x", "exec"))
    ours, theirs = socket.socketpair()
    try:
        ours.sendall(encode_header({"script": "/x"}, code))
        assert _read_header(theirs) == ({"script": "/x", "code": len(code)}, code)
        header = {"script": "/y", "env": {"A": "b"}, "rlimits": [[9, 64]]}
        ours.sendall(encode_header(header))
        assert _read_header(theirs) == (header, None)
    finally:
        ours.close()
        theirs.close()


class _Trickle:
    """A connection that hands out at most three bytes per read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    def settimeout(self, _: float) -> None:
        pass

    def recv(self, size: int) -> bytes:
        self.reads += 1
        chunk, self.data = self.data[: min(size, 3)], self.data[min(size, 3) :]
        return chunk


def test_a_run_request_read_in_pieces_is_whole() -> None:
    code = marshal.dumps(compile("y = 2", "/x", "exec"))
    conn = _Trickle(encode_header({"script": "/x", "cwd": "/"}, code))
    size = len(conn.data)
    assert _read_header(conn) == ({"script": "/x", "cwd": "/", "code": len(code)}, code)  # type: ignore[arg-type]
    assert conn.reads >= size // 3 and conn.data == b""


@contextlib.contextmanager
def _fork_server_here() -> Iterator[tuple[ForkServer, socket.socket]]:
    """A ForkServer in this process (its signal set-up undone after), and our
    end of its control socket."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    ours, theirs = socket.socketpair()
    server = ForkServer(theirs.detach())
    try:
        yield server, ours
    finally:
        signal.set_wakeup_fd(wakeup)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        server.selector.close()
        if server.hangups is not None:
            server.hangups.close()
        os.close(server.wake_r)
        os.close(server.wake_w)
        server.control.close()
        ours.close()


def _send_run(control: socket.socket, first: int | None = None) -> tuple[socket.socket, int, int]:
    """A run request as the skill server sends it; our ends of its connection,
    stdin and stdout (every far end sent, and closed here)."""
    conn, far = socket.socketpair()
    (stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w) = (os.pipe() for _ in range(3))
    report_r, report_w = socket.socketpair()
    ends = [
        far.fileno() if first is None else first,
        stdin_r,
        stdout_w,
        stderr_w,
        report_w.fileno(),
    ]
    socket.send_fds(control, [RUN], ends)
    for fd in (stdin_r, stdout_w, stderr_w, stderr_r):
        os.close(fd)
    far.close()
    report_w.close()
    report_r.close()
    return conn, stdin_w, stdout_r


def _serves_a_run_next(
    server: ForkServer, control: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next, sound request gets its pid line (the fork itself stubbed: a
    real one would run a child of the test process)."""
    conn, stdin_w, stdout_r = _send_run(control)
    monkeypatch.setattr(os, "fork", lambda: 4_000_001)
    try:
        assert server._receive() is True
    finally:
        monkeypatch.undo()
    conn.settimeout(10)
    assert conn.recv(64) == b'{"pid": 4000001}\n'
    server.children.pop(4_000_001).close()
    for fd in (stdin_w, stdout_r):
        os.close(fd)
    conn.close()


def test_a_fork_that_fails_fails_only_its_run(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Out of processes (a skill can use up RLIMIT_NPROC) or of memory: the run
    # gets a closed connection (the executor's cue to retry, then go cold),
    # its fds are closed, and the fork server goes on serving.
    with _fork_server_here() as (server, control):
        before = open_fd_count()
        conn, stdin_w, stdout_r = _send_run(control)

        def no_fork() -> int:
            raise BlockingIOError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(os, "fork", no_fork)
        assert server._receive() is True
        monkeypatch.undo()
        conn.settimeout(10)
        assert conn.recv(64) == b""  # closed unanswered: no pid line
        assert os.read(stdout_r, 1) == b""  # the fork server kept no stdout end
        with pytest.raises(BrokenPipeError):
            os.write(stdin_w, b"x")  # nor any stdin end
        assert server.children == {}
        for fd in (stdin_w, stdout_r):
            os.close(fd)
        conn.close()
        assert open_fd_count() == before
        _serves_a_run_next(server, control, monkeypatch)
    assert "cannot fork a run" in capfd.readouterr().err


def test_a_request_whose_connection_is_no_socket_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _fork_server_here() as (server, control):
        before = open_fd_count()
        pipe_r, pipe_w = os.pipe()
        conn, stdin_w, stdout_r = _send_run(control, first=pipe_r)
        assert server._receive() is True  # no crash: nothing forked
        assert server.children == {}
        assert os.read(stdout_r, 1) == b""
        os.close(pipe_r)
        with pytest.raises(BrokenPipeError):
            os.write(pipe_w, b"x")  # the fork server closed the pipe it got
        for fd in (stdin_w, stdout_r, pipe_w):
            os.close(fd)
        conn.close()
        assert open_fd_count() == before
        _serves_a_run_next(server, control, monkeypatch)


async def test_a_process_the_script_forks_does_not_end_the_run(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    # The forked copy leaves the script by SystemExit, as the run itself would,
    # and passes through the same wrapper: only the run's process may report.
    body = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    sys.exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "time.sleep(0.3)\n"
        "print('parent done')\n"
        "sys.exit(3)\n"
    )
    skill = make_skill(tmp_path, "forker", body)
    result = await warm.run(skill, b"", ExecutionLimits(30))
    assert result.exit_code == 3 and result.stdout == b"parent done\n", result


GLOBALS_VIEW = """\
print(sorted(globals()))
print(type(__builtins__).__name__, type(__loader__).__name__, __spec__, __package__, __cached__)
"""


async def test_a_warm_run_sees_the_globals_python_gives_a_script(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    skill = make_skill(tmp_path, "globals", GLOBALS_VIEW)
    assert skill.entrypoint is not None
    warm_out = (await warm.run(skill, b"", ExecutionLimits(10))).stdout
    cold = make_skill(
        tmp_path, "globals-cold", GLOBALS_VIEW, metadata='metadata:\n  warm: "false"\n'
    )
    cold_out = (await warm.run(cold, b"", ExecutionLimits(10))).stdout
    plain = await asyncio.create_subprocess_exec(
        sys.executable, "-S", str(skill.entrypoint), stdout=asyncio.subprocess.PIPE
    )
    python_out, _ = await asyncio.wait_for(plain.communicate(), 30)
    assert warm_out == python_out == cold_out, (warm_out, python_out, cold_out)
    assert b"module SourceFileLoader None None None" in warm_out


async def test_a_run_is_answered_on_its_report_without_waiting_for_the_reap(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    skill = make_skill(tmp_path, "four", "import sys\nsys.stdout.write('out')\nsys.exit(4)\n")
    assert (await warm.run(skill, b"", ExecutionLimits(10))).exit_code == 4
    await warm._fill()  # a waiting child, forked before the fork server stops
    assert warm.waiting >= 1 and warm.forkserver_pid is not None
    # A stopped fork server reaps nothing and sends no status: only the
    # child's own report can end the run with its code (the exit alone would
    # leave the code unknown, None, after the pipe grace).
    os.kill(warm.forkserver_pid, signal.SIGSTOP)
    try:
        result = await warm.run(skill, b"", ExecutionLimits(10, pipe_grace=0.2))
    finally:
        os.kill(warm.forkserver_pid, signal.SIGCONT)
    assert result.exit_code == 4 and result.stdout == b"out", result


async def test_a_report_and_an_exit_seen_together_end_the_run_with_the_report() -> None:
    # The exit's callback may run first in the loop's turn that has both:
    # the report, written before the exit, must still give the run its code
    # (from a fork server that is stuck, the exit's status never comes).
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.write(write, bytes((7,)))

    class Reported:
        pid = os.getpid()
        returncode = None

        @staticmethod
        def take_report_fd() -> int:
            return read

    run = _Run(Reported(), ExecutionLimits(10), time.monotonic(), sweep=False)  # type: ignore[arg-type]
    try:
        run._on_exit()
        assert run._over.done() and run._over.result() == 7
    finally:
        os.close(read)
        os.close(write)


async def test_a_runs_original_streams_are_its_streams(warm: WarmExecutor, tmp_path: Path) -> None:
    # As python starts a script: sys.__stdout__ is sys.stdout, and the idiom
    # that restores sys.stdout from it keeps the output in order.
    body = (
        "import io, sys\nprint(sys.stdout is sys.__stdout__, sys.stderr is sys.__stderr__,"
        " sys.stdin is sys.__stdin__)\nprint('one')\nsys.stdout = io.StringIO()\n"
        "print('hidden')\nsys.stdout = sys.__stdout__\nsys.__stdout__.write('two\\n')\n"
        "print('three')\n"
    )
    skill = make_skill(tmp_path, "originals", body)
    result = await warm.run(skill, b"", ExecutionLimits(10))
    assert result.stdout == b"True True True\none\ntwo\nthree\n", result
    cold = await asyncio.create_subprocess_exec(
        sys.executable, str(skill.path / "scripts" / "run.py"), stdout=asyncio.subprocess.PIPE
    )
    assert (await cold.communicate())[0] == result.stdout


STDIO_VIEW = """\
import sys

for stream in (sys.stdin, sys.stdout, sys.stderr):
    print(stream.fileno(), stream.seekable(), stream.encoding, stream.errors,
          stream.line_buffering, stream.readable(), stream.writable())
sys.stdin.read()  # the run's own input only
print(repr(sys.stdin.read()), end="")
sys.stderr.write("err\\n")
"""


async def test_a_warm_runs_stdio_is_made_for_its_pipes(warm: WarmExecutor, tmp_path: Path) -> None:
    # The wrappers are made once in the fork server, over pipes like a run's:
    # made over its own fds 0-2 (stdin is /dev/null, which is seekable) they
    # would call the run's pipes seekable.
    skill = make_skill(tmp_path, "stdio", STDIO_VIEW)
    for data in (b"first input", b"second"):
        result = await warm.run(skill, data, ExecutionLimits(10))
        assert result.exit_code == 0, result
        assert result.stdout == (
            b"0 False utf-8 strict False True False\n"
            b"1 False utf-8 strict False False True\n"
            b"2 False utf-8 backslashreplace True False True\n"
            b"''"
        ), result.stdout
        assert result.stderr == b"err\n"
    assert warm.stats["warm"] == 2


def test_premade_stdio_is_made_over_pipes_and_gives_fds_0_to_2_back(tmp_path: Path) -> None:
    seekable = tmp_path / "stdin"
    seekable.write_bytes(b"")
    before = [os.fstat(fd) for fd in (0, 1, 2)]
    fds = open_fd_count()
    replaced = os.open(seekable, os.O_RDONLY)
    saved = os.dup(0)
    os.dup2(replaced, 0)
    try:
        stdio = premade_stdio()
        after = [os.fstat(fd) for fd in (0, 1, 2)]
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(replaced)
    assert stdio is not None
    assert [s.fileno() for s in stdio] == [0, 1, 2]
    assert not any(s.seekable() for s in stdio)
    # fd 0 is the file again, fds 1 and 2 what they were.
    assert (after[0].st_dev, after[0].st_ino) == (
        os.stat(seekable).st_dev,
        os.stat(seekable).st_ino,
    )
    assert [(a.st_dev, a.st_ino) for a in after[1:]] == [(b.st_dev, b.st_ino) for b in before[1:]]
    assert open_fd_count() == fds  # the pipes and the saved fds are closed


PREMADE_EDGES = """\
import os, resource, sys
from skillscale.skill_server.forkserver import premade_stdio

def fds():  # not /proc/self/fd: listing it takes an fd, the lowest free one
    out = []
    for fd in range(256):
        try:
            os.fstat(fd)
        except OSError:
            continue
        out.append(fd)
    return out

def ids(targets):
    return [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in targets]

# fd 2 closed: None, and fds 0 and 1 are what they were (no swap).
before, open_before = ids((0, 1)), fds()
os.close(2)
got = premade_stdio()
out = [got is None, ids((0, 1)) == before, fds() == [fd for fd in open_before if fd != 2]]
# Out of fds after the saved copies: None, and nothing leaks.
os.dup2(1, 2)
open_before = fds()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_before) + 5, hard))
got = premade_stdio()
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
out += [got is None, fds() == open_before]
print(out)
"""


async def test_premade_stdio_gives_up_cleanly_on_a_closed_fd_or_no_fds() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PREMADE_EDGES, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out == b"[True, True, True, True, True]\n", out


FOLDED = "".join(f"a{i} = '{i:04d}' * 1024\n" for i in range(1000)) + "print(len(a999))\n"
"""1000 distinct 4 KiB constants, folded at compile time: 27 KB of source, 4 MB of code."""


async def test_scripts_the_skill_server_should_not_compile_are_left_to_the_child(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    cases = {
        # Folded constants: code too large to hold and send.
        "folded": (FOLDED, 0, b"4096\n"),
        # The compiler recurses past its limit: the child reports it.
        "deep": ("x = " + "(" * 300_000 + ")" * 300_000 + "\n", 1, b""),
        # A warning belongs on the run's stderr, where the child puts it.
        "warns": ("print('x' is 'x')\n", 0, b"True\n"),
    }
    for name, (body, code, out) in cases.items():
        skill = make_skill(tmp_path, name, body)
        result = await warm.run(skill, b"", ExecutionLimits(20))
        assert result.exit_code == code and result.stdout == out, (name, result)
        assert warm._compiled(skill.entrypoint) is None if skill.entrypoint else False, name
    warns = await warm.run(
        make_skill(tmp_path, "warns", cases["warns"][0]), b"", ExecutionLimits(20)
    )
    assert b"SyntaxWarning" in warns.stderr, warns
    # A FIFO in the script's place blocks neither the skill server nor the
    # other runs: only its own run waits, until its timeout.
    fifo_skill = make_skill(tmp_path, "fifo", "")
    assert fifo_skill.entrypoint is not None
    fifo_skill.entrypoint.unlink()
    os.mkfifo(fifo_skill.entrypoint)
    slow = asyncio.ensure_future(warm.run(fifo_skill, b"", ExecutionLimits(2)))
    quick = await warm.run(make_skill(tmp_path, "quick", "print('ok')\n"), b"", ExecutionLimits(10))
    assert quick.stdout == b"ok\n" and not slow.done()
    assert (await asyncio.wait_for(slow, 20)).timed_out


def test_import_statements_are_read_from_the_source() -> None:
    source = (
        "import os, csv as table\n"
        "    import urllib.parse\n"
        "from decimal import Decimal\n"
        "from . import sibling\n"
        "# import statistics\n"
        "x = 'import random'\n"
    )
    names = imported_names(source)
    assert names >= {"os", "csv", "urllib.parse", "decimal"}
    assert not names & {"table", "statistics", "random", "sibling"}
    candidates = ["csv", "urllib.parse", "decimal", "statistics", "random", "uuid"]
    assert wanted(names, candidates) == {"csv", "urllib.parse", "decimal"}
    # A submodule of a candidate is the candidate; a parent package is not.
    assert wanted(frozenset({"xml.dom", "urllib"}), ["xml", "urllib.parse"]) == {"xml"}


CHECK_DECIMAL = "import sys\nprint('decimal' in sys.modules)\n"


async def test_the_default_preload_is_what_the_skills_import(tmp_path: Path) -> None:
    # Every module the fork server holds costs each fork, so a server of skills
    # that import nothing forks from a bare interpreter.
    plain = make_skill(tmp_path, "plain", CHECK_DECIMAL)
    executor = WarmExecutor()
    executor.expect([plain.entrypoint] if plain.entrypoint else [])
    assert executor.preload == []
    await executor.start()
    try:
        assert (await executor.run(plain, b"", ExecutionLimits(10))).stdout == b"False\n"
        assert executor._growing is None
    finally:
        await executor.close()
    # Told of a skill that imports a candidate before it starts: preloaded from the start.
    money = make_skill(tmp_path, "money", CHECK_DECIMAL + "import decimal\n")
    executor = WarmExecutor()
    executor.expect([p for p in (plain.entrypoint, money.entrypoint) if p])
    assert executor.preload == ["decimal"]
    await executor.start()
    try:
        assert (await executor.run(money, b"", ExecutionLimits(10))).stdout == b"True\n"
        assert (await executor.run(plain, b"", ExecutionLimits(10))).stdout == b"True\n"
        assert executor._growing is None
    finally:
        await executor.close()


async def test_a_new_skills_imports_grow_the_preload_once_seen(tmp_path: Path) -> None:
    executor = WarmExecutor()
    await executor.start()
    try:
        old = executor.forkserver_pid
        money = make_skill(tmp_path, "money", CHECK_DECIMAL + "from decimal import Decimal\n")
        # Its first run imports the module itself and starts a fork server that has it.
        assert (await executor.run(money, b"", ExecutionLimits(10))).stdout == b"False\n"
        assert executor._growing is not None
        await executor._growing
        assert executor.preload == ["decimal"] and executor.forkserver_pid != old
        assert (await executor.run(money, b"", ExecutionLimits(10))).stdout == b"True\n"
        # Told after its start (a reload), it grows at once, before any run.
        stats = make_skill(tmp_path, "stats", "import statistics\nprint('ok')\n")
        executor.expect([stats.entrypoint] if stats.entrypoint else [])
        assert executor._growing is not None and not executor._growing.done()
        await executor._growing
        assert executor.preload == ["decimal", "statistics"]
        # A module that is not a candidate is never imported on a skill's say-so.
        other = make_skill(tmp_path, "other", "import colorsys\nprint('ok')\n")
        executor.expect([other.entrypoint] if other.entrypoint else [])
        assert executor.preload == ["decimal", "statistics"] and executor._growing.done()
        assert executor.stats["cold"] == 0
    finally:
        await executor.close()


async def test_a_server_preloads_what_its_skills_import(tmp_path: Path) -> None:
    from skillscale.core.memory_bus import MemoryBus
    from skillscale.proxy import Proxy, ProxyConfig
    from skillscale.skill_server.server import ServerConfig, SkillServer

    make_skill(tmp_path / "cat", "money", CHECK_DECIMAL + "import decimal\n")
    make_skill(tmp_path / "cat", "plain", CHECK_DECIMAL)
    bus = MemoryBus()
    config = ServerConfig(topics=["T"], skills_dirs=[tmp_path / "cat"], workers=1)
    async with Proxy(ProxyConfig(metrics_port=None), transport=bus), \
            SkillServer(config, transport=bus) as server:  # fmt: skip
        executor = server.executor
        assert isinstance(executor, WarmExecutor)
        # Known at the start: the first fork server has it, none is started beside it.
        assert executor.preload == ["decimal"] and executor._growing is None
        plain = server.registry.catalog.skills["plain"]
        assert (await executor.run(plain, b"", ExecutionLimits(10))).stdout == b"True\n"
        # A skill that appears on a reload is expected at once.
        make_skill(tmp_path / "cat", "stats", "import statistics\n")
        assert server.registry.reload_if_changed()
        server._expect_imports()
        assert executor._growing is not None
        await executor._growing
        assert executor.preload == ["decimal", "statistics"]
        # So does one that a skills-changed event on the bus brought in.
        make_skill(tmp_path / "cat", "wrap", "import textwrap\n")
        event = SkillsChangedEvent(change="created", skill="wrap").model_dump_json().encode()
        pub = bus.publisher(config.proxy_xsub, hwm=100)
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while "textwrap" not in executor.preload and (
                executor._growing is None or executor._growing.done()
            ):
                assert asyncio.get_running_loop().time() < deadline, executor.preload
                pub.send([SKILLS_CHANGED_TOPIC.encode(), event])
                await asyncio.sleep(0.05)  # events are best-effort: sent until one reloads
        finally:
            pub.close()
        if executor._growing is not None:
            await executor._growing
        assert executor.preload == ["decimal", "statistics", "textwrap"]


def _forkservers() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as fh:
            pids.update(int(p) for p in fh.read().split())
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"forkserver.py" in fh.read():
                    found.add(pid)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc")
async def test_a_grow_cancelled_by_close_leaves_no_fork_server(tmp_path: Path) -> None:
    # expect() after start begins a grow; closing while the new fork server is
    # still starting cancels it: that process is killed and reaped, not left.
    gc.collect()  # what earlier tests left, collected before ours
    executor = WarmExecutor()
    await executor.start()
    try:
        first = executor.forkserver_pid
        money = make_skill(tmp_path, "money", "import decimal\n")
        executor.expect([money.entrypoint] if money.entrypoint else [])
        grow = executor._growing
        assert grow is not None
        deadline = asyncio.get_running_loop().time() + 10
        while not (_forkservers() - {first}):  # the new one is spawned (no event to wait on)
            assert asyncio.get_running_loop().time() < deadline, "no second fork server"
            await asyncio.sleep(0.001)
        assert not grow.done()
        started = _forkservers() - {first}
    finally:
        await executor.close()
    assert grow.done() and not (_forkservers() & started)
    del grow
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()  # an abandoned subprocess transport would warn here
    # (Only ours: other tests' garbage may be collected here too.)
    assert not [w for w in caught if "Subprocess" in str(w.message)], [
        str(w.message) for w in caught
    ]
    for pid in started:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped already, not a zombie left to us


async def test_the_import_scan_reads_no_fifo_and_no_huge_script(tmp_path: Path) -> None:
    # The default executor reads skills' sources for their imports, at start
    # and per run: a FIFO in a script's place must not block the skill server
    # (only its own run waits, until its timeout), and a script past the bound
    # is not read for it.
    fifo_skill = make_skill(tmp_path, "fifo", "")
    assert fifo_skill.entrypoint is not None
    fifo_skill.entrypoint.unlink()
    os.mkfifo(fifo_skill.entrypoint)
    huge = make_skill(tmp_path, "huge", "import decimal\n" + "#" * (300 * 1024) + "\n")
    executor = WarmExecutor()
    executor.expect([p for p in (fifo_skill.entrypoint, huge.entrypoint) if p])
    assert executor.preload == []
    await executor.start()
    try:
        slow = asyncio.ensure_future(executor.run(fifo_skill, b"", ExecutionLimits(2)))
        quick = make_skill(tmp_path, "quick", "print('ok')\n")
        assert (await executor.run(quick, b"", ExecutionLimits(10))).stdout == b"ok\n"
        assert not slow.done()
        assert (await asyncio.wait_for(slow, 20)).timed_out
        assert (await executor.run(huge, b"", ExecutionLimits(10))).exit_code == 0
    finally:
        await executor.close()


async def test_a_header_larger_than_the_socket_buffer_reaches_its_child(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    # Compiled code travels after the header, on the child's connection: a
    # large script's is more than that socket takes at once, and the rest
    # follows as the child reads.
    body = "".join(f"value_{i} = {i} * 2 + 1\n" for i in range(9000))
    skill = make_skill(tmp_path, "big", body + "print(value_8999)\n")
    assert skill.entrypoint is not None
    compiled = warm._compiled(skill.entrypoint)
    probe, _peer = socket.socketpair()
    with probe, _peer:
        room = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert compiled is not None and len(compiled) > room
    result = await warm.run(skill, b"", ExecutionLimits(20))
    assert result.ok and result.stdout == b"17999\n", result
    assert warm.stats == {"warm": 1, "cold": 0, "restarts": 0, "reused": 0}


async def test_a_sweep_that_fails_after_the_fork_server_died_does_not_spin_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dead fork server's runs left their descendants to us; killing one can
    # fail (it changed its uid). The run still ends once, and the connection
    # at EOF is not watched again: each loop step would call back otherwise.
    import skillscale.skill_server.warm as warm_module

    executor = WarmExecutor(preload=[], waiting_children=0)
    await executor.start()
    calls = 0

    def refused() -> int:
        nonlocal calls
        calls += 1
        raise PermissionError(1, "Operation not permitted")

    try:
        slow = make_skill(tmp_path, "slow", "import time\ntime.sleep(30)\n")
        run = asyncio.ensure_future(executor.run(slow, b"", ExecutionLimits(60)))
        while not executor._waiters:
            await asyncio.sleep(0)  # until its child is forked
        monkeypatch.setattr(warm_module, "sweep_orphans", refused)
        pid = executor.forkserver_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        result = await asyncio.wait_for(run, 20)
        assert not result.ok and result.exit_code is not None, result
        seen = calls
        for _ in range(50):
            await asyncio.sleep(0)
        assert calls == seen <= 1
    finally:
        monkeypatch.undo()
        await executor.close()


async def test_closing_with_runs_in_flight_ends_them_without_a_cancellation(
    tmp_path: Path,
) -> None:
    # close() stops the fork server, whose children die with it: a run
    # waiting for its child's status gets the kill's, not a CancelledError
    # it never asked for.
    executor = WarmExecutor(preload=[], waiting_children=0)
    await executor.start()
    slow = make_skill(tmp_path, "slow", "import time\ntime.sleep(30)\n")
    runs = [asyncio.ensure_future(executor.run(slow, b"", ExecutionLimits(60))) for _ in range(3)]
    try:
        while len(executor._waiters) < len(runs):
            await asyncio.sleep(0)  # until every child is forked
    finally:
        await executor.close()
    results = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 20)
    for result in results:
        assert not isinstance(result, BaseException), result
        assert not result.ok and result.exit_code is not None, result
