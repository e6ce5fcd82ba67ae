"""Room rows changed in a transaction are written once, at its commit.

`Database.update_room` keeps the change in memory until the commit (a linear room
changes its row with every event). What must hold: `get_room` sees the change at once,
an input whose savepoint is undone takes its change back (even after several changes
to the same room), a transaction that does not commit writes nothing, and one that
commits writes the last change.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from worker.storage.database import DB_FILENAME, Database, RoomRow


class Boom(Exception):
    pass


def _on_disk(path: Path, room_id: str) -> tuple[int, bytes, int, int]:
    conn = sqlite3.connect(path / DB_FILENAME)
    try:
        row = conn.execute(
            "SELECT snapshot_nid, latest_event_nids, last_sent_event_nid, depth FROM rooms "
            "WHERE room_id = ?",
            (room_id,),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), bytes(row[1]), int(row[2]), int(row[3])


def _changed(room: RoomRow, step: int) -> RoomRow:
    room.snapshot_nid = 10 + step
    room.latest_event_nids = [100 + step]
    room.last_sent_event_nid = 100 + step
    room.depth = step
    return room


def test_room_updates_follow_savepoints_and_the_commit(tmp_path: Path) -> None:
    db = Database(tmp_path)
    with db.transaction():
        room = db.create_room("!r:example.org", "10")
    with db.transaction():
        with db.savepoint():
            db.update_room(_changed(room, 1))
        assert db.get_room("!r:example.org") == RoomRow(
            room.nid, "!r:example.org", "10", 11, [101], 101, 1
        )
        with pytest.raises(Boom), db.savepoint():
            db.update_room(_changed(room, 2))
            db.update_room(_changed(room, 3))
            raise Boom
        # Undone back to the first change, not to the second.
        assert db.get_room("!r:example.org") == RoomRow(
            room.nid, "!r:example.org", "10", 11, [101], 101, 1
        )
        assert _on_disk(tmp_path, "!r:example.org") == (0, b"", 0, 0)  # not written yet
    assert _on_disk(tmp_path, "!r:example.org")[0] == 11
    assert db.get_room("!r:example.org") == RoomRow(
        room.nid, "!r:example.org", "10", 11, [101], 101, 1
    )

    with pytest.raises(Boom), db.transaction():
        db.update_room(_changed(room, 4))
        raise Boom
    assert db.get_room("!r:example.org") == RoomRow(
        room.nid, "!r:example.org", "10", 11, [101], 101, 1
    )
    assert _on_disk(tmp_path, "!r:example.org")[0] == 11
    db.close()
