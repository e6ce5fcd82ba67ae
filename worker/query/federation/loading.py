"""What every federation query loads: the room's version, stored events as `Event`s,
and PDUs by ID, through the read-only reader and `worker.storage.federation_reads`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.matrix.events import Event
from worker.matrix.room_versions import RoomVersion, get_room_version
from worker.storage.federation_reads import FederationReads
from worker.storage.reader import Reader, ReadError


class Loading:
    """The reads shared by the query families (each family is one of these)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.reads = FederationReads(reader)

    async def room_version(self, room_id: str) -> RoomVersion:
        return get_room_version((await self.reader.latest(room_id)).room_version)

    async def events(self, version: RoomVersion, event_ids: Sequence[str]) -> list[Event]:
        """The stored events, in the order given (unknown ones left out)."""
        records, _ = await self.reader.events(event_ids)
        return [Event(r.event_id, version, r.event) for r in records]

    async def pdus(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        records, missing = await self.reader.events(event_ids)
        if missing:
            raise ReadError(
                "internal_error", f"events {missing[:10]} are referenced but not stored"
            )
        return {r.event_id: r.event for r in records}
