"""SQLite errors are told apart by SQLite's own result code, produced for real here:
busy → retry; full, damaged, not a database → stop (a storage fault); a constraint
violation → neither (a bug: the pipeline parks the room)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from worker.storage.database import DB_FILENAME, Database, is_transient, storage_fault

pytestmark = pytest.mark.unit


def test_busy_is_transient(tmp_path: Path) -> None:
    db = Database(tmp_path)
    other = sqlite3.connect(db.path, isolation_level=None, timeout=0)
    try:
        with db.transaction(), pytest.raises(sqlite3.OperationalError) as caught:
            other.execute("BEGIN IMMEDIATE")
        assert is_transient(caught.value)
        assert storage_fault(caught.value, db.path) is None
    finally:
        other.close()
        db.close()


def test_constraint_is_neither_transient_nor_a_storage_fault(tmp_path: Path) -> None:
    db = Database(tmp_path)
    try:
        with pytest.raises(sqlite3.IntegrityError) as caught, db.transaction():
            db.create_room("!a:example.org", "10")
            db.create_room("!a:example.org", "10")
        assert caught.value.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
        assert not is_transient(caught.value)
        assert storage_fault(caught.value, db.path) is None
    finally:
        db.close()


def test_full_disk_keeps_its_own_error(tmp_path: Path) -> None:
    """The rollback after SQLITE_FULL must not replace it with "cannot rollback - no
    transaction is active"."""
    db = Database(tmp_path)
    pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
    db.conn.execute(f"PRAGMA max_page_count = {pages + 4}")
    try:
        with pytest.raises(sqlite3.Error) as caught, db.transaction():
            for i in range(100):
                db.outbox.add("s", f"m{i}", b"x" * 65536)
        assert caught.value.sqlite_errorname == "SQLITE_FULL"
        fault = storage_fault(caught.value, db.path)
        assert fault is not None
        assert str(fault) == (
            f"storage fault: the disk is full (SQLITE_FULL) writing {db.path}; "
            "free space and restart"
        )
        assert db.outbox.depth() == 0  # rolled back
    finally:
        db.close()


def test_not_a_database_is_a_storage_fault(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"this is not SQLite" * 512)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        Database(tmp_path)
    fault = storage_fault(caught.value, tmp_path / DB_FILENAME)
    assert fault is not None and "the file is not an SQLite database (SQLITE_NOTADB)" in str(fault)
    assert not is_transient(caught.value)
