"""An event's JSON and prev-event rows inserted in a transaction are written together,
one statement per table, at the commit (or at an input savepoint's bounds).

`Database.insert_event` writes the event's own row at once and keeps the other two in
memory. What must hold, on a real SQLite file: the connection's reads of those rows
(`event_json`, `prev_event_ids_of`) see them at once; an input whose
savepoint is undone takes exactly its own rows back, never an earlier input's (even
one inserted outside any savepoint, or written by a read inside the undone one); a
transaction that does not commit writes none; one that commits writes them all.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from worker.storage.database import DB_FILENAME, Database


class Boom(Exception):
    pass


def _insert(db: Database, room_nid: int, event_id: str, prevs: list[str]) -> int:
    return db.insert_event(
        event_id=event_id,
        room_nid=room_nid,
        type_nid=18,
        state_key_nid=0,
        depth=1,
        status=0,
        reason=None,
        before_snapshot_nid=0,
        after_snapshot_nid=0,
        auth_event_nids=[],
        prev_event_ids=prevs,
        json_bytes=f'{{"id":"{event_id}"}}'.encode(),
    )


def _on_disk(path: Path) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]]]:
    conn = sqlite3.connect(path / DB_FILENAME)
    try:
        json_rows = [
            (int(nid), bytes(raw))
            for nid, raw in conn.execute("SELECT event_nid, json FROM event_json ORDER BY 1")
        ]
        edges = conn.execute("SELECT event_nid, prev_event_id FROM event_edges ORDER BY 1, 2")
        return json_rows, [(int(nid), str(prev)) for nid, prev in edges]
    finally:
        conn.close()


def test_rows_are_read_at_once_and_written_at_the_commit(tmp_path: Path) -> None:
    db = Database(tmp_path)
    with db.transaction():
        room = db.create_room("!r:example.org", "10")
        a = _insert(db, room.nid, "$a", [])
        b = _insert(db, room.nid, "$b", ["$a", "$x"])
        assert _on_disk(tmp_path) == ([], [])  # not written yet
        assert db.event_json(b) == b'{"id":"$b"}'
        assert sorted(db.prev_event_ids_of([b])) == ["$a", "$x"]
    assert _on_disk(tmp_path) == (
        [(a, b'{"id":"$a"}'), (b, b'{"id":"$b"}')],
        [(b, "$a"), (b, "$x")],
    )
    db.close()


def test_an_undone_savepoint_takes_back_its_own_rows_only(tmp_path: Path) -> None:
    db = Database(tmp_path)
    with db.transaction():
        room = db.create_room("!r:example.org", "10")
        # Outside any savepoint: must survive the undone input below.
        first = _insert(db, room.nid, "$first", [])
        with pytest.raises(Boom), db.savepoint():
            undone = _insert(db, room.nid, "$undone", ["$first"])
            # A read writes the rows inside.
            assert db.prev_event_ids_of([undone]) == ["$first"]
            raise Boom
        assert db.prev_event_ids_of([undone]) == []
        assert db.event_json(first) == b'{"id":"$first"}'
        with db.savepoint():
            kept = _insert(db, room.nid, "$kept", ["$first"])
        with pytest.raises(Boom), db.savepoint():
            again = _insert(db, room.nid, "$again", ["$kept"])
            raise Boom
        after = _insert(db, room.nid, "$after", ["$kept"])
        assert kept == undone and after == again  # undone NIDs are given out again
    assert _on_disk(tmp_path) == (
        [(first, b'{"id":"$first"}'), (kept, b'{"id":"$kept"}'), (after, b'{"id":"$after"}')],
        [(kept, "$first"), (after, "$kept")],
    )
    db.close()


def test_an_undone_unguarded_input_or_transaction_writes_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path)
    with db.transaction():
        room = db.create_room("!r:example.org", "10")
    with pytest.raises(Boom), db.transaction():
        with db.unguarded():
            _insert(db, room.nid, "$a", [])
        raise Boom
    with db.transaction():
        b = _insert(db, room.nid, "$b", [])
    assert _on_disk(tmp_path) == ([(b, b'{"id":"$b"}')], [])
    db.close()
