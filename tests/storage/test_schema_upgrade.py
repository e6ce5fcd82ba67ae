"""The upgrades from schema version 3 to 4 and from 4 to 5, on real SQLite files.

Version 4 records, with each awaited prev event, the stored events processed without
it, and drops the index of `event_edges` by prev event that version 3 read children
through. A database written by version 3 (its DDL as it was, schema_v3.sql) must then
give the same answers as one written by version 4 throughout: the same children for
an awaited prev event, and the same outputs, forward extremities and rows once the late
prev event arrives. Version 5 finds events by a 64-bit key of their ID instead of a
unique index of it (schema_v4.sql is version 4's DDL): an upgraded file must equal a
fresh one row for row.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from tests.harness.pipeline import ALICE, Harness
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event
from worker.pipeline import Disposition
from worker.storage.database import DB_FILENAME
from worker.storage.schema import SCHEMA_VERSION

SCHEMA_V3 = Path(__file__).with_name("schema_v3.sql")


def _late_parents(path: Path) -> tuple[RoomBuilder, Event, Event, list[Event]]:
    """A room whose events named two prev events that never came: two accepted
    children of `late` and an outlier naming it, and one child of `gone`, processed
    without them after the wait. Returns the builder, `late`, `gone` and the children."""
    h = Harness(path)
    late = h.builder.message(ALICE, "late parent")
    first = h.builder.message(ALICE, "first", prev_events=[late.event_id])
    second = h.builder.message(ALICE, "second", prev_events=[late.event_id])
    outlier = h.builder.message(ALICE, "outlier", prev_events=[late.event_id])
    gone = h.builder.message(ALICE, "never arrives", prev_events=[second.event_id])
    orphan = h.builder.message(ALICE, "orphan", prev_events=[gone.event_id])
    for event in (first, second, orphan):
        assert h.send(event) is Disposition.ACK
    assert h.send(outlier, kind="outlier") is Disposition.ACK
    wait = h.pipeline.held_max_wait_ms + 1000
    assert h.pipeline.release_expired(int(time.time() * 1000) + wait) == 3
    h.db.close()
    return h.builder, late, gone, [first, second, outlier, orphan]


def _older_copy(
    source: Path,
    target: Path,
    schema: Path,
    version: int,
    *,
    skip: str = "",
    finish: Callable[[sqlite3.Connection], object] = lambda conn: None,
) -> set[str]:
    """A database in `target` made by an older version's DDL (`schema`), holding
    `source`'s rows in the columns that version had (every table but `skip`), and
    what `finish` adds in the same transaction (with `source` attached as `new`);
    returns the names in its schema."""
    target.mkdir()
    with contextlib.closing(sqlite3.connect(target / DB_FILENAME)) as conn:
        conn.executescript(schema.read_text(encoding="utf-8"))
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("ATTACH DATABASE ? AS new", (str(source / DB_FILENAME),))
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' AND name != ?",
                (skip,),
            )
        ]
        with conn:
            for name in tables:
                # The columns the older version had (later versions added some).
                columns = ", ".join(
                    row[1] for row in conn.execute(f'PRAGMA main.table_info("{name}")')
                )
                conn.execute(f'INSERT INTO main."{name}" SELECT {columns} FROM new."{name}"')
            # The AUTOINCREMENT counters as they were (the copy above moved them).
            conn.execute("DELETE FROM main.sqlite_sequence")
            conn.execute("INSERT INTO main.sqlite_sequence SELECT * FROM new.sqlite_sequence")
            finish(conn)
        conn.execute("DETACH DATABASE new")
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}


def _as_version_3(source: Path, target: Path) -> None:
    """The same rows in a database made by version 3's DDL: the awaited prev events
    without their children, and `event_edges` indexed by prev event."""
    names = _older_copy(
        source,
        target,
        SCHEMA_V3,
        3,
        skip="awaited_prev_events",
        finish=lambda conn: conn.execute(
            "INSERT INTO main.awaited_prev_events "
            "SELECT DISTINCT event_id FROM new.awaited_prev_events"
        ),
    )
    assert "event_edges_prev" in names


def _nid(h: Harness, event: Event) -> int:
    row = h.db.get_event_row(event.event_id)
    assert row is not None
    return row.nid


def _dump(path: Path) -> tuple[set[str], list[str]]:
    """The database as SQL text, but for the arrival times (the clock's, not the
    schema's): its schema statements as a set (an upgrade that makes a table again
    makes its indexes after the others, and the dump lists them in the order made),
    and its rows in order."""
    with contextlib.closing(sqlite3.connect(path / DB_FILENAME)) as conn:
        conn.execute("UPDATE events SET received_ts = 0")  # not committed
        lines = list(conn.iterdump())
    schema = {line for line in lines if line.startswith("CREATE ")}
    return schema, [line for line in lines if line not in schema]


def test_a_version_3_database_answers_as_a_version_4_one(tmp_path: Path) -> None:
    fresh, upgraded = tmp_path / "fresh", tmp_path / "upgraded"
    builder, late, gone, children = _late_parents(fresh)
    first, second, outlier, orphan = children
    _as_version_3(fresh, upgraded)

    runs = {path: Harness(path, room=builder) for path in (fresh, upgraded)}
    for path, h in runs.items():
        assert h.db.conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        names = {name for (name,) in h.db.conn.execute("SELECT name FROM sqlite_master")}
        assert not names & {"event_edges_prev", "user_room_memberships_event"}
        assert "awaited_prev_events_v3" not in names
        nid = {e.event_id: _nid(h, e) for e in children}
        kids = {nid[first.event_id], nid[second.event_id]}
        # Version 3 read every stored event naming the prev event, the outlier too
        # (which counts for nothing); version 4 recorded the events processed without it.
        extra = {nid[outlier.event_id]} if path == upgraded else set()
        assert set(h.db.children_of(late.event_id)) == kids | extra
        assert h.db.children_of(gone.event_id) == [nid[orphan.event_id]]
        assert sorted(h.db.awaited_prevs.all()) == sorted([late.event_id, gone.event_id])

    outputs = {}
    for path, h in runs.items():
        h.outbox()
        assert h.send(late) is Disposition.ACK
        outputs[path] = h.outbox()
        room = h.db.get_room(h.room_id)
        assert room is not None
        # The late parent arrived after its accepted children: they, not it, are
        # among the room's forward extremities (beside the orphan, whose prev event
        # never came), and it replaces its own prev event there.
        latest = set(h.db.event_ids_of(room.latest_event_nids).values())
        assert latest == {first.event_id, second.event_id, orphan.event_id}
        assert h.db.awaited_prevs.all() == [gone.event_id]
        h.db.close()
    assert outputs[fresh] == outputs[upgraded]
    [(_, body)] = outputs[fresh]
    assert body["event_id"] == late.event_id
    assert _dump(fresh) == _dump(upgraded)


def test_the_upgrade_runs_once(tmp_path: Path) -> None:
    """Opening an upgraded database again changes nothing (the upgrade may be cut off
    between its transaction and the new version number, and then runs again)."""
    fresh, upgraded = tmp_path / "fresh", tmp_path / "upgraded"
    builder, *_ = _late_parents(fresh)
    _as_version_3(fresh, upgraded)
    Harness(upgraded, room=builder).db.close()
    before = _dump(upgraded)
    with contextlib.closing(sqlite3.connect(upgraded / DB_FILENAME)) as conn:
        conn.execute("PRAGMA user_version = 3")
    Harness(upgraded, room=builder).db.close()
    assert _dump(upgraded) == before


SCHEMA_V4 = Path(__file__).with_name("schema_v4.sql")


def _as_version_4(source: Path, target: Path) -> None:
    """The same rows in a database made by version 4's DDL: `events` without its
    `id_key` column, its event IDs under a unique index."""
    assert "sqlite_autoindex_events_1" in _older_copy(source, target, SCHEMA_V4, 4)


def test_a_version_4_database_answers_as_a_version_5_one(tmp_path: Path) -> None:
    """Version 5 finds events by a key of their ID (`events.id_key`, computed for every
    stored row by the upgrade), not by a unique index of the ID: the upgraded file is
    the fresh one, row for row, and answers the same, before and after a late event."""
    fresh, upgraded = tmp_path / "fresh", tmp_path / "upgraded"
    builder, late, _, children = _late_parents(fresh)
    _as_version_4(fresh, upgraded)
    with contextlib.closing(sqlite3.connect(upgraded / DB_FILENAME)) as conn:
        (stored,) = conn.execute("SELECT count(*) FROM events").fetchone()
    assert stored > len(children)

    runs = {path: Harness(path, room=builder) for path in (fresh, upgraded)}
    outputs = {}
    for path, h in runs.items():
        assert h.db.conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        names = {name for (name,) in h.db.conn.execute("SELECT name FROM sqlite_master")}
        assert "sqlite_autoindex_events_1" not in names and "events_v4" not in names
        assert {"events_id_key", "events_room"} <= names
        for event in children:
            row = h.db.get_event_row(event.event_id)
            assert row is not None and row.event_id == event.event_id
        assert set(h.db.get_event_rows([e.event_id for e in children])) == {
            e.event_id for e in children
        }
        assert h.db.get_event_row(late.event_id) is None
        h.outbox()
        assert h.send(late) is Disposition.ACK
        assert h.send(late) is Disposition.ACK  # a duplicate: stored once
        outputs[path] = h.outbox()
        assert h.db.conn.execute(
            "SELECT count(*) FROM events WHERE event_id = ?", (late.event_id,)
        ).fetchone() == (1,)
        h.db.close()
    assert outputs[fresh] == outputs[upgraded]
    assert _dump(fresh) == _dump(upgraded)

    before = _dump(upgraded)
    with contextlib.closing(sqlite3.connect(upgraded / DB_FILENAME)) as conn:
        conn.execute("PRAGMA user_version = 4")
    Harness(upgraded, room=builder).db.close()
    assert _dump(upgraded) == before
