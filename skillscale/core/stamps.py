"""Bench-only timestamps along the path of a call (issue 14's breakdown table).

Off unless ``SKILLSCALE_STAMPS`` names a file when a role process starts; the
normal path then pays one module-global truth test per stage (``if ON:``).
When on, each :func:`stamp` appends ``<stage> <pid> <time.time_ns()>`` to
that file with one ``write(2)`` on an ``O_APPEND`` descriptor, so lines from
every process on the machine interleave whole. Wall-clock nanoseconds
(``CLOCK_REALTIME``) because the stages run in different processes and
``time.monotonic_ns`` is not comparable across them on every platform; on one
machine the realtime clock is the same clock for all of them.

``bench/speed.py`` runs one call at a time in this mode and pairs the i-th
line of each stage with the i-th call.
"""

from __future__ import annotations

import os
import time

ENV = "SKILLSCALE_STAMPS"
PATH = os.environ.get(ENV, "")
ON = bool(PATH)
"""Read once at import: the hot paths test this and nothing else."""

_fd = -1
_pid = -1


def stamp(stage: str) -> None:
    """Record ``stage`` now (call only under ``if ON:``)."""
    global _fd, _pid
    pid = os.getpid()
    if pid != _pid:
        # A forked child must not share (or trust) its parent's descriptor: it
        # may have been closed with every other inherited fd.
        _fd = os.open(PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _pid = pid
    os.write(_fd, f"{stage} {pid} {time.time_ns()}\n".encode())


def enable(path: str) -> None:
    """Turn stamping on in this process (a bench's own client) and in the
    role processes it starts afterwards (through the environment)."""
    global PATH, ON
    PATH, ON = path, True
    os.environ[ENV] = path


def disable() -> None:
    """Stop stamping in this process."""
    global ON, _fd, _pid
    ON = False
    if _fd >= 0 and _pid == os.getpid():
        os.close(_fd)
    _fd, _pid = -1, -1
