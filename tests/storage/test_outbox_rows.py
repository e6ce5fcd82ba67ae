"""Outbox rows queued together (`OutboxStore.add_many`) are stored exactly as given, in
their order, whatever their number: the rows go several to an INSERT statement and the
rest one to an execution, and the AUTOINCREMENT counter must follow the highest number
either way (numbers are never reused, even after the rows are deleted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.storage.database import Database
from worker.storage.outbox import OutboxRow


@pytest.mark.parametrize("count", [1, 31, 32, 70])
def test_rows_are_stored_as_given_and_numbers_never_reused(tmp_path: Path, count: int) -> None:
    db = Database(tmp_path)
    first = db.outbox.last_seq() + 1
    rows = [
        OutboxRow(first + i, f"out.{i % 3}", f"$e{i}:msg", bytes([i % 256]) * (i + 1))
        for i in range(count)
    ]
    with db.transaction():
        db.outbox.add_many(iter(rows))
    assert db.outbox.pending() == rows
    assert db.outbox.last_seq() == first + count - 1
    db.outbox.delete_through(first + count - 1)
    assert db.outbox.depth() == 0 and db.outbox.last_seq() == first + count - 1
    db.close()
