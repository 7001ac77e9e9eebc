"""Process plumbing for the command-line roles: loop, signals, logging."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from typing_extensions import Self

T = TypeVar("T")


def setup_logging(default: str = "INFO") -> None:
    """Log to stderr at ``SKILLSCALE_LOG_LEVEL`` (default ``default``)."""
    level = os.environ.get("SKILLSCALE_LOG_LEVEL", default).upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on uvloop when installed (``SKILLSCALE_NO_UVLOOP=1`` opts out)."""
    if not os.environ.get("SKILLSCALE_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            result: T = uvloop.run(main())
            return result
    return asyncio.run(main())


def install_stop_signals(stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
    """SIGINT/SIGTERM set ``stop``; a second one sets ``force`` (if given)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set() and force is not None:
            force.set()
        stop.set()
        logging.getLogger("skillscale").info("received %s; stopping", signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


class AsyncRole:
    """A role object that owns its sockets and tasks: ``async with`` starts and stops it."""

    async def start(self) -> None:
        """Acquire sockets, start tasks; ready to serve on return."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop taking work, drain within a grace period, release everything."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
