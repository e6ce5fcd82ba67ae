"""Storing an event: its row, its JSON and its edges, with the status it was given."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from worker.matrix.events import Event
from worker.storage.database import Database, EventRow, RoomRow
from worker.storage.events import EventStore, StoredEvent, encode_event_json
from worker.storage.schema import STATUS_REJECTED


class EventWriter:
    """Writes events (or promotes outliers) and keeps the event cache in step."""

    def __init__(self, db: Database, events: EventStore) -> None:
        self.db = db
        self.events = events

    def store(
        self,
        event: Event,
        room: RoomRow,
        status: int,
        reason: str | None,
        before: int,
        existing: EventRow | None,
        after: Callable[[int, int, int, int, int], int] | None = None,
        cited: Mapping[str, StoredEvent] | None = None,
    ) -> StoredEvent:
        """Store `event` with the state `before` it and the state after it: `after` (of
        room NID, before, type NID, state key NID, the event's own NID) gives that one
        for a timeline event, written before the event's row since it holds the event's
        NID (see `Database.next_event_nid`); without it, after = before (outliers).
        `existing` is the event's outlier row; `cited`, the event's stored auth events
        by ID if they were looked up already (`Verdict.cited`)."""
        db = self.db
        type_nid = db.type_nid(event.type, create=True)
        sk = event.state_key
        sk_nid = db.state_key_nid(sk, create=True) if sk is not None else 0
        auth_ids = event.auth_event_ids
        if cited is None:
            auth_rows = self.events.rows(auth_ids)
            auth_nids = [auth_rows[e].nid for e in auth_ids if e in auth_rows]
        else:
            auth_nids = [cited[e].row.nid for e in auth_ids if e in cited]
        nid = existing.nid if existing is not None else db.next_event_nid()
        room_nid = room.nid
        depth = event.depth
        after_nid = before
        if after is not None and sk_nid and status != STATUS_REJECTED:
            after_nid = after(room_nid, before, type_nid, sk_nid, nid)
        if existing is not None:
            db.promote_outlier(nid, status, reason, before, after_nid)
            self.events.invalidate(nid)
        else:
            db.insert_event(
                nid=nid,
                event_id=event.event_id,
                room_nid=room_nid,
                type_nid=type_nid,
                state_key_nid=sk_nid,
                depth=depth,
                status=status,
                reason=reason,
                before_snapshot_nid=before,
                after_snapshot_nid=after_nid,
                auth_event_nids=auth_nids,
                prev_event_ids=event.prev_event_ids,
                json_bytes=encode_event_json(
                    event.pdu, floats=not event.room_version.strict_canonical_json
                ),
            )
        stored = StoredEvent(
            EventRow(
                nid,
                event.event_id,
                room_nid,
                type_nid,
                sk_nid,
                depth,
                status,
                reason,
                before,
                after_nid,
            ),
            event,
        )
        self.events.remember(stored)
        return stored
