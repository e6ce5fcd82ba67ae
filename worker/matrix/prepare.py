"""Filling in a new event's graph fields: prev events, depth and auth events.

A server creating an event (for `/make_join`, `/make_leave`, `/make_knock`, or on behalf
of a local user) fills in `prev_events`, `depth` and `auth_events` from the room as it
stands; these helpers make those choices from plain data the caller reads from storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from worker.matrix.auth.selection import auth_types_for_event
from worker.matrix.canonical_json import MAX_SAFE_INTEGER
from worker.matrix.events import StateKey
from worker.matrix.pdu import MAX_DEPTH_LEGACY, MAX_PREV_EVENTS
from worker.matrix.room_versions import RoomVersion

#: How many forward extremities a new event cites when there are more (the PDU schema's
#: maximum: `prev_events` "Must contain less than or equal to 20 events").
DEFAULT_PREV_EVENTS: Final = MAX_PREV_EVENTS


def max_depth(room_version: RoomVersion) -> int:
    """The largest `depth` a PDU may carry in this room version.

    PDU schema, `depth`: "Must be less than the maximum value for an integer (2^63 - 1)"
    for v1–v5 and "(2^53 - 1)" from v6, whose canonical JSON has no larger integers.
    """
    return MAX_SAFE_INTEGER if room_version.strict_canonical_json else MAX_DEPTH_LEGACY


def depth_for_new_event(room_version: RoomVersion, prev_depths: Iterable[int]) -> int:
    """The depth of an event whose prev events have `prev_depths`.

    PDU schema: "The maximum depth of the `prev_events`, plus one. ... If the room's
    depth is already at the limit, the depth must be set to the limit." An event without
    prev events (the create event) has depth 1.
    """
    return min(max(prev_depths, default=0) + 1, max_depth(room_version))


def choose_prev_events(
    extremities: Iterable[tuple[str, int]], limit: int = DEFAULT_PREV_EVENTS
) -> list[str]:
    """The prev events of a new event, from the forward extremities as (event ID, depth).

    All of them when they fit within `limit`, otherwise the deepest (the newest), ties
    broken by event ID so that the choice is stable; the ones left out stay forward
    extremities and are cited by a later event.
    """
    deepest_first = sorted(extremities, key=lambda pair: (-pair[1], pair[0]))
    return [event_id for event_id, _ in deepest_first[:limit]]


def auth_event_ids(
    room_version: RoomVersion,
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
    state: Mapping[StateKey, str],
) -> list[str]:
    """The `auth_events` of a new event: the current state events it may cite.

    Server-server API, "Auth events selection": the create event (v1–v11), the power
    levels, the sender's member event, and for membership events the target's member
    event, the join rules, a third-party invite and the authorising user's member event,
    each "if any" in the current state `state` ((type, state key) → event ID). Sorted
    by (type, state key) so the same room state always gives the same list.
    """
    keys = auth_types_for_event(room_version, event_type, state_key, sender, content)
    return [state[key] for key in sorted(keys) if key in state]
