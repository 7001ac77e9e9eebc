"""``isolation: reused-process``: runs of one skill share a process, in turn.

What the mode gives up is a fresh process per run (so state one run leaves,
the next run of the same skill sees); what it keeps is tested here: each run
its own input, output, environment and exit code, one reply per run, the
timeout, no process or thread outliving its run, no process shared between
skills, and bounds on how long and how often one process is reused.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from skillscale.core.skill_format import Skill
from skillscale.skill_server.executor import ExecutionLimits, ExecutionResult
from skillscale.skill_server.forkserver import _read_request, encode_header
from skillscale.skill_server.warm import WarmExecutor
from tests.helpers import open_fd_count, wait_pid_gone
from tests.test_fabric_cases import Fabric, explicit
from tests.test_warm import _until, make_skill

pytestmark = pytest.mark.timeout(120)

REUSED = "metadata:\n  isolation: reused-process\n"

COUNTER = """\
import os, sys
import colorsys

colorsys.runs = getattr(colorsys, "runs", 0) + 1
data = sys.stdin.read()
home = os.path.dirname(os.path.dirname(__file__))
print(f"pid={os.getpid()} runs={colorsys.runs} in={data} "
      f"intent={os.environ['SKILLSCALE_INTENT']} cwd={os.getcwd() == home} "
      f"leader={os.getsid(0) == os.getpid()} extra={os.environ.get('SKILLSCALE_LEFT', '-')}")
os.environ["SKILLSCALE_LEFT"] = data
sys.exit(colorsys.runs)
"""


@pytest.fixture
async def warm() -> AsyncIterator[WarmExecutor]:
    executor = WarmExecutor(preload=["colorsys"])
    await executor.start()
    try:
        yield executor
    finally:
        await executor.close()


async def run(
    executor: WarmExecutor, skill: Skill, data: str, timeout: float = 20
) -> ExecutionResult:
    return await executor.run(skill, data.encode(), ExecutionLimits(timeout))


def fields(result: ExecutionResult) -> dict[str, str]:
    return dict(part.split("=", 1) for part in result.stdout.decode().split())


async def test_runs_of_a_reused_skill_share_one_process_in_turn(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    skill = make_skill(tmp_path, "counter", COUNTER, REUSED)
    results = [await run(warm, skill, f"call{i}") for i in range(4)]
    seen = [fields(r) for r in results]
    # Module state carries over (what the mode gives up) ...
    assert [s["runs"] for s in seen] == ["1", "2", "3", "4"]
    assert len({s["pid"] for s in seen}) == 1
    # ... but each run has its own input, environment, directory and exit code.
    assert [s["in"] for s in seen] == [f"call{i}" for i in range(4)]
    assert [s["intent"] for s in seen] == [f"call{i}" for i in range(4)]
    assert all(s["extra"] == "-" for s in seen), "an environment variable outlived its run"
    assert all(s["cwd"] == "True" and s["leader"] == "True" for s in seen)
    assert [r.exit_code for r in results] == [1, 2, 3, 4]
    assert warm.stats["reused"] == 3 and warm.reused_waiting == 1


async def test_skills_never_share_a_process_and_fresh_ones_stay_fresh(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    first = make_skill(tmp_path, "first", COUNTER, REUSED)
    second = make_skill(tmp_path, "second", COUNTER, REUSED)
    fresh = make_skill(tmp_path, "fresh", COUNTER)
    pids: dict[str, list[str]] = {"first": [], "second": [], "fresh": []}
    for _ in range(3):
        for name, skill in (("first", first), ("second", second), ("fresh", fresh)):
            pids[name].append(fields(await run(warm, skill, name))["pid"])
    assert len(set(pids["first"])) == 1 and len(set(pids["second"])) == 1
    assert set(pids["first"]) != set(pids["second"])
    assert len(set(pids["fresh"])) == 3
    assert not set(pids["fresh"]) & set(pids["first"] + pids["second"])


async def test_concurrent_runs_of_one_skill_each_have_a_process(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    body = "import os, sys, time\ntime.sleep(0.3)\nprint(os.getpid(), sys.stdin.read())\n"
    skill = make_skill(tmp_path, "slow", body, REUSED)
    for _round in range(2):
        results = await asyncio.gather(*(run(warm, skill, f"r{i}") for i in range(3)))
        assert sorted(r.stdout.split()[1] for r in results) == [b"r0", b"r1", b"r2"]
        assert len({r.stdout.split()[0] for r in results}) == 3
    assert warm.reused_waiting == 3 and warm.stats["reused"] == 3


LEAVER = """\
import os, subprocess, sys, threading, time
what = sys.stdin.read()
if what == "process":
    subprocess.Popen(["sleep", "60"])
elif what == "thread":
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
elif what == "forked":
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
elif what == "crash":
    os._exit(5)
elif what == "raise":
    raise RuntimeError("boom")
elif what == "hang":
    time.sleep(60)
print(os.getpid())
"""


@pytest.mark.parametrize(
    ("leave", "code"), [("process", 0), ("thread", 0), ("forked", 0), ("crash", 5)]
)
async def test_a_run_that_leaves_anything_behind_ends_its_process(
    warm: WarmExecutor, tmp_path: Path, leave: str, code: int
) -> None:
    skill = make_skill(tmp_path, "leaver", LEAVER, REUSED)
    before = int((await run(warm, skill, "nothing")).stdout)
    result = await run(warm, skill, leave)
    assert result.exit_code == code, result
    # The process that ran it (with all it left) is gone, not waiting for a run ...
    assert wait_pid_gone(before, 10)
    # ... and the next run has a process of its own, itself reused again.
    after = [int((await run(warm, skill, "nothing")).stdout) for _ in range(2)]
    assert after[0] == after[1] != before
    assert warm.reused_waiting == 1


async def test_an_exception_or_sys_exit_keeps_the_process(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    skill = make_skill(tmp_path, "leaver", LEAVER + "raise SystemExit(3)\n", REUSED)
    first = await run(warm, skill, "nothing")
    assert first.exit_code == 3
    failed = await run(warm, skill, "raise")
    assert failed.exit_code == 1 and b"RuntimeError: boom" in failed.stderr
    last = await run(warm, skill, "nothing")
    assert last.exit_code == 3 and last.stdout == first.stdout


async def test_a_run_out_of_time_is_killed_and_the_next_starts_afresh(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    skill = make_skill(tmp_path, "leaver", LEAVER, REUSED)
    before = int((await run(warm, skill, "nothing")).stdout)
    result = await run(warm, skill, "hang", timeout=1)
    assert result.timed_out and not result.ok
    assert wait_pid_gone(before, 10)
    after = int((await run(warm, skill, "nothing")).stdout)
    assert after != before


async def test_output_and_input_never_cross_from_one_run_to_the_next(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    # A logging handler made by the first run holds that run's sys.stderr;
    # a print without a newline sits in a buffer at the script's end; the
    # first run reads one byte of its input and leaves the rest.
    body = """\
import logging, sys
import colorsys
if not hasattr(colorsys, "log"):
    colorsys.log = logging.getLogger("reused")
    colorsys.log.addHandler(logging.StreamHandler(sys.stderr))
colorsys.log.warning("log of " + sys.argv[0][-6:])
first = sys.stdin.read(1)
if first == "a":
    print("partial", end="")
else:
    print("rest=" + first + sys.stdin.read())
"""
    skill = make_skill(tmp_path, "streams", body, REUSED)
    one = await run(warm, skill, "abcdefgh" * 1000)
    two = await run(warm, skill, "xyz")
    assert one.stdout == b"partial" and one.stderr == b"log of run.py\n"
    assert two.stdout == b"rest=xyz\n" and two.stderr == b"log of run.py\n"
    assert warm.stats["reused"] == 1


async def test_a_process_goes_after_its_runs_and_when_idle(tmp_path: Path) -> None:
    executor = WarmExecutor(preload=["colorsys"], max_reused_runs=3, waiting_idle=0.5)
    await executor.start()
    try:
        skill = make_skill(tmp_path, "leaver", LEAVER, REUSED)
        pids = [int((await run(executor, skill, "nothing")).stdout) for _ in range(4)]
        assert pids[0] == pids[1] == pids[2] != pids[3]
        assert wait_pid_gone(pids[0], 10)
        assert executor.reused_waiting == 1
        # Idle past waiting_idle: let go, like waiting children.
        await _until(lambda: executor.reused_waiting == 0)
        assert await asyncio.to_thread(wait_pid_gone, pids[3], 10)
    finally:
        await executor.close()


async def test_nonsense_on_its_channels_costs_the_script_its_process_only(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    # A reused process holds its report channel and its channel to the skill
    # server (for its next runs) while the script runs: what the script
    # writes there makes its run an honest failure (the report is not
    # believed, so the run ends at its timeout), and ends that process; the
    # fork server's status lines come on a connection the script never holds.
    body = """\
import os, stat, sys
spoil = sys.stdin.read() == "spoil"
for fd in range(3, 64):
    try:
        if spoil and stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.write(fd, b'{"status": 0}\\nagain\\nnonsense\\n')
    except OSError:
        pass
print(os.getpid())
"""
    skill = make_skill(tmp_path, "spoiler", body, REUSED)
    before = int((await run(warm, skill, "fine")).stdout)
    spoiled = await run(warm, skill, "spoil", timeout=2)
    assert spoiled.timed_out and not spoiled.ok, spoiled
    assert wait_pid_gone(before, 10)
    after = [int((await run(warm, skill, "fine")).stdout) for _ in range(2)]
    assert after[0] == after[1] != before


@pytest.mark.parametrize("how", ["cramp", "leak"])
async def test_a_run_that_leaves_its_process_short_of_fds_ends_it(
    warm: WarmExecutor, tmp_path: Path, how: str
) -> None:
    # The first run leaves its process unable to receive the next run's fds
    # (its own RLIMIT_NOFILE lowered, or more than a thousand fds kept open):
    # that process must not take the next run, which is another caller's
    # and runs, in a new process.
    body = """\
import os, resource, sys
import colorsys
how = sys.stdin.read()
if how == "cramp":
    resource.setrlimit(resource.RLIMIT_NOFILE, (6, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
elif how == "leak":
    colorsys.kept = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
print(os.getpid())
"""
    skill = make_skill(tmp_path, "cramped", body, REUSED)
    first = int((await run(warm, skill, "fine")).stdout)
    assert int((await run(warm, skill, how)).stdout) == first
    after = await run(warm, skill, "fine")
    assert after.ok and int(after.stdout) != first, after
    assert wait_pid_gone(first, 10)


@pytest.mark.parametrize("metadata", [REUSED, ""], ids=["reused", "fresh"])
async def test_output_the_script_left_in_its_own_buffer_is_its_runs(
    warm: WarmExecutor, tmp_path: Path, metadata: str
) -> None:
    # A buffered writer over fd 1 that only __main__ held, never flushed:
    # python flushes it at its exit, and so must a run, into its own output.
    # (After what print() left in sys.stdout, as python orders them.)
    body = (
        "import sys\nout = open(sys.stdout.fileno(), 'wb', closefd=False)\n"
        "print('reply', end=' ')\nout.write(b'for ' + sys.stdin.read().encode())\n"
    )
    skill = make_skill(tmp_path, "buffered", body, metadata)
    outputs = [(await run(warm, skill, f"caller{i}")).stdout for i in range(3)]
    assert outputs == [b"reply for caller0", b"reply for caller1", b"reply for caller2"]
    script = skill.path / "scripts" / "run.py"
    cold = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert (await cold.communicate(b"caller0"))[0] == outputs[0]  # as python gives it


SNOOP = """\
import os, stat, sys, threading, time
import colorsys
data = sys.stdin.read()
sockets = {}
for fd in range(3, 64):
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            sockets[os.readlink(f"/proc/self/fd/{fd}")] = fd
    except OSError:
        pass
if data == "fake":
    # The channel is the socket that was there in the last run too.
    for name, fd in sockets.items():
        if name in getattr(colorsys, "seen", ()):
            os.write(fd, b"again\\n")
    threading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()
colorsys.seen = set(sockets)
print(os.getpid())
"""


async def test_an_again_the_script_says_itself_never_passes_off_a_run(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    # It makes the skill server keep a process that then exits (it left a
    # thread). A run handed to it before its exit status came fails; one
    # after runs in a new process. Neither reads as an (empty) success.
    skill = make_skill(tmp_path, "snoop", SNOOP, REUSED)
    for _attempt in range(5):
        first = int((await run(warm, skill, "a")).stdout)
        assert int((await run(warm, skill, "fake")).stdout) == first
        victim = await run(warm, skill, "victim")
        if victim.ok:
            assert int(victim.stdout) != first, victim
        else:
            assert victim.exit_code not in (0, None) and not victim.stdout, victim
        assert int((await run(warm, skill, "after")).stdout) != first


ESCAPE = """\
import ctypes, os, sys, time
how = sys.stdin.read()
libc = ctypes.CDLL(None, use_errno=True)
if how == "clone-parent":  # a sibling: a child of the fork server
    pid = libc.syscall(56, 0x00008000 | 17, 0, 0, 0, 0)  # clone(CLONE_PARENT | SIGCHLD)
elif how == "subreaper-off":  # a double fork, re-parented past this process
    libc.prctl(36, 0, 0, 0, 0)
    pid = os.fork()
    if pid and os.waitpid(pid, 0):
        pid = -1
    elif pid == 0 and os.fork():
        os._exit(0)
else:
    pid = -1
if pid == 0:
    # Written whole before the name appears: the run waits for the name.
    with open(os.environ["SKILLSCALE_SKILL_DIR"] + "/escaping", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(fh.name, os.environ["SKILLSCALE_SKILL_DIR"] + "/escaped")
    os.closerange(0, 3)
    time.sleep(60)
    os._exit(0)
while how != "nothing" and not os.path.exists(os.environ["SKILLSCALE_SKILL_DIR"] + "/escaped"):
    time.sleep(0.01)
print(os.getpid())
"""


@pytest.mark.parametrize("how", ["clone-parent", "subreaper-off"])
async def test_a_process_that_left_the_runs_tree_still_ends_with_it(
    warm: WarmExecutor, tmp_path: Path, how: str
) -> None:
    skill = make_skill(tmp_path, "escape", ESCAPE, REUSED)
    before = int((await run(warm, skill, "nothing")).stdout)
    assert int((await run(warm, skill, how)).stdout) == before
    escaped = int((skill.path / "escaped").read_text())
    assert wait_pid_gone(escaped, 10), "the escaped process outlived its run"
    assert wait_pid_gone(before, 10)
    assert int((await run(warm, skill, "nothing")).stdout) != before


async def test_a_copy_of_a_runs_stdin_ends_its_process(warm: WarmExecutor, tmp_path: Path) -> None:
    body = """\
import os, select, sys
import colorsys
if sys.stdin.read(1) == "a":
    colorsys.kept = os.dup(0)  # what the run did not read, kept
found = []
for fd in range(3, 64):
    try:
        if select.select([fd], [], [], 0)[0]:
            found.append(os.read(fd, 100))
    except (OSError, ValueError):
        pass
print(os.getpid(), found)
"""
    skill = make_skill(tmp_path, "dup", body, REUSED)
    first = (await run(warm, skill, "alice's private input")).stdout.split()[0]
    second = (await run(warm, skill, "bob")).stdout
    assert b"private" not in second and second.split()[0] != first


async def test_timers_signal_handlers_and_mask_are_set_back_between_runs(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    body = """\
import os, signal, sys, time
what = sys.stdin.read()
if what == "arm":
    signal.signal(signal.SIGPROF, lambda *_: print("handler of the last run"))
    signal.setitimer(signal.ITIMER_PROF, 0.01, 0.01)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
else:
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
print(os.getpid(), signal.pthread_sigmask(signal.SIG_BLOCK, set()) == set(),
      signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL)
"""
    skill = make_skill(tmp_path, "timers", body, REUSED)
    armed = (await run(warm, skill, "arm")).stdout.split()
    after = await run(warm, skill, "busy")
    assert after.stdout.split() == [armed[0], b"True", b"True"], after


async def test_a_limit_a_run_lowered_ends_its_process(warm: WarmExecutor, tmp_path: Path) -> None:
    body = """\
import os, resource, sys, tempfile
if sys.stdin.read() == "lower":
    resource.setrlimit(resource.RLIMIT_FSIZE, (10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
else:
    with tempfile.TemporaryFile() as fh:
        fh.write(b"x" * 100)
print(os.getpid())
"""
    skill = make_skill(tmp_path, "limits", body, REUSED)
    first = int((await run(warm, skill, "write")).stdout)
    assert int((await run(warm, skill, "lower")).stdout) == first
    after = await run(warm, skill, "write")
    assert after.ok and int(after.stdout) != first, after


async def test_each_reused_process_is_let_go_after_its_own_idle_time(tmp_path: Path) -> None:
    executor = WarmExecutor(preload=["colorsys"], waiting_idle=1.0)
    await executor.start()
    try:
        busy = make_skill(tmp_path, "busy", LEAVER, REUSED)
        quiet = make_skill(tmp_path, "quiet", LEAVER, REUSED)
        quiet_pid = int((await run(executor, quiet, "nothing")).stdout)
        deadline = asyncio.get_running_loop().time() + 10
        # The busy skill's runs keep coming; the quiet one's process goes.
        while os.path.exists(f"/proc/{quiet_pid}"):
            assert asyncio.get_running_loop().time() < deadline, "the quiet process stayed"
            await run(executor, busy, "nothing")
        assert executor.reused_waiting == 1
        assert int((await run(executor, quiet, "nothing")).stdout) != quiet_pid
    finally:
        await executor.close()


FINALIZED = """\
import os, signal, sys, types
import colorsys
what = sys.stdin.read()

class Handler:
    # What __del__ needs, its own: __main__'s globals may be gone by then.
    def __init__(self, what, exit, write):
        self.what, self.exit, self.write = what, exit, write

    def __call__(self, *args):
        pass

    def __del__(self):
        if self.what == "exit":
            self.exit(0)
        self.write("from the run of " + self.what)

if what in ("exit", "print"):
    signal.signal(signal.SIGUSR1, Handler(what, os._exit, print))
elif what == "alice":
    # A buffered writer only __main__ holds, the module no longer a plain module.
    out = open(1, "wb", closefd=False)
    out.write(b"for alice")
    sys.modules[__name__].__class__ = type("Main", (types.ModuleType,), {})
print(os.getpid())
"""


@pytest.mark.parametrize("what", ["exit", "print", "alice"])
async def test_what_a_run_leaves_to_finalize_is_finalized_in_that_run(
    warm: WarmExecutor, tmp_path: Path, what: str
) -> None:
    # A signal handler the run set, with a finalizer that exits or writes,
    # and a writer held only by a __main__ the run changed the class of: all
    # finalized at that run's end, into its output (or its exit), never into
    # the next run's, which is another caller's; and never an exit read as
    # the next run's success.
    skill = make_skill(tmp_path, "finalized", FINALIZED, REUSED)
    for _attempt in range(3):
        left = await run(warm, skill, what)
        assert left.ok, left
        victim = await run(warm, skill, "bob")
        assert victim.ok and victim.stdout.strip().isdigit(), victim
        assert int(victim.stdout) > 0 and victim.stderr == b"", victim
    if what == "alice":
        assert left.stdout.startswith(b"for alice") or left.stdout.endswith(b"for alice"), left


async def test_the_original_std_streams_hold_nothing_of_the_last_run(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    body = """\
import sys
if sys.argv and sys.__stdin__.read(1) == "a":
    print("took a")
else:
    print("rest=" + sys.__stdin__.read(), file=sys.__stdout__)
"""
    skill = make_skill(tmp_path, "originals", body, REUSED)
    assert (await run(warm, skill, "alice's secret " * 100)).stdout == b"took a\n"
    second = await run(warm, skill, "bob")
    assert second.stdout == b"rest=ob\n", second


ENVIRON = """\
import os, subprocess, sys
what = sys.stdin.read()
if what == "putenv":
    os.putenv("SKILLSCALE_LEAK", "alice")
elif what == "replace":
    real = os.environ
    os.environ = dict(real)
    real["SKILLSCALE_LEAK"] = "alice"
seen = subprocess.run(["env"], capture_output=True, check=True).stdout.decode()
print(os.getpid(), "SKILLSCALE_LEAK" in seen, type(os.environ).__name__,
      os.environ.get("SKILLSCALE_INTENT"))
"""


@pytest.mark.parametrize("what", ["putenv", "replace"])
async def test_an_environment_changed_below_os_environ_is_set_back(
    warm: WarmExecutor, tmp_path: Path, what: str
) -> None:
    skill = make_skill(tmp_path, "environ", ENVIRON, REUSED)
    first = (await run(warm, skill, what)).stdout.split()
    second = (await run(warm, skill, "bob")).stdout.split()
    assert second == [first[0], b"False", b"_Environ", b"bob"], second


async def test_weakref_finalizers_work_in_every_run(warm: WarmExecutor, tmp_path: Path) -> None:
    body = """\
import os, sys, weakref
class Thing:
    pass
thing = Thing()
weakref.finalize(thing, print, "finalized", sys.stdin.read())
del thing
print(os.getpid())
"""
    skill = make_skill(tmp_path, "finalize", body, REUSED)
    outputs = [(await run(warm, skill, f"run{i}")).stdout.split() for i in range(3)]
    assert [o[:2] for o in outputs] == [[b"finalized", f"run{i}".encode()] for i in range(3)]
    assert len({o[2] for o in outputs}) == 1


CREDENTIALS = """\
import ctypes, os, signal, sys
what = sys.stdin.read()
libc = ctypes.CDLL(None)
if what == "pdeathsig":
    libc.prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
elif what == "groups":
    os.setgroups([4242])
elif what == "gid":
    os.setresgid(4242, 4242, 4242)
elif what == "namespace":
    libc.unshare(0x04000000)  # CLONE_NEWUTS
elif what == "capability":
    libc.prctl(24, 21, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_SYS_ADMIN
with open("/proc/self/status") as fh:
    bounding = [line.split()[1] for line in fh if line.startswith("CapBnd")]
print(os.getpid(), os.getresgid(), os.getgroups(), bounding, os.readlink("/proc/self/ns/uts"))
"""


@pytest.mark.parametrize("what", ["pdeathsig", "groups", "gid", "namespace", "capability"])
async def test_a_run_that_changed_its_credentials_or_death_signal_ends_its_process(
    warm: WarmExecutor, tmp_path: Path, what: str
) -> None:
    if what != "pdeathsig" and os.geteuid() != 0:
        pytest.skip("only root can change its groups, namespaces, capabilities")
    skill = make_skill(tmp_path, "credentials", CREDENTIALS, REUSED)
    first = (await run(warm, skill, "fine")).stdout
    changed = (await run(warm, skill, what)).stdout
    assert changed.split()[0] == first.split()[0]
    after = (await run(warm, skill, "fine")).stdout
    assert after.split()[0] != first.split()[0], after
    assert after.split(maxsplit=1)[1] == first.split(maxsplit=1)[1]
    assert wait_pid_gone(int(first.split()[0]), 10)


async def test_tracing_and_gc_hooks_a_run_set_are_gone_in_the_next(
    warm: WarmExecutor, tmp_path: Path
) -> None:
    body = """\
import gc, os, sys
if sys.stdin.read() == "hook":
    sys.settrace(lambda *a: None)
    sys.setprofile(lambda *a: None)
    gc.callbacks.append(lambda *a: None)
    gc.disable()
print(os.getpid(), sys.gettrace() is None, sys.getprofile() is None, len(gc.callbacks),
      gc.isenabled())
"""
    skill = make_skill(tmp_path, "hooks", body, REUSED)
    first = (await run(warm, skill, "plain")).stdout.split()
    await run(warm, skill, "hook")
    assert (await run(warm, skill, "plain")).stdout.split() == first


def _audit_hook_exiting_at(event: str) -> str:
    """A script whose run for "alice" adds an audit hook that exits 0 at ``event``."""
    return f"""\
import os, sys
data = sys.stdin.read()
if data == "alice":
    def hook(event, args, _exit=os._exit):
        if event == "{event}":
            _exit(0)
    sys.addaudithook(hook)
print("for", data)
"""


# Third review: what a run leaves, seen by the next caller's run. Each case:
# the script, the inputs of its runs in turn, and what the last run must get
# (its own output, ok) and whether it may share the process of the one before.
LEFT_BEHIND: dict[str, tuple[str, list[str], bytes, bool]] = {
    # A cycle whose finalizer, run by the collector after the reset, changes
    # the environment and registers an exit function again.
    "finalizer-after-reset": (
        """\
import atexit, os, sys
data = sys.stdin.read()
class Cycle:
    def __init__(self, environ, register, write):
        self.me, self.environ, self.register, self.write = self, environ, register, write
    def __del__(self):
        self.environ["LEAKED"] = "alice"
        self.register(self.write, "exit function of alice\\n")
if data == "alice":
    keep = Cycle(os.environ, atexit.register, sys.stdout.write)
print("for", data, os.environ.get("LEAKED", "-"))
""",
        ["warmup", "alice", "bob"],
        b"for bob -\n",
        False,
    ),
    # An object hung on the run's sys.stdin, finalized when it is dropped.
    "stdin-finalizer-prints": (
        """\
import sys
data = sys.stdin.read()
class Late:
    def __init__(self, write):
        self.write = write
    def __del__(self):
        self.write("alice's, finalized late\\n")
if data == "alice":
    sys.stdin.late = Late(sys.stdout.write)
print("for", data)
""",
        ["warmup", "alice", "bob"],
        b"for bob\n",
        True,
    ),
    # An audit hook (it cannot be removed) that exits on the next run's chdir,
    # before its script begins: that run is tried again in a new process.
    "audit-hook-exits": (
        _audit_hook_exiting_at("os.chdir"),
        ["warmup", "alice", "bob"],
        b"for bob\n",
        False,
    ),
    # A module's cached writer over fd 1, never flushed by the script.
    "module-writer": (
        """\
import sys
import colorsys
if not hasattr(colorsys, "out"):
    colorsys.out = open(sys.stdout.fileno(), "w", closefd=False)
colorsys.out.write(("for " + sys.stdin.read() + "\\n") * 400)
""",
        ["alice", "bob"],
        b"for bob\n" * 400,
        True,
    ),
    # A module's cached sys.stdin that read ahead of the line it returned.
    "module-stdin": (
        """\
import sys
import colorsys
if not hasattr(colorsys, "inp"):
    colorsys.inp = sys.stdin
try:
    line = colorsys.inp.readline().strip()
except ValueError:
    line = sys.stdin.readline().strip()
print("first line", line)
""",
        ["alice-1\nalice-secret\n", "bob-1\n"],
        b"first line bob-1\n",
        True,
    ),
    # Signals ignored below Python (libc's signal, as a C extension would).
    "libc-sigaction": (
        """\
import ctypes, signal, sys
if sys.stdin.read() == "alice":
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal(int(signal.SIGTERM), ctypes.c_void_p(1))
with open("/proc/self/status") as fh:
    ignored = int([line.split()[1] for line in fh if line.startswith("SigIgn")][0], 16)
print("SIGTERM ignored", bool(ignored & (1 << (signal.SIGTERM - 1))))
""",
        ["warmup", "alice", "bob"],
        b"SIGTERM ignored False\n",
        False,
    ),
    # A POSIX timer (timer_create), which fires SIGALRM in 0.3 s.
    "posix-timer": (
        """\
import ctypes, sys, time
if sys.stdin.read() == "alice":
    libc = ctypes.CDLL(None)
    class Spec(ctypes.Structure):
        _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
    class Timer(ctypes.Structure):
        _fields_ = [("interval", Spec), ("value", Spec)]
    timer = ctypes.c_void_p()
    assert libc.timer_create(1, None, ctypes.byref(timer)) == 0
    soon = Timer(Spec(0, 0), Spec(0, 300_000_000))
    assert libc.timer_settime(timer, 0, ctypes.byref(soon), None) == 0
else:
    time.sleep(0.6)
print("done")
""",
        ["warmup", "alice", "bob"],
        b"done\n",
        False,
    ),
    # Scheduling, OOM score, timer slack, CPU affinity.
    "scheduling": (
        """\
import ctypes, os, sys
if sys.stdin.read() == "alice":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    with open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")
    ctypes.CDLL(None).prctl(29, 50_000_000, 0, 0, 0)  # PR_SET_TIMERSLACK
with open("/proc/self/oom_score_adj") as fh, open("/proc/self/timerslack_ns") as slack:
    print(len(os.sched_getaffinity(0)) == os.cpu_count(), os.sched_getscheduler(0),
          fh.read().strip(), slack.read().strip())
""",
        ["warmup", "alice", "bob"],
        b"",  # (compared with the warm-up's below)
        False,
    ),
    # The I/O priority (ioprio_set: a syscall, x86_64 and aarch64 numbers).
    "io-priority": (
        """\
import ctypes, os, sys
numbers = {"x86_64": (251, 252), "aarch64": (30, 31)}.get(os.uname().machine)
libc = ctypes.CDLL(None)
if sys.stdin.read() == "alice" and numbers:
    libc.syscall(numbers[0], 1, 0, 3 << 13)  # IOPRIO_WHO_PROCESS, self, the idle class
print(libc.syscall(numbers[1], 1, 0) if numbers else "-")
""",
        ["warmup", "alice", "bob"],
        b"",
        False,
    ),
    # fd 1 closed by the script (open(fileno) closes it) and taken by a log file.
    "fd1-taken-over": (
        """\
import os, sys
import colorsys
who = sys.stdin.read()
if who == "alice":
    with open(sys.stdout.fileno(), "w") as out:
        out.write("for alice\\n")
    colorsys.log = open(os.environ["SKILLSCALE_SKILL_DIR"] + "/audit.log", "a")
    colorsys.log.write("audit: alice asked something private\\n")
else:
    if hasattr(colorsys, "log"):
        colorsys.log.write("audit: " + who + "\\n")
        colorsys.log.flush()
    print("for", who)
""",
        ["alice", "bob"],
        b"for bob\n",
        False,
    ),
    # Fourth review. The run's own sys.stdout (made once, in the fork server),
    # kept by a module and written to unflushed, sys.stdout then replaced.
    "kept-premade-stdout": (
        """\
import codecs, sys
import colorsys
who = sys.stdin.read()
if not hasattr(colorsys, "out"):
    colorsys.out = sys.stdout
colorsys.out.write("for " + who + ";")
if who == "alice":
    sys.stdout = codecs.getwriter("utf-8")(sys.stdout.buffer)
""",
        ["warmup", "alice", "bob"],
        b"for bob;",
        True,
    ),
    # A text wrapper over a Python buffer, whose fileno() changes the
    # environment: it must run before the reset, never after its check.
    "python-buffer": (
        """\
import io, os, sys
who = sys.stdin.read()
print("for", who, os.environ.get("LEAKED", "-"))
class Tee(io.BufferedIOBase):
    def __init__(self, who):
        self.who = who
    def writable(self):
        return True
    def write(self, b):
        return len(b)
    def fileno(self, os=os):
        os.environ["LEAKED"] = self.who
        return 1
if who == "alice":
    import colorsys
    colorsys.tee = io.TextIOWrapper(Tee(who))
""",
        ["warmup", "alice", "bob"],
        b"for bob -\n",
        True,
    ),
    # An audit hook that exits at the next run's exec (after it began).
    "audit-hook-at-exec": (
        _audit_hook_exiting_at("exec"),
        ["warmup", "alice", "bob"],
        b"for bob\n",
        False,
    ),
    # Fifth review. A builtin the code between two runs calls, replaced.
    "builtin-replaced": (
        """\
import builtins, sys
data = sys.stdin.read()
if data == "alice":
    builtins.exec = lambda *args, **kwargs: None
print("for", data)
""",
        ["warmup", "alice", "bob"],
        b"for bob\n",
        False,
    ),
    # An audit hook added through the C API, which exits at the next exec.
    "audit-hook-through-c": (
        """\
import ctypes, os, sys
data = sys.stdin.read()
if data == "alice":
    import colorsys
    HOOK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.py_object, ctypes.c_void_p)
    def hook(event, args, data, _exit=os._exit):
        if event == b"exec":
            _exit(0)
        return 0
    colorsys.hook = HOOK(hook)
    ctypes.pythonapi.PySys_AddAuditHook.argtypes = (HOOK, ctypes.c_void_p)
    ctypes.pythonapi.PySys_AddAuditHook(colorsys.hook, None)
print("for", data)
""",
        ["warmup", "alice", "bob"],
        b"for bob\n",
        False,
    ),
    # A thread, started and joined: glibc's own signal handlers appear.
    "joined-thread": (
        """\
import sys, threading
thread = threading.Thread(target=sys.stdin.read)
thread.start()
thread.join()
print("joined")
""",
        ["a", "b", "bob"],
        b"joined\n",
        True,
    ),
    # stdout reconfigured to ASCII.
    "reconfigured-stdout": (
        """\
import sys
who = sys.stdin.read()
if who == "alice":
    sys.stdout.reconfigure(encoding="ascii")
print("for", who, sys.stdout.encoding, "\u00e9")
""",
        ["warmup", "alice", "bob"],
        "for bob utf-8 \u00e9\n".encode(),
        True,
    ),
    # The usual re-wrapping of stdout: the process stays reusable.
    "rewrapped-stdout": (
        """\
import io, sys
sys.stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="replace")
print("for", sys.stdin.read())
""",
        ["a", "b", "bob"],
        b"for bob\n",
        True,
    ),
}


@pytest.mark.parametrize("case", sorted(LEFT_BEHIND))
async def test_what_a_run_leaves_never_reaches_the_next_callers_run(
    warm: WarmExecutor, tmp_path: Path, case: str
) -> None:
    body, inputs, expected, shared = LEFT_BEHIND[case]
    # The pid goes to stderr: the cases compare stdout whole.
    pid = "import os, sys\nprint(os.getpid(), file=sys.stderr)\n"
    skill = make_skill(tmp_path, case, pid + body, REUSED)
    results = [await run(warm, skill, data) for data in inputs]
    last, before = results[-1], results[-2]
    assert last.ok, last
    if not expected:  # as the first run found it
        assert last.stdout == results[0].stdout, (results[0], last)
    else:
        assert last.stdout == expected, last
    assert (last.stderr.split()[:1] == before.stderr.split()[:1]) is shared, (before, last)


async def test_a_run_that_began_is_never_tried_again(warm: WarmExecutor, tmp_path: Path) -> None:
    # It ends without a report (os._exit) while the loop is busy: the fork
    # server's status and the exit come together, and the run is one run.
    log = tmp_path / "runs.log"
    body = f"""\
import os, sys
data = sys.stdin.read()
with open({str(log)!r}, "a") as fh:
    fh.write(data + "\\n")
print("for", data, flush=True)
if data.startswith("bob"):
    os._exit(3)
"""
    skill = make_skill(tmp_path, "once", body, REUSED)
    assert (await run(warm, skill, "alice")).ok
    loop = asyncio.get_running_loop()
    for i in range(3):
        busy = loop.call_later(0.002, time.sleep, 0.3)  # the loop, busy as the run exits
        try:
            result = await run(warm, skill, f"bob{i}")
        finally:
            busy.cancel()
        assert result.exit_code == 3 and result.stdout == f"for bob{i}\n".encode(), result
        assert (await run(warm, skill, "alice")).ok
    assert log.read_text().split().count("bob0") == 1
    assert [line for line in log.read_text().split() if line.startswith("bob")] == [
        "bob0",
        "bob1",
        "bob2",
    ]


def _no_pidfd(pid: int, flags: int = 0) -> int:
    raise OSError(38, "Function not implemented")


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no-pidfd"])
async def test_a_kept_process_that_dies_between_runs_costs_no_run(
    warm: WarmExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pidfd: bool
) -> None:
    skill = make_skill(tmp_path, "dies", "import os, sys\nprint(os.getpid(), sys.stdin.read())\n",
                       REUSED)  # fmt: skip
    for _attempt in range(3):
        pid = int((await run(warm, skill, "a")).stdout.split()[0])
        await _until(lambda: warm.reused_waiting == 1)
        os.kill(pid, signal.SIGKILL)  # waiting for its next run, and that run comes at once
        with monkeypatch.context() as patch:
            if not pidfd:  # (an old kernel, a sandbox): the run's end comes from the reap
                patch.setattr(os, "pidfd_open", _no_pidfd)
            result = await run(warm, skill, "bob")
        assert result.ok and result.stdout.split()[1] == b"bob", result
        assert int(result.stdout.split()[0]) != pid
        assert wait_pid_gone(pid, 10)


async def test_a_server_runs_a_reused_skill_in_one_process_over_the_bus(
    fabric: Fabric, tmp_path: Path
) -> None:
    # The metadata, read from SKILL.md by a real server, behind the proxy, on
    # the memory bus and on ZeroMQ; a skill without it beside it.
    body = "import os, sys\nprint(os.getpid(), sys.stdin.read())\n"
    make_skill(tmp_path, "shared", body, REUSED)
    make_skill(tmp_path, "own", body)
    await fabric.start_proxy()
    await fabric.start_server(tmp_path, "TOPIC_REUSED", "reused-1", executor="warm")
    client = await fabric.client()
    answers: dict[str, list[list[str]]] = {"shared": [], "own": []}
    for i in range(3):
        for name in answers:
            reply = await client.call("TOPIC_REUSED", explicit(name, f"{name}{i}"))
            assert reply.ok, reply.error
            answers[name].append(reply.content.split())
    assert [data for _pid, data in answers["shared"]] == ["shared0", "shared1", "shared2"]
    assert len({pid for pid, _data in answers["shared"]}) == 1
    assert len({pid for pid, _data in answers["own"]}) == 3


def test_a_next_run_request_brings_exactly_its_fds_or_is_refused() -> None:
    ours, theirs = socket.socketpair()
    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]
    with ours, theirs:
        open_before = open_fd_count()
        socket.send_fds(ours, [encode_header({"script": "x"})], extra)
        with pytest.raises(ValueError, match="2 fds, not 4"):
            _read_request(theirs, 4)
        assert open_fd_count() == open_before  # what came is closed again
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
        socket.send_fds(ours, [encode_header({"script": "y"})], fds)
        request = _read_request(theirs, 4)
        assert request is not None and request[0] == {"script": "y"} and len(request[2]) == 4
        for fd in [*fds, *request[2]]:
            os.close(fd)
        ours.close()
        assert _read_request(theirs, 4) is None  # the skill server let it go
    for fd in extra:
        os.close(fd)
