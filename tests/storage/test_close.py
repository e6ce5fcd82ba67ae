"""Closing the writer's database closes SQLite's connection for real."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.harness.pipeline import ALICE, Harness
from worker.storage.database import DB_FILENAME


def test_a_closed_database_is_whole_in_its_file_and_leaves_no_wal(tmp_path: Path) -> None:
    """The stores' shared write cursor held its last statement, which kept SQLite's
    connection open after `close()` while the Database object lived: the WAL stayed
    behind, not checkpointed, and a copy of the database file alone (the benches'
    cached rooms) lacked the last commits. Closed with the pipeline and its stores still
    alive, the file alone now holds every event, block and output."""
    h = Harness(tmp_path)
    for i in range(3):
        h.send(h.builder.message(ALICE, f"m{i}"))
    stored = h.db.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    outputs = h.db.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert stored > 3 and outputs > 0
    h.db.close()
    h.db.close()  # again: nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_FILENAME]
    # immutable: the file alone, as if copied without its WAL.
    with sqlite3.connect(f"file:{tmp_path / DB_FILENAME}?immutable=1", uri=True) as alone:
        assert alone.execute("SELECT count(*) FROM events").fetchone()[0] == stored
        assert alone.execute("SELECT count(*) FROM outbox").fetchone()[0] == outputs
        assert alone.execute("SELECT count(*) FROM state_blocks").fetchone()[0] > 0
