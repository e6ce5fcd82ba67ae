"""Reads for the federation queries: graph walks, state per event, the index of users'
rooms. Beside `worker.storage.reader` (whose read-only connection and caches it
shares), so that every statement stays in worker/storage/.

Everything here is read in one statement each, from committed data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.matrix.event_walks import DagNode
from worker.storage.connection import json_list
from worker.storage.id_keys import BY_IDS, id_keys_params
from worker.storage.reader import Reader, ReadError
from worker.storage.schema import STATUS_NAMES, STATUS_OUTLIER, STATUS_REJECTED


@dataclass(frozen=True, slots=True)
class EventPlace:
    """Where a stored event of a room stands: its status and the state after it."""

    event_id: str
    status: str
    #: The snapshot of the state after the event (0 for an outlier: no state).
    after_snapshot_nid: int
    depth: int


class FederationReads:
    """Queries a resident server answers for others, over the reader's connection."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self.reader.rows(sql, params)

    async def room_nid(self, room_id: str) -> int:
        """The room's NID; ReadError(`unknown_room`) when it is not stored."""
        rows = await self._rows("SELECT nid FROM rooms WHERE room_id = ?", (room_id,))
        if not rows:
            raise ReadError("unknown_room", f"room {room_id} is not known to this worker")
        return int(rows[0][0])

    async def dag_nodes(
        self, room_nid: int, seeds: Iterable[str], *, hops: int, outliers: bool
    ) -> tuple[dict[str, DagNode], set[str]]:
        """The walkable events within `hops` prev-event steps of `seeds`, as DagNodes,
        and every event ID looked at (found or not), so a walk can tell "not here"
        from "not loaded".

        Walkable: stored in this room and not rejected, and not an outlier unless
        `outliers`. The arrival order is the event NID.
        """
        rows = await self._rows(
            "WITH RECURSIVE walk(event_id, hops) AS ("
            " SELECT value, 0 FROM json_each(?)"
            " UNION"
            " SELECT g.prev_event_id, w.hops + 1 FROM walk w"
            " JOIN events e ON e.id_key = event_key(w.event_id) AND e.event_id = w.event_id"
            " AND e.room_nid = ?"
            " JOIN event_edges g ON g.event_nid = e.nid WHERE w.hops < ?)"
            " SELECT w.event_id, e.nid, e.depth, e.status, "
            " (SELECT json_group_array(g.prev_event_id) FROM event_edges g"
            "  WHERE g.event_nid = e.nid)"
            " FROM (SELECT DISTINCT event_id FROM walk) w"
            " LEFT JOIN events e ON e.id_key = event_key(w.event_id)"
            " AND e.event_id = w.event_id AND e.room_nid = ?",
            (json_list(seeds), room_nid, hops, room_nid),
        )
        nodes: dict[str, DagNode] = {}
        looked: set[str] = set()
        for event_id, nid, depth, status, prevs in rows:
            looked.add(str(event_id))
            if nid is None or status == STATUS_REJECTED:
                continue
            if status == STATUS_OUTLIER and not outliers:
                continue
            nodes[str(event_id)] = DagNode(
                str(event_id), int(depth), int(nid), tuple(json.loads(prevs))
            )
        return nodes, looked

    async def places(self, room_nid: int, event_ids: Sequence[str]) -> dict[str, EventPlace]:
        """The given events that are stored in this room, with status and state after."""
        rows = await self._rows(
            "SELECT event_id, status, after_snapshot_nid, depth FROM events "
            # `+room_nid`: found by ID (a few rows), not through the room's index (all
            # of its events), which SQLite would otherwise take.
            "WHERE +room_nid = ? AND " + BY_IDS,
            (room_nid, *id_keys_params(event_ids)),
        )
        return {
            str(event_id): EventPlace(
                str(event_id), STATUS_NAMES.get(int(status), "unknown"), int(after), int(depth)
            )
            for event_id, status, after, depth in rows
        }

    async def rooms_for_user(self, user_id: str, membership: str) -> list[str]:
        """The rooms whose current state gives `user_id` this membership, sorted, from
        the index the write path keeps (worker.storage.membership_index)."""
        rows = await self._rows(
            "SELECT r.room_id FROM user_room_memberships m JOIN rooms r ON r.nid = m.room_nid "
            "WHERE m.user_id = ? AND m.membership = ? ORDER BY r.room_id",
            (user_id, membership),
        )
        return [str(room_id) for (room_id,) in rows]
