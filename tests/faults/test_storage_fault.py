"""A full disk is not the input's fault: the worker stops with one clear line and its
own exit status, dead-letters and parks nothing, and once there is space again the
next run finishes the feed exactly as an undisturbed run did.

The disk fills for real as far as SQLite is concerned: the test wrapper
(tests/faults/inject.py) sets `PRAGMA max_page_count` on the worker's connection, and
SQLite answers the write that would pass it with SQLITE_FULL.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import msgpack
import pytest

from tests.harness.feed import Feed
from tests.harness.sites import RunResult, compare, site
from worker.cli import EXIT_STORAGE_FAULT
from worker.storage.database import DB_FILENAME

pytestmark = pytest.mark.faults

#: Pages of 4 KiB; the whole feed needs several times as many.
MAX_PAGES = 200


async def test_full_disk_stops_the_worker_and_the_next_run_finishes_exactly(
    feed: Feed, reference: RunResult, tmp_path: Path
) -> None:
    async with site(tmp_path) as test_site:
        await test_site.publish(feed)
        full = test_site.worker("tests.faults.inject", test_max_page_count=str(MAX_PAGES))
        try:
            code = await full.stop_when_exited(60)
        finally:
            full.ensure_dead()
        assert code == EXIT_STORAGE_FAULT, full.log_tail()
        path = test_site.storage / DB_FILENAME
        expected = (
            f"roomserver: storage fault: the disk is full (SQLITE_FULL) writing {path}; "
            "free space and restart"
        )
        assert full.stderr_text().splitlines() == [expected], full.stderr_text()
        # The real error, not "cannot rollback - no transaction is active".
        assert not [line for line in full.lines if "cannot rollback" in str(line)]

        # It stopped part-way, and blamed no input.
        stopped = await test_site.result()
        assert 0 < len(stopped.dump.events) < len(feed.event_ids)
        codes = [msgpack.unpackb(m.data)["error"] for m in stopped.dead_letters]
        assert "internal_error" not in codes
        assert len(codes) <= feed.bad_inputs
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert conn.execute("SELECT count(*) FROM parked_rooms").fetchone() == (0,)
        finally:
            conn.close()

        # Space is back: the same worker without the limit finishes the feed.
        resumed = test_site.worker()
        try:
            await resumed.until(test_site.settled, "every input acknowledged", 60)
            assert await resumed.stop(signal.SIGTERM) == 0
        finally:
            resumed.ensure_dead()
        compare(await test_site.result(), reference, feed)
