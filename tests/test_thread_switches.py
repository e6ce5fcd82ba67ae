"""While a transaction runs the interpreter hands the GIL over sooner
(worker.runner.input_loop.quick_thread_switches), so that the event loop's replies are
not held up behind the database thread's Python; the process's interval comes back when
the last transaction using it ends, whatever the nesting."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from worker.runner.input_loop import SWITCH_INTERVAL, quick_thread_switches


@pytest.fixture
def default_interval() -> Iterator[float]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def test_interval_is_short_inside_and_restored_after(default_interval: float) -> None:
    with quick_thread_switches():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(default_interval)


def test_overlapping_uses_restore_the_process_interval(default_interval: float) -> None:
    first = quick_thread_switches()
    second = quick_thread_switches()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    # The other transaction still runs.
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(default_interval)


def test_restored_when_the_transaction_raises(default_interval: float) -> None:
    with pytest.raises(RuntimeError), quick_thread_switches():
        raise RuntimeError("a transient fault")
    assert sys.getswitchinterval() == pytest.approx(default_interval)
