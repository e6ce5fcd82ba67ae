-- The schema of version 4 (worker/storage/schema.py DDL at commit 62d09c4), for the
-- test of the upgrade to version 5.
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
CREATE TABLE IF NOT EXISTS events (
    nid INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
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
CREATE TABLE IF NOT EXISTS event_json (
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

CREATE TABLE IF NOT EXISTS awaited_prev_events (
    event_id TEXT NOT NULL,
    child_event_nid INTEGER NOT NULL,
    PRIMARY KEY (event_id, child_event_nid)
) WITHOUT ROWID;
-- rooms whose processing failed unexpectedly (a bug, not bad input): nothing more of
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
