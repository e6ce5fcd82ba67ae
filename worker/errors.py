"""The one error that crosses a process boundary: a contract error code and a sentence.

The query service answers every failure with `{"error": code, "message": sentence}`
(contract, section 7); the client raises the same code back as a `RoomserverError`,
and the CLI prints it and picks its exit status from it. One class with a `code`
rather than a class per code: callers branch on the code, which is what the wire
carries, and a code added on the worker needs no new class on the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Self

#: The request cannot be read, or has a field the query does not take.
BAD_REQUEST: Final = "bad_request"
#: The room, or an event, is not stored.
UNKNOWN_ROOM: Final = "unknown_room"
UNKNOWN_EVENT: Final = "unknown_event"
#: The event is an outlier: stored without the state around it.
NO_STATE: Final = "no_state"
#: The reply would not fit in one NATS message.
TOO_LARGE: Final = "too_large"
#: Anything else that failed on the worker.
INTERNAL_ERROR: Final = "internal_error"
#: Reading the database file: there is none under storage.path.
NO_DATABASE: Final = "no_database"
#: Client side: no worker answered (none running, another subject prefix, a timeout),
#: or NATS itself could not be reached.
UNAVAILABLE: Final = "unavailable"
#: Client side: the answer is not a reply map (or its chunks do not add up to one).
BAD_REPLY: Final = "bad_reply"
#: Client side: a chunked reply lost a chunk, or a chunk came too late.
INCOMPLETE_REPLY: Final = "incomplete_reply"


class RoomserverError(Exception):
    """A failure named by the contract's error code, with a sentence for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, str]:
        """The reply map that carries this error."""
        return {"error": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, reply: Mapping[str, Any]) -> Self:
        """The error a reply map carries (call it when the map has an `error` key)."""
        return cls(str(reply["error"]), str(reply.get("message", "")))


def is_error_reply(reply: Mapping[str, Any]) -> bool:
    """Whether a reply map is an error map rather than an answer."""
    return "error" in reply and "message" in reply and len(reply) == 2
