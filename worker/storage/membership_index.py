"""The index of users' rooms: `user_room_memberships`, kept as current states change.

"Which rooms is this user joined to?" is asked by every part of a homeserver (sync,
presence, device lists, restricted joins), and a scan of every room's current state
would cost a decode of every room's blocks. So the write path keeps one row per
(user, room) whose current state holds a member event for that user, updated in the
same transaction as the room's current state: from the delta it computes anyway
(`adds` and `removes` of the current state), never from a scan.

The table is in `worker.storage.schema`; a database from before it (schema versions 1
and 2) is indexed once, when the schema is upgraded: the one time every room's current
state is read.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Final

from worker.storage.blocks import NidState, merge_blocks, unpack_nids
from worker.storage.id_keys import E_BY_IDS, id_keys_params
from worker.storage.schema import WELL_KNOWN_TYPES

MEMBER_TYPE_NID: Final = WELL_KNOWN_TYPES["m.room.member"]

#: The index rows (user, membership, event NID) of the member events among some events.
_MEMBER_ROWS: Final = (
    "SELECT k.state_key, coalesce(json_extract(CAST(j.json AS TEXT), "
    "'$.content.membership'), ''), e.nid FROM events e "
    "JOIN state_keys k ON k.nid = e.state_key_nid "
    "JOIN event_json j ON j.event_nid = e.nid WHERE e.type_nid = ? AND "
)
_BY_IDS: Final = _MEMBER_ROWS + E_BY_IDS
_BY_NIDS: Final = _MEMBER_ROWS + "e.nid IN (SELECT value FROM json_each(?))"
#: (user, event NID) of the member events among some events, by event ID.
_MEMBERS_BY_IDS: Final = (
    "SELECT k.state_key, e.nid FROM events e JOIN state_keys k ON k.nid = e.state_key_nid "
    "WHERE e.type_nid = ? AND " + E_BY_IDS
)


def apply_state_change(
    conn: sqlite3.Connection, room_nid: int, adds: Sequence[str], removes: Sequence[str]
) -> None:
    """Follow one change of a room's current state (event IDs added and removed).

    A member event removed from the state drops its row unless the same user's new
    member event is among the adds (which replaces the row); events of other types
    change nothing.
    """
    if removes:
        # A row's user is its member event's state key, so the rows to delete are
        # found by their key (no index by event NID: each row's upsert wrote a random
        # leaf of one).
        members = conn.execute(_MEMBERS_BY_IDS, (MEMBER_TYPE_NID, *id_keys_params(removes)))
        conn.executemany(
            "DELETE FROM user_room_memberships WHERE user_id = ? AND room_nid = ? "
            "AND event_nid = ?",
            [(user_id, room_nid, nid) for user_id, nid in members.fetchall()],
        )
    if adds:
        rows = conn.execute(_BY_IDS, (MEMBER_TYPE_NID, *id_keys_params(adds))).fetchall()
        _upsert(conn, room_nid, rows)


def apply_member_replacement(
    writes: sqlite3.Cursor, room_nid: int, user_id: str, membership: str, event_nid: int
) -> None:
    """Follow a change of a room's current state that only puts one member event in the
    place of its user's previous one (if any): what `apply_state_change` writes for it,
    without reading the event back. The user's row, keyed by user and room, is replaced
    whole, so the previous event's row needs no delete of its own. One row, on the
    write connection's cursor for writes (`WriteConnection.writes`)."""
    writes.execute(_UPSERT, (user_id, room_nid, membership, event_nid))


def index_existing_rooms(conn: sqlite3.Connection) -> int:
    """Fill the index from every room's current state (the upgrade to schema version 3);
    returns the number of rows written. Runs inside the caller's transaction."""
    written = 0
    rooms = conn.execute("SELECT nid, snapshot_nid FROM rooms WHERE snapshot_nid != 0").fetchall()
    for room_nid, snapshot_nid in rooms:
        state = _current_state(conn, int(snapshot_nid))
        member_nids = [nid for (type_nid, _), nid in state.items() if type_nid == MEMBER_TYPE_NID]
        if not member_nids:
            continue
        rows = conn.execute(_BY_NIDS, (MEMBER_TYPE_NID, json.dumps(member_nids))).fetchall()
        _upsert(conn, room_nid, rows)
        written += len(rows)
    return written


_UPSERT: Final = (
    "INSERT OR REPLACE INTO user_room_memberships "
    "(user_id, room_nid, membership, event_nid) VALUES (?, ?, ?, ?)"
)


def _upsert(conn: sqlite3.Connection, room_nid: int, rows: Sequence[tuple[str, str, int]]) -> None:
    conn.executemany(
        _UPSERT,
        [(user_id, room_nid, membership, nid) for user_id, membership, nid in rows],
    )


def _current_state(conn: sqlite3.Connection, snapshot_nid: int) -> NidState:
    row = conn.execute(
        "SELECT block_nids FROM state_snapshots WHERE nid = ?", (snapshot_nid,)
    ).fetchone()
    if row is None:
        return {}
    block_nids = unpack_nids(row[0])
    packed = dict(
        conn.execute(
            "SELECT nid, entries FROM state_blocks WHERE nid IN (SELECT value FROM json_each(?))",
            (json.dumps(block_nids),),
        ).fetchall()
    )
    return merge_blocks(bytes(packed[nid]) for nid in block_nids)
