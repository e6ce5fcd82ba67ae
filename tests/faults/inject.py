"""Test-only entry point: the normal `roomserver` CLI with one fault injected.

The worker has no test hooks; this wrapper patches one of its functions in the worker
process (and, run again there, in the pipeline's process) and then calls
`worker.cli.main` as `python -m worker.cli` would.

- ROOMSERVER_TEST_FAIL_FILE: a file holding an event ID. While it exists, caching that
  event once it is stored raises RuntimeError (after the event's own rows and the state
  after it are written, so the rollback of its savepoint is exercised too). Deleting the
  file removes the fault without a restart.
- ROOMSERVER_TEST_MAX_PAGE_COUNT: `PRAGMA max_page_count` on the worker's connection,
  so the database is "full" at that size: a real SQLITE_FULL from SQLite.
- ROOMSERVER_TEST_SYNC_GATE: a file. While it exists, syncing the write-ahead log
  (worker.storage.durability) waits: commits are made but none becomes durable, as
  with a very slow disk. Deleting the file lets the syncs through.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

import worker.storage.connection as connection
from worker import cli
from worker.storage.durability import WalSync
from worker.storage.events import EventStore, StoredEvent


def _inject_failure(path: Path) -> None:
    original = EventStore.remember

    def failing(self: EventStore, stored: StoredEvent) -> None:
        if path.exists() and stored.event.event_id == path.read_text().strip():
            raise RuntimeError(f"injected fault on {stored.event.event_id}")
        original(self, stored)

    EventStore.remember = failing  # type: ignore[method-assign]


def _limit_pages(pages: int) -> None:
    original = connection.open_connection

    def limited(path: Path) -> sqlite3.Connection:
        conn = original(path)
        conn.execute(f"PRAGMA max_page_count = {pages:d}")
        return conn

    connection.open_connection = limited


def _gate_syncs(gate: Path) -> None:
    original = WalSync.sync

    def gated(self: WalSync) -> None:
        # A poll, in the worker: the disk stands still until the test lets it go.
        while gate.exists():
            time.sleep(0.01)
        original(self)

    WalSync.sync = gated  # type: ignore[method-assign]


def _inject_from_environment() -> None:
    if fail_file := os.environ.get("ROOMSERVER_TEST_FAIL_FILE"):
        _inject_failure(Path(fail_file))
    if pages := os.environ.get("ROOMSERVER_TEST_MAX_PAGE_COUNT"):
        _limit_pages(int(pages))
    if gate := os.environ.get("ROOMSERVER_TEST_SYNC_GATE"):
        _gate_syncs(Path(gate))


# At the top level, not under the `__main__` guard: the pipeline's process runs this
# module again (as `__mp_main__`, see worker/runner/pipeline_process.py), so the faults
# apply where the pipeline runs too.
_inject_from_environment()

if __name__ == "__main__":
    sys.exit(cli.main())
