"""One reply from the replies of every partition, for queries that name no room.

With partitions, a query about a room goes to the one worker that owns it; `rooms`,
`events`, `auth_chain`, `held` without a room and `rooms_for_user` may concern rooms of
every partition, so the client asks all of them and merges here. Pure: the wire maps
in, one wire map out, in the shape a single worker would have sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

Wire = dict[str, Any]

#: Queries that carry no room ID and are answered by every partition.
SPANNING: Final = frozenset({"rooms", "events", "auth_chain", "held", "rooms_for_user"})


def merge_replies(name: str, request: Mapping[str, Any], replies: Sequence[Wire]) -> Wire:
    """The reply a single worker holding every partition's rooms would have sent."""
    merge = _MERGES.get(name)
    if merge is None:
        raise ValueError(f"query {name!r} names a room; it is not gathered")
    return merge(request, replies)


def _rooms(request: Mapping[str, Any], replies: Sequence[Wire]) -> Wire:
    # One worker lists rooms by room ID.
    rooms = [room for reply in replies for room in reply["rooms"]]
    return {"rooms": sorted(rooms, key=lambda room: str(room["room_id"]))}


def _events(request: Mapping[str, Any], replies: Sequence[Wire]) -> Wire:
    # Each event is stored by the partition of its room; one worker answers in the
    # order asked, and names as missing what none of them has.
    found = {event["event_id"]: event for reply in replies for event in reply["events"]}
    asked = [str(event_id) for event_id in request.get("event_ids", [])]
    return {
        "events": [found[event_id] for event_id in asked if event_id in found],
        "missing": [event_id for event_id in asked if event_id not in found],
    }


def _auth_chain(request: Mapping[str, Any], replies: Sequence[Wire]) -> Wire:
    return {"event_ids": sorted({e for reply in replies for e in reply["event_ids"]})}


def _held(request: Mapping[str, Any], replies: Sequence[Wire]) -> Wire:
    # One worker lists them longest-waiting first, then in stream order (one stream
    # feeds every partition, so its sequences compare across them).
    held = [entry for reply in replies for entry in reply["held"]]
    return {"held": sorted(held, key=lambda h: (h["held_since_ms"], h["stream_sequence"]))}


def _rooms_for_user(request: Mapping[str, Any], replies: Sequence[Wire]) -> Wire:
    first = replies[0]
    rooms = sorted({room for reply in replies for room in reply["room_ids"]})
    return {"user_id": first["user_id"], "membership": first["membership"], "room_ids": rooms}


_MERGES: Final[dict[str, Callable[[Mapping[str, Any], Sequence[Wire]], Wire]]] = {
    "rooms": _rooms,
    "events": _events,
    "auth_chain": _auth_chain,
    "held": _held,
    "rooms_for_user": _rooms_for_user,
}
