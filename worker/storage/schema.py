"""The database schema and its well-known NIDs.

Preassigned NIDs let the hot path name the auth-relevant event types and the empty
state key as constants, without a lookup.
"""

from __future__ import annotations

import sqlite3

#: 2: parked rooms and their inputs. A worker of version 1 would not know that a room is
#: parked and would process its later inputs without the one that failed.
#: 3: the index of users' rooms (`user_room_memberships`), filled from every room's
#: current state on the upgrade (worker.storage.membership_index).
#: 4: the awaited prev events name the stored events that were processed without them
#: (filled from `event_edges` on the upgrade), and `event_edges` has no index by prev
#: event any more: it served only the question those rows now answer, and each event
#: wrote a random leaf of it. Nor has `user_room_memberships` one by event NID (its rows
#: are deleted by their key).
#: 5: events are found by ID through `events_id_key`, an index of a 64-bit key of the ID
#: (worker.storage.id_keys), not through a unique index of the ID: a quarter of the
#: leaves, so each batch's random inserts write fewer pages.
SCHEMA_VERSION = 5

#: Well-known event types with fixed NIDs (never 0: 0 means "none").
WELL_KNOWN_TYPES: dict[str, int] = {
    "m.room.create": 1,
    "m.room.power_levels": 2,
    "m.room.join_rules": 3,
    "m.room.third_party_invite": 4,
    "m.room.member": 5,
    "m.room.redaction": 6,
    "m.room.history_visibility": 7,
    "m.room.name": 8,
    "m.room.topic": 9,
    "m.room.avatar": 10,
    "m.room.canonical_alias": 11,
    "m.room.aliases": 12,
    "m.room.encryption": 13,
    "m.room.guest_access": 14,
    "m.room.server_acl": 15,
    "m.room.tombstone": 16,
    "m.room.pinned_events": 17,
    "m.room.message": 18,
    "m.room.encrypted": 19,
}
#: Types that get NIDs later start here, leaving room for more well-known ones.
FIRST_DYNAMIC_TYPE_NID = 256
EMPTY_STATE_KEY_NID = 1

#: Event status values stored in `events.status`.
STATUS_ACCEPTED = 0
STATUS_REJECTED = 1
STATUS_SOFT_FAILED = 2
STATUS_OUTLIER = 3
STATUS_NAMES = {
    STATUS_ACCEPTED: "accepted",
    STATUS_REJECTED: "rejected",
    STATUS_SOFT_FAILED: "soft_failed",
    STATUS_OUTLIER: "outlier",
}

#: Created by the DDL, and by the upgrade from version 3 in place of the older table.
AWAITED_PREV_EVENTS = """
CREATE TABLE IF NOT EXISTS awaited_prev_events (
    event_id TEXT NOT NULL,
    child_event_nid INTEGER NOT NULL,
    PRIMARY KEY (event_id, child_event_nid)
) WITHOUT ROWID;
"""

#: Created by the DDL, and by the upgrade from version 4 in place of the older table.
EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    nid INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    -- the event ID's 64-bit key (worker.storage.id_keys): events are found by ID
    -- through its index, `id_key = ? AND event_id = ?`
    id_key INTEGER NOT NULL,
    room_nid INTEGER NOT NULL,
    type_nid INTEGER NOT NULL,
    -- 0 for events that are not state events
    state_key_nid INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT,
    -- state before / after the event (0 for outliers and where unknown)
    before_snapshot_nid INTEGER NOT NULL DEFAULT 0,
    after_snapshot_nid INTEGER NOT NULL DEFAULT 0,
    -- packed int64 NIDs of the auth events
    auth_event_nids BLOB NOT NULL DEFAULT x'',
    redacted_by TEXT,
    -- stream order of arrival, for queries and the outbox
    received_ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_room ON events(room_nid, nid);
CREATE INDEX IF NOT EXISTS events_id_key ON events(id_key);
"""

DDL = (
    """
CREATE TABLE IF NOT EXISTS event_types (
    nid INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS state_keys (
    nid INTEGER PRIMARY KEY,
    state_key TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS rooms (
    nid INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL UNIQUE,
    room_version TEXT NOT NULL,
    -- snapshot of the room's current state (0 before any state)
    snapshot_nid INTEGER NOT NULL DEFAULT 0,
    -- forward extremities: packed int64 event NIDs
    latest_event_nids BLOB NOT NULL DEFAULT x'',
    last_sent_event_nid INTEGER NOT NULL DEFAULT 0,
    depth INTEGER NOT NULL DEFAULT 0
);
"""
    + EVENTS
    + """CREATE TABLE IF NOT EXISTS event_json (
    event_nid INTEGER PRIMARY KEY,
    json BLOB NOT NULL
);
-- prev-event references by ID: a prev event may not be stored yet
CREATE TABLE IF NOT EXISTS event_edges (
    event_nid INTEGER NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_nid, prev_event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_blocks (
    nid INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    entry_count INTEGER NOT NULL,
    -- packed int64 triples (type NID, state key NID, event NID), sorted; event NID 0 removes
    entries BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state_snapshots (
    nid INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    room_nid INTEGER NOT NULL,
    -- packed int64 block NIDs, oldest first; a later block overrides an earlier one
    block_nids BLOB NOT NULL
);
-- accepted redactions by target, so a target that arrives later is redacted too
CREATE TABLE IF NOT EXISTS redactions (
    target_event_id TEXT NOT NULL,
    redaction_event_nid INTEGER NOT NULL,
    -- the redaction's sender had the redact power level (else only same-domain targets)
    may_redact_any INTEGER NOT NULL,
    PRIMARY KEY (target_event_id, redaction_event_nid)
) WITHOUT ROWID;
-- timeline events waiting for prev events that are not stored yet (the input kept whole)
CREATE TABLE IF NOT EXISTS held_events (
    event_id TEXT PRIMARY KEY,
    room_nid INTEGER NOT NULL,
    -- JSON list of the prev event IDs that were missing when it arrived
    missing_prev_event_ids TEXT NOT NULL,
    subject TEXT NOT NULL,
    stream_sequence INTEGER NOT NULL,
    payload BLOB NOT NULL,
    held_since_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS held_events_since ON held_events(held_since_ms);
CREATE TABLE IF NOT EXISTS held_waits (
    missing_event_id TEXT NOT NULL,
    held_event_id TEXT NOT NULL,
    PRIMARY KEY (missing_event_id, held_event_id)
) WITHOUT ROWID;
-- prev events that stored timeline events named while they were unknown (processed
-- after the wait, or with supplied state), with those events: when one arrives, they
-- are the children it already has
"""
    + AWAITED_PREV_EVENTS
    + """-- rooms whose processing failed unexpectedly (a bug, not bad input): nothing more of
-- the room is processed until it is retried, so a bug never forks it silently
CREATE TABLE IF NOT EXISTS parked_rooms (
    room_id TEXT PRIMARY KEY,
    -- the input that failed (its event ID when it could be read)
    event_id TEXT,
    stream_sequence INTEGER NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT NOT NULL,
    -- the latest failure; failures counts the first and every failed retry
    parked_at_ms INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 1
);
-- the failed input and every later input of a parked room, whole, in arrival order
CREATE TABLE IF NOT EXISTS parked_inputs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    stream_sequence INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_inputs_room ON parked_inputs(room_id, seq);
-- a redelivered input (its ack was lost) is kept once
CREATE UNIQUE INDEX IF NOT EXISTS parked_inputs_stream
    ON parked_inputs(stream_sequence) WHERE stream_sequence > 0;
-- each user's membership in each room whose current state has a member event for them,
-- kept by the write path as current states change (worker.storage.membership_index)
CREATE TABLE IF NOT EXISTS user_room_memberships (
    user_id TEXT NOT NULL,
    room_nid INTEGER NOT NULL,
    -- join, invite, leave, ban, knock ('' when the content has none)
    membership TEXT NOT NULL,
    -- the member event in the room's current state
    event_nid INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_nid)
) WITHOUT ROWID;
-- outputs owed by committed inputs, published after commit and then deleted
CREATE TABLE IF NOT EXISTS outbox (
    -- AUTOINCREMENT: sequence numbers are never reused, so "published through N" is safe
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create tables and preassigned NIDs if missing; refuse a newer schema."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has schema version {version}, newer than this worker's "
            f"{SCHEMA_VERSION}; upgrade the worker"
        )
    if 0 < version < 5:
        # First: the DDL indexes the new column, and the upgrades below find events by it.
        upgrade_to_5(conn)
    with conn:
        conn.executescript(DDL)
        conn.executemany(
            "INSERT OR IGNORE INTO event_types (nid, name) VALUES (?, ?)",
            [(nid, name) for name, nid in WELL_KNOWN_TYPES.items()],
        )
        conn.execute(
            "INSERT OR IGNORE INTO event_types (nid, name) VALUES (?, ?)",
            (FIRST_DYNAMIC_TYPE_NID - 1, "\x00reserved"),
        )
        conn.execute(
            "INSERT OR IGNORE INTO state_keys (nid, state_key) VALUES (?, '')",
            (EMPTY_STATE_KEY_NID,),
        )
        if 0 < version < 3:
            # Imported here: the index module reads the constants of this one.
            from worker.storage.membership_index import index_existing_rooms

            index_existing_rooms(conn)
        if 0 < version < 4:
            upgrade_to_4(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def upgrade_to_4(conn: sqlite3.Connection) -> None:
    """The upgrade to version 4: the awaited prev events gain the stored events that
    named them, `event_edges` loses its index by prev event, and
    `user_room_memberships` its index by event NID.

    The children are read from `event_edges` through that index, before it goes. They
    are every stored event naming the awaited prev event, as the version-3 worker's
    question for its children read them: outliers and rejected events among them count
    for nothing there either, and every accepted one was processed without the prev
    event, so the worker of this version records it too. An awaited prev event no
    stored event names keeps no row, which answers the same (no children). Safe to run
    again: a table already of the new shape is left as it is."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(awaited_prev_events)")]
    if "child_event_nid" not in columns:
        conn.executescript(
            "BEGIN IMMEDIATE;"
            "ALTER TABLE awaited_prev_events RENAME TO awaited_prev_events_v3;"
            + AWAITED_PREV_EVENTS
            + "INSERT OR IGNORE INTO awaited_prev_events (event_id, child_event_nid)"
            " SELECT a.event_id, g.event_nid FROM awaited_prev_events_v3 a"
            " JOIN event_edges g ON g.prev_event_id = a.event_id;"
            "DROP TABLE awaited_prev_events_v3;"
            "COMMIT;"
        )
    conn.execute("DROP INDEX IF EXISTS event_edges_prev")
    # Rows leaving the index are found by their key since version 4 (see
    # `worker.storage.membership_index.apply_state_change`).
    conn.execute("DROP INDEX IF EXISTS user_room_memberships_event")


#: Version 4's rows with their keys (`event_key`: worker.storage.id_keys.register).
_V4_EVENT_COLUMNS = (
    "nid, event_id, room_nid, type_nid, state_key_nid, depth, status, reason, "
    "before_snapshot_nid, after_snapshot_nid, auth_event_nids, redacted_by, received_ts"
)
_COPY_V4_EVENTS = (
    "INSERT INTO events ("
    + _V4_EVENT_COLUMNS
    + ", id_key) SELECT "
    + _V4_EVENT_COLUMNS
    + ", event_key(event_id) FROM events_v4 ORDER BY nid;"
)


def upgrade_to_5(conn: sqlite3.Connection) -> None:
    """The upgrade to version 5: `events` gains its `id_key` column and loses its unique
    index of `event_id`, for `events_id_key`.

    SQLite cannot drop a column's UNIQUE constraint, so the table is made again with the
    same DDL as a new database's and its rows copied, keys computed by the connection's
    `event_key` function (worker.storage.id_keys), all in one transaction. Safe to run
    again: a table that already has the column is left as it is."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    if "id_key" in columns:
        return
    conn.executescript(
        "BEGIN IMMEDIATE;"
        "ALTER TABLE events RENAME TO events_v4;"
        "DROP INDEX IF EXISTS events_room;" + EVENTS + _COPY_V4_EVENTS + "DROP TABLE events_v4;"
        "COMMIT;"
    )
