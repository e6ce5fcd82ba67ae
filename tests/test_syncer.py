"""The syncer (worker/runner/syncer.py): tickets are reported durable only after a
sync that started after them, and a failed sync is final."""

from __future__ import annotations

import threading

import pytest

from worker.runner.syncer import Notice, Syncer


def test_a_ticket_is_durable_only_after_a_sync_that_began_after_it() -> None:
    started = threading.Event()
    release = threading.Event()
    syncs: list[int] = []
    reports: list[Notice] = []

    def sync() -> None:
        syncs.append(len(syncs))
        started.set()
        release.wait()

    syncer = Syncer(sync, reports.append)
    try:
        first = syncer.committed()
        assert started.wait(10)
        # Committed while the first sync runs: that sync does not cover it.
        second = syncer.committed()
        release.set()
        syncer.wait(first)
        syncer.wait(second)
        assert len(syncs) == 2
        assert reports == [first, second]
    finally:
        release.set()
        syncer.close()


def test_a_failed_sync_is_reported_and_final() -> None:
    reports: list[Notice] = []

    def sync() -> None:
        raise OSError(5, "Input/output error")

    syncer = Syncer(sync, reports.append)
    ticket = syncer.committed()
    with pytest.raises(OSError):
        syncer.wait(ticket)
    with pytest.raises(OSError):
        syncer.committed()
    syncer.close()
    [report] = reports
    assert isinstance(report, OSError)
