"""The per-room index of auth edges read upwards (`worker.storage.auth_citers`) holds
exactly the edges of the events' `auth_events`, on real SQLite rows.

A state resolution walks up these edges to decide whether an agreed event's auth chain
holds an event; a missing edge would make it answer "no" where the walk down from the
agreed events answers "yes", so every edge must be there or the room marked incomplete.
"""

from __future__ import annotations

import json
from pathlib import Path

from worker.storage.auth_citers import AuthCiters
from worker.storage.database import Database, RoomRow
from worker.storage.schema import STATUS_ACCEPTED

MEMBER_TYPE = "m.room.member"


def _store(
    db: Database,
    room_nid: int,
    event_id: str,
    auth_ids: list[str],
    *,
    state_key: str | None = "",
    event_type: str = MEMBER_TYPE,
) -> int:
    """Store an event the way the pipeline does: its auth events' NIDs are those of the
    ones stored at the time; its JSON names all of them."""
    rows = db.get_event_rows(auth_ids)
    return db.insert_event(
        event_id=event_id,
        room_nid=room_nid,
        type_nid=db.type_nid(event_type, create=True),
        state_key_nid=db.state_key_nid(state_key, create=True) if state_key is not None else 0,
        depth=1,
        status=STATUS_ACCEPTED,
        reason=None,
        before_snapshot_nid=0,
        after_snapshot_nid=0,
        auth_event_nids=[rows[e].nid for e in auth_ids if e in rows],
        prev_event_ids=[],
        json_bytes=json.dumps({"auth_events": auth_ids}).encode(),
    )


def _indexed(tmp_path: Path) -> tuple[Database, AuthCiters]:
    """A database and an index of its auth citers, as the pipeline's resolver makes it
    (reading the rows the open transaction has not written yet)."""
    db = Database(tmp_path)
    return db, AuthCiters(db.conn, db.on_rollback, write_deferred=db.write_deferred)


def _create_and_join(db: Database) -> tuple[RoomRow, int, int]:
    """A room with its create event and a join citing it, stored in the open
    transaction: the room row and the two events' NIDs."""
    room = db.create_room("!r:test", "10")
    create = _store(db, room.nid, "$create", [], event_type="m.room.create")
    join = _store(db, room.nid, "$join", ["$create"], state_key="@a:test")
    return room, create, join


def test_edges_follow_rows_stored_later_and_auth_events_that_arrive_late(tmp_path: Path) -> None:
    db, index = _indexed(tmp_path)
    with db.transaction():
        room, create, join = _create_and_join(db)
    citers = index.room(room.nid)
    assert citers.by_nid == {create: [join]} and citers.complete
    with db.transaction():
        # Stored before one of its auth events: that edge is kept by ID until it arrives.
        late = _store(db, room.nid, "$late", ["$create", "$pl"], state_key="@b:test")
    citers = index.room(room.nid)
    assert citers.by_id == {"$pl": [late]}
    assert late in citers.by_nid[create]
    with db.transaction():
        pl = _store(db, room.nid, "$pl", ["$create"], event_type="m.room.power_levels")
    citers = index.room(room.nid)
    assert "$pl" not in citers.by_id
    assert citers.by_nid[pl] == [late] and citers.complete


def test_edges_to_other_rooms_or_non_state_events_mark_the_room_incomplete(
    tmp_path: Path,
) -> None:
    db, index = _indexed(tmp_path)
    with db.transaction():
        room = db.create_room("!r:test", "10")
        other = db.create_room("!o:test", "10")
        _store(db, other.nid, "$elsewhere", [], event_type="m.room.create")
        _store(db, room.nid, "$create", [], event_type="m.room.create")
        _store(db, room.nid, "$msg", ["$create"], state_key=None, event_type="m.room.message")
    assert index.room(room.nid).complete  # a message citing is no edge an agreed event uses
    with db.transaction():
        _store(db, room.nid, "$odd", ["$msg"], state_key="@a:test")
    assert not index.room(room.nid).complete
    with db.transaction():
        third = db.create_room("!t:test", "10")
        _store(db, third.nid, "$c3", [], event_type="m.room.create")
        _store(db, third.nid, "$x", ["$c3", "$elsewhere"], state_key="@x:test")
    assert not index.room(third.nid).complete


def test_an_undone_transaction_forgets_what_it_read(tmp_path: Path) -> None:
    db, index = _indexed(tmp_path)
    with db.transaction():
        room = db.create_room("!r:test", "10")
        _store(db, room.nid, "$create", [], event_type="m.room.create")
    index.room(room.nid)
    try:
        with db.transaction():
            _store(db, room.nid, "$gone", ["$create"], state_key="@a:test")
            assert sum(map(len, index.room(room.nid).by_nid.values())) == 1
            raise RuntimeError("undo")
    except RuntimeError:
        pass
    assert sum(map(len, index.room(room.nid).by_nid.values())) == 0


def test_rows_stored_in_the_open_transaction_are_indexed(tmp_path: Path) -> None:
    """The pipeline resolves state inside the batch's transaction, where the JSON of the
    events stored so far may not be written yet (`Database.insert_event`): the index
    reads it all the same."""
    db, index = _indexed(tmp_path)
    with db.transaction():
        room, create, join = _create_and_join(db)
        citers = index.room(room.nid)
        assert citers.by_nid == {create: [join]} and citers.complete
    db.close()
