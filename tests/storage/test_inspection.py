"""Operator inspection reads through a connection that cannot write, and reads what the
writer stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from worker.storage.blocks import unpack_nids
from worker.storage.database import Database
from worker.storage.inspection import Inspector
from worker.storage.reader import ReadError
from worker.storage.state import StateStore


def test_inspector_cannot_change_the_file(tmp_path: Path) -> None:
    db = Database(tmp_path)
    with db.transaction():
        room = db.create_room("!room:test", "10")
        snapshot = StateStore(db).derive(room.nid, 0, {(1, 1): 7})
        room.snapshot_nid = snapshot
        db.update_room(room)
    block_nids = db.block_rows.snapshot_block_nids(snapshot)
    db.close()
    before = db.path.read_bytes()
    with Inspector.open(tmp_path) as inspector:
        for statement in ("DELETE FROM rooms", "CREATE TABLE t (x)", "PRAGMA user_version = 9"):
            with pytest.raises(sqlite3.OperationalError):
                inspector._conn.execute(statement)
        assert [r.room_id for r in inspector.rows.rooms()] == ["!room:test"]
        assert inspector.rows.rooms()[0].snapshot_nid == snapshot
        ((nid, room_nid, packed),) = inspector.rows.snapshots()
        assert (nid, room_nid) == (snapshot, room.nid)
        assert unpack_nids(packed) == block_nids
        assert inspector.stats().rooms == 1
    assert db.path.read_bytes() == before


def test_no_database_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ReadError) as caught:
        Inspector.open(tmp_path)
    assert caught.value.code == "no_database"
    assert not (tmp_path / "roomserver.db").exists()
