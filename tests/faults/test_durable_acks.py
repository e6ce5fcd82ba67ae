"""An input is acknowledged, and its outputs published, only once its commit is on
disk; the pipeline does not wait for the disk meanwhile (worker/runner/syncer.py).

The contract: an input is acknowledged only after its results are durably stored, so
that a crash of the machine loses nothing JetStream will not deliver again. Commits
return before their sync (`synchronous=NORMAL`), and a thread of the pipeline's
process syncs the write-ahead log after them. Here that sync is held back
(tests/faults/inject.py, ROOMSERVER_TEST_SYNC_GATE), as by a disk that does not
answer: every batch is processed and committed (its rows are in the database), yet
nothing is acknowledged nor published; once the sync goes through, everything is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.feed import build_feed
from tests.harness.procs import stream_count, table_rows
from tests.harness.sites import site
from worker.bus.subjects import Subjects

pytestmark = pytest.mark.faults

INJECT = "tests.faults.inject"


def stored_events(storage: Path) -> int:
    """Events committed (visible to a reader, whether or not on disk yet)."""
    return table_rows(storage, "events")


async def test_nothing_is_acknowledged_or_published_before_its_commit_is_on_disk(
    tmp_path: Path,
) -> None:
    feed = build_feed(Subjects(), members=3, events=40, linear=2)
    gate = tmp_path / "sync-gate"
    async with site(tmp_path) as test_site:
        worker = test_site.worker(INJECT, test_sync_gate=str(gate))
        try:
            # Held once the worker is up (its start-up syncs what it finds).
            await worker.until_logged("worker ready")
            gate.touch()
            await test_site.publish(feed)
            # Batches of 25 (the harness's size): the pipeline goes through several,
            # committing each, while none of them is synced.
            await worker.until(
                lambda: stored_events(test_site.storage) == len(feed.event_ids),
                "every event committed",
            )
            js, streams = test_site.js, test_site.config.streams
            assert await stream_count(js, streams.output) == 0
            info = await js.consumer_info(streams.input, test_site.config.consumer.durable)
            assert info.ack_floor.stream_seq == 0
            assert info.num_ack_pending == len(feed.messages)
            gate.unlink()
            await worker.until(test_site.settled, "every input acknowledged")
            assert await stream_count(js, streams.output) >= len(feed.event_ids)
        finally:
            gate.unlink(missing_ok=True)
            worker.ensure_dead()
