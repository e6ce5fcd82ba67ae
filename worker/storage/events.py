"""Stored events as `Event` objects, cached by NID.

Authorization looks at the same few events over and over (the create event, power
levels, join rules, the members of active senders), so a small LRU of parsed events
saves most JSON decoding on the hot path.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from worker.matrix.events import Event
from worker.matrix.room_versions import RoomVersion, get_room_version
from worker.storage.cache_budget import DEFAULT_BUDGET, CacheBudget
from worker.storage.database import Database, EventRow, StorageError
from worker.storage.lru import LruByWeight


@dataclass(frozen=True, slots=True, weakref_slot=True)
class StoredEvent:
    """A stored event's row and its parsed event. A slotted dataclass, not a named
    tuple: its fields are read far more often than it is made, and reading a slot is
    specialized by the interpreter where a named tuple's field is a descriptor call
    (a named tuple made the linear room cost ~1k instructions more per message)."""

    row: EventRow
    event: Event


def encode_event_json(pdu: object, *, floats: bool = True) -> bytes:
    """The stored form of a PDU: compact JSON, readable with the sqlite3 shell.

    `floats=False` says the PDU holds no floats (room versions 6 and later refuse them),
    and then `orjson` writes it, some ten times faster than `json` and byte for byte the
    same (see worker.matrix.canonical_json); only floats are written differently by the
    two (``1e-7`` against ``1e-07``). What `orjson` refuses (integers beyond 64 bits,
    lone surrogates) goes to `json`, which encodes or words the error as before.
    """
    if not floats:
        try:
            return orjson.dumps(pdu)
        except orjson.JSONEncodeError:
            pass
    return json.dumps(pdu, separators=(",", ":"), ensure_ascii=False).encode()


def decode_event_json(raw: bytes) -> Any:
    """A stored PDU: `orjson` reads any JSON to the same values as `json` (floats are
    correctly rounded by both); integers beyond 64 bits it refuses go to `json`."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


class EventStore:
    #: Parsed events cost 1–3 KB each (~2.8 KB in small rooms); the hot ones are auth
    #: events and recent events.
    CACHE_SIZE = DEFAULT_BUDGET.bound("events")
    #: Rooms whose version is remembered (~150 bytes each), about as many as the
    #: pipeline's room rows (`CacheLimits.rooms`), whose rooms are the ones being written.
    ROOM_VERSION_CACHE_SIZE = DEFAULT_BUDGET.bound("room_versions")

    def __init__(
        self,
        db: Database,
        cache_size: int | None = None,
        room_version_cache_size: int | None = None,
        budget: CacheBudget = DEFAULT_BUDGET,
    ) -> None:
        """Bounds left out are the `budget`'s shares (tests set tiny ones)."""
        self.db = db
        self._cache: OrderedDict[int, StoredEvent] = OrderedDict()
        self._by_id: dict[str, int] = {}
        self._cache_size = cache_size or budget.bound("events")
        self._room_versions: LruByWeight[int, RoomVersion] = LruByWeight(
            room_version_cache_size or budget.bound("room_versions")
        )
        #: NID → event ID, which never changes: state resolution converts whole states.
        #: Emptied when it would pass its bound (~190 bytes an ID).
        self._ids: dict[int, str] = {}
        self._ids_limit = budget.bound("event_ids")

    def forget_caches(self) -> None:
        self._cache.clear()
        self._by_id.clear()
        self._ids.clear()
        # A room created in the undone transaction may see its NID reused.
        self._room_versions.clear()

    def remember(self, stored: StoredEvent) -> None:
        """Cache an event just written, so its children find it without a read."""
        self._put(stored)
        self.db.on_rollback_once(self.forget_caches)

    def invalidate(self, nid: int) -> None:
        stored = self._cache.pop(nid, None)
        if stored is not None:
            self._by_id.pop(stored.row.event_id, None)

    def room_version(self, room_nid: int) -> RoomVersion:
        version = self._room_versions.get(room_nid)
        if version is None:
            version = get_room_version(self.db.room_version_of_nid(room_nid))
            self._room_versions.put(room_nid, version)
        return version

    def by_nid(self, nid: int) -> StoredEvent:
        stored = self._cache.get(nid)
        if stored is not None:
            self._cache.move_to_end(nid)
            return stored
        row = self.db.get_event_row_by_nid(nid)
        if row is None:
            raise StorageError(f"event NID {nid} is referenced but not stored")
        return self._load(row)

    def by_id(self, event_id: str) -> StoredEvent | None:
        nid = self._by_id.get(event_id)
        if nid is not None:
            return self.by_nid(nid)
        row = self.db.get_event_row(event_id)
        return self._load(row) if row is not None else None

    def rows(self, event_ids: Iterable[str]) -> dict[str, EventRow]:
        """Rows of stored events, from the cache where possible (no JSON decoding)."""
        found: dict[str, EventRow] = {}
        unknown: list[str] = []
        for event_id in event_ids:
            nid = self._by_id.get(event_id)
            stored = self._cache.get(nid) if nid is not None else None
            if stored is not None:
                found[event_id] = stored.row
            else:
                unknown.append(event_id)
        if unknown:
            found.update(self.db.get_event_rows(unknown))
        return found

    def ids_of(self, nids: Iterable[int]) -> dict[int, str]:
        """Event IDs of NIDs, from the cache where possible."""
        found: dict[int, str] = {}
        unknown: list[int] = []
        known = self._ids
        for nid in nids:
            event_id = known.get(nid)
            if event_id is not None:
                found[nid] = event_id
            else:
                stored = self._cache.get(nid)
                if stored is not None:
                    found[nid] = stored.row.event_id
                else:
                    unknown.append(nid)
        if unknown:
            fetched = self.db.event_ids_of(unknown)
            if len(known) + len(fetched) > self._ids_limit:
                known.clear()
            known.update(fetched)
            found.update(fetched)
        return found

    def many_by_id(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        found: dict[str, StoredEvent] = {}
        unknown: list[str] = []
        by_id, cache, use = self._by_id, self._cache, self._cache.move_to_end
        for event_id in event_ids:
            nid = by_id.get(event_id)
            if nid is None:
                unknown.append(event_id)
                continue
            # `by_nid`'s cache hit, inline: authorization asks for an event's auth
            # events here, every one of them cached in a busy room.
            stored = cache.get(nid)
            if stored is not None:
                use(nid)
                found[event_id] = stored
            else:
                found[event_id] = self.by_nid(nid)
        if unknown:
            for event_id, row in self.db.get_event_rows(unknown).items():
                found[event_id] = self._load(row)
        return found

    def _load(self, row: EventRow) -> StoredEvent:
        pdu = decode_event_json(self.db.event_json(row.nid))
        event = Event(event_id=row.event_id, room_version=self.room_version(row.room_nid), pdu=pdu)
        stored = StoredEvent(row, event)
        self._put(stored)
        return stored

    def _put(self, stored: StoredEvent) -> None:
        self._cache[stored.row.nid] = stored
        self._by_id[stored.row.event_id] = stored.row.nid
        if len(self._cache) > self._cache_size:
            _, dropped = self._cache.popitem(last=False)
            self._by_id.pop(dropped.row.event_id, None)
