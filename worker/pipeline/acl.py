"""Server ACLs on input: an event from a server the room's ACL denies is not processed.

Server-server API, "Server Access Control Lists (ACLs)", for `/send`: "ACLs MUST be
applied to all PDUs on a per-PDU basis. If the sending server is denied access to the
room identified by `room_id`, the PDU MUST be ignored with an appropriate error included
in the response for the respective event ID." Ignored means not processed at all: not
stored, no state, no output; the error goes back to the publisher as a dead letter with
code `server_acl`. The publisher says which server sent an input in its `origin` field;
an input without one (a local event, or one the publisher vouches for) is not checked.
The ACL applied is the one in the room's current state, as Synapse applies it.
"""

from __future__ import annotations

from typing import Final

from worker.input.errors import DeadLetter
from worker.matrix.server_acl import server_allowed
from worker.storage.database import RoomRow
from worker.storage.events import EventStore
from worker.storage.schema import EMPTY_STATE_KEY_NID, WELL_KNOWN_TYPES
from worker.storage.state import StateStore

#: Dead-letter code of an input whose origin the room's ACL denies.
SERVER_ACL: Final = "server_acl"
_ACL_KEY: Final = (WELL_KNOWN_TYPES["m.room.server_acl"], EMPTY_STATE_KEY_NID)


class OriginAcl:
    """The check of an input's `origin` against its room's current server ACL."""

    def __init__(self, state: StateStore, events: EventStore) -> None:
        self.state = state
        self.events = events

    def refuse_denied(self, origin: str | None, room: RoomRow | None) -> None:
        """Raise DeadLetter(`server_acl`) when the room's current ACL denies `origin`.

        A room not stored yet, or without an `m.room.server_acl` in its current state,
        denies nobody (schema step 1: "If there is no `m.room.server_acl` event in the
        room state, allow").
        """
        if origin is None or room is None or not room.snapshot_nid:
            return
        acl_nid = self.state.load(room.snapshot_nid).get(_ACL_KEY)
        if acl_nid is None:
            return
        acl = self.events.by_nid(acl_nid).event
        if not server_allowed(acl.content, origin):
            raise DeadLetter(
                SERVER_ACL,
                f"the origin {origin} is denied by the server ACL {acl.event_id} of room "
                f"{room.room_id}",
            )
