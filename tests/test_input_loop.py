"""Rules of the input loop (worker.runner.input_loop) that need no NATS server:

- committed batches are settled (acked, outputs published) in commit order, one after
  the other, while the next transactions run without waiting for them;
- while a transaction runs the interpreter hands the GIL over sooner
  (`quick_thread_switches`), so that the event loop's replies are not held up behind
  the database thread's Python; the process's interval comes back when the last
  transaction using it ends, whatever the nesting."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest

from worker.runner.input_loop import SWITCH_INTERVAL, Settling, quick_thread_switches


async def test_batches_settle_in_commit_order_without_holding_up_the_next() -> None:
    settling = Settling()
    first_may_finish = asyncio.Event()
    settled: list[int] = []

    async def settle(batch: int, gate: asyncio.Event | None = None) -> None:
        if gate is not None:
            await gate.wait()
        settled.append(batch)

    # start() returns at once although the first batch's settling cannot finish yet:
    # the caller goes on to the next transaction.
    settling.start(settle(1, first_may_finish))
    settling.start(settle(2))
    settling.start(settle(3))
    await asyncio.sleep(0)  # let the ready tasks run as far as they can
    assert settled == []
    first_may_finish.set()
    await settling.wait()
    assert settled == [1, 2, 3]


async def test_a_failed_settling_stops_the_ones_after_it() -> None:
    """The outputs after a batch whose settling failed must not overtake its own."""
    settling = Settling()
    settled: list[int] = []

    async def fail() -> None:
        raise RuntimeError("the outbox could not be read")

    async def settle(batch: int) -> None:
        settled.append(batch)

    settling.start(fail())
    settling.start(settle(2))
    with pytest.raises(RuntimeError, match="outbox"):
        await settling.wait()
    assert settled == []


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
