"""The batch stopwatch: a transaction's budget and its laps are the database thread's CPU
time, while its CPU clock (a slow system call on a busy machine) is read a few times per
transaction rather than once per input."""

from __future__ import annotations

import time

import pytest

from worker.pipeline.batch import Stopwatch

pytestmark = pytest.mark.unit


def _spin(seconds: float) -> None:
    """Spend about `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_budget_is_cpu_time_and_laps_add_up_to_it() -> None:
    started = time.thread_time()
    stopwatch = Stopwatch(budget=0.03)
    laps = 0
    while True:
        _spin(0.002)
        laps += 1
        if stopwatch.lap():
            break
    stopwatch.finish()
    spent = time.thread_time() - started
    assert spent >= 0.03
    assert len(stopwatch.laps) == laps
    assert all(lap >= 0 for lap in stopwatch.laps)
    # The laps share the CPU time between the stopwatch's start and its last reading.
    assert sum(stopwatch.laps) == pytest.approx(spent, abs=0.005)


def test_wall_time_without_cpu_does_not_spend_the_budget() -> None:
    """An input that waits (for the disk, or for a processor) spends wall time, not the
    budget: only CPU time counts."""
    stopwatch = Stopwatch(budget=0.05)
    for _ in range(3):
        time.sleep(0.03)  # the work being timed: waiting, not synchronisation
        assert not stopwatch.lap()
    stopwatch.finish()
    assert sum(stopwatch.laps) < 0.05


def test_cpu_clock_is_read_a_few_times_per_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = 0
    real = time.thread_time

    def counted() -> float:
        nonlocal reads
        reads += 1
        return real()

    stopwatch = Stopwatch(budget=1.0)
    monkeypatch.setattr(time, "thread_time", counted)
    for _ in range(200):
        assert not stopwatch.lap()
    stopwatch.finish()
    assert reads == 1
    assert len(stopwatch.laps) == 200
