"""The proxy's collector tuning is process-wide: proxies sharing a process share it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from skillscale.proxy.proxy import _collector_tuned

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def default_threshold() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()  # nothing frozen before: the test sees its own freezing
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()


def test_two_overlapping_proxies_tune_once_and_restore_when_the_last_stops(
    default_threshold: tuple[int, int, int],
) -> None:
    first, second = _collector_tuned(True), _collector_tuned(True)
    first.__enter__()
    tuned = gc.get_threshold()
    assert tuned != default_threshold and gc.get_freeze_count() > 0
    second.__enter__()
    assert gc.get_threshold() == tuned
    # Stopped in start order: the first out must not undo the second's tuning
    # (nor unfreeze what the second still relies on).
    first.__exit__(None, None, None)
    assert gc.get_threshold() == tuned and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == default_threshold and gc.get_freeze_count() == 0
    # And a disabled one touches nothing.
    with _collector_tuned(False):
        assert gc.get_threshold() == default_threshold
