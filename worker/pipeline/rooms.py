"""Rooms as the pipeline sees them: which room an input subject names, the room's row
and the version its events are parsed with."""

from __future__ import annotations

from worker.bus.subjects import Subjects
from worker.input.decode import InputMessage
from worker.input.errors import DeadLetter
from worker.matrix.events import CREATE
from worker.matrix.pdu import PduError, room_version_of_create
from worker.matrix.room_versions import RoomVersion, UnknownRoomVersion, get_room_version
from worker.pipeline.limits import CacheLimits
from worker.storage.database import Database, RoomRow
from worker.storage.lru import LruByWeight


class Rooms:
    """Room rows and subject names, cached.

    Room rows are updated in place as events advance the room, so the cache is dropped
    (`forget`) whenever work is undone."""

    def __init__(self, db: Database, subjects: Subjects, limits: CacheLimits) -> None:
        self.db = db
        self.subjects = subjects
        self.cached_rooms: LruByWeight[str, RoomRow] = LruByWeight(limits.rooms)
        #: Subjects that name a room (the others are dead-lettered; parsing them
        #: again costs less than remembering them).
        self.subject_rooms: LruByWeight[str, str] = LruByWeight(limits.subjects)

    def of_subject(self, subject: str) -> str | None:
        """The room an input subject names (None if it names none); remembered, since
        a room's inputs all share one subject."""
        room_id = self.subject_rooms.get(subject)
        if room_id is not None:
            return room_id
        try:
            room_id = self.subjects.room_of_input(subject)
        except ValueError:
            return None
        self.subject_rooms.put(subject, room_id, 1)
        return room_id

    def get(self, room_id: str) -> RoomRow | None:
        room = self.cached_rooms.get(room_id)
        if room is None:
            room = self.db.get_room(room_id)
            if room is not None:
                self.cached_rooms.put(room_id, room, 1)
        return room

    def create(self, room_id: str, version: RoomVersion) -> RoomRow:
        room = self.db.create_room(room_id, version.identifier)
        self.cached_rooms.put(room.room_id, room, 1)
        self.db.on_rollback(self.forget)
        return room

    def forget(self) -> None:
        """Drop the cached room rows (work that changed them was undone)."""
        self.cached_rooms.clear()

    def version_for(
        self, inp: InputMessage, subject_room: str
    ) -> tuple[RoomVersion, RoomRow | None]:
        """The version to parse the PDU with: the create event's, the stored room's, or
        the one the input names for a room not known yet."""
        raw = inp.event
        is_create = raw.get("type") == CREATE and raw.get("state_key") == ""
        room = self.get(subject_room)
        try:
            if is_create:
                version = room_version_of_create(raw)
                if inp.room_version is not None and inp.room_version != version.identifier:
                    raise DeadLetter(
                        "bad_input",
                        f"room_version {inp.room_version!r} disagrees with the create event's "
                        f"{version.identifier!r}",
                    )
                return version, room
            if room is not None:
                return get_room_version(room.room_version), room
            if inp.room_version is None:
                raise DeadLetter(
                    "unknown_room",
                    f"room {subject_room} is not known: send its m.room.create first, or give "
                    "room_version in the input",
                )
            return get_room_version(inp.room_version), None
        except UnknownRoomVersion as exc:
            raise DeadLetter("unknown_room_version", str(exc)) from None
        except PduError as exc:
            raise DeadLetter(exc.code, exc.message) from None
