"""History visibility for servers: which events a remote server may read in full.

A resident server answers `/backfill`, `/get_missing_events` and `/event` for other
servers in the room, and must not hand them events their users could never see. The
client-server API's "Room History Visibility" module gives the rules for a *user*,
decided "depend[ing] on the state of the room *at that event*":

1. If the `history_visibility` was set to `world_readable`, allow.
2. If the user's `membership` was `join`, allow.
3. If `history_visibility` was set to `shared`, and the user joined the room at any
   point after the event was sent, allow.
4. If the user's `membership` was `invite`, and the `history_visibility` was set to
   `invited`, allow.
5. Otherwise, deny.

The server-server API does not restate them for servers. What servers do in practice
(Synapse's `filter_events_for_server`, which this module follows) is to apply them to a
server as the union of its users: a server sees an event if one of its users could.
Rule 3 becomes "allow for `shared`", since a server asking is in the room now (the
caller checks that first), so its users can join and read. An event the server may not
see is either sent redacted (its `event_id`, `type`, `sender`, `prev_events`, ... keep the
DAG walkable) or left out, as the caller chooses.

The state "at the event" is the state *after* it, as Synapse stores it (for a message,
the same as the state before it): so a server sees its own user's join event, and a
`history_visibility` event is judged by the value it sets. An event with no known state
(an outlier: only its auth chain is stored) is treated as having no history visibility
event, hence `shared`, which is also Synapse's behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from worker.matrix.auth.identifiers import domain_of
from worker.matrix.events import HISTORY_VISIBILITY, MEMBER, Event, StateKey
from worker.matrix.redaction import redact

WORLD_READABLE: Final = "world_readable"
SHARED: Final = "shared"
INVITED: Final = "invited"
JOINED: Final = "joined"
#: The values the `m.room.history_visibility` schema enumerates.
KNOWN_VISIBILITIES: Final = frozenset((WORLD_READABLE, SHARED, INVITED, JOINED))
HISTORY_VISIBILITY_KEY: StateKey = (HISTORY_VISIBILITY, "")

#: The state at an event as plain data: (type, state key) → that state event's content.
#: Only the history visibility entry and the member entries of the asking server's
#: users are read, so a caller may pass just those.
StateContents = Mapping[StateKey, Mapping[str, Any]]


def effective_history_visibility(content: Mapping[str, Any] | None) -> str:
    """The history visibility in force, given the `m.room.history_visibility` content.

    Client-server API, "Server behaviour": "By default if no `history_visibility` is set,
    or if the value is not understood, the visibility is assumed to be `shared`."
    """
    if content is None:
        return SHARED
    value = content.get("history_visibility")
    return value if isinstance(value, str) and value in KNOWN_VISIBILITIES else SHARED


def server_memberships(state: StateContents, server_name: str) -> Iterator[str]:
    """The memberships, in `state`, of the users whose server is `server_name`.

    A user belongs to the server named after the first colon of their ID; the name is
    compared exactly, port included, as the asking server names itself. A member event
    without a string `membership` says nothing.
    """
    for (event_type, state_key), content in state.items():
        if event_type != MEMBER or domain_of(state_key) != server_name:
            continue
        membership = content.get("membership")
        if isinstance(membership, str):
            yield membership


def server_may_see(history_visibility: str, memberships: Iterable[str]) -> bool:
    """Whether a server whose users have `memberships` may see an event in full."""
    # Rule 1, and rule 3 for a server that is in the room.
    if history_visibility in (WORLD_READABLE, SHARED):
        return True
    for membership in memberships:
        # Rule 2: one of its users had joined.
        if membership == "join":
            return True
        # Rule 4: one of its users was invited, and the visibility is `invited`.
        if membership == "invite" and history_visibility == INVITED:
            return True
    # Rule 5.
    return False


def event_visible_to_server(state: StateContents | None, server_name: str) -> bool:
    """Whether `server_name` may see an event whose state (after it) is `state`.

    `state` None means the event's state is unknown (an outlier): treated as `shared`.
    """
    if state is None:
        return True
    visibility = effective_history_visibility(state.get(HISTORY_VISIBILITY_KEY))
    return server_may_see(visibility, server_memberships(state, server_name))


def filter_events_for_server(
    events: Sequence[Event],
    state_at: Callable[[str], StateContents | None],
    server_name: str,
    *,
    redact_hidden: bool,
) -> list[Mapping[str, Any]]:
    """The PDUs of `events` that `server_name` may have, in the given order.

    `state_at(event_id)` gives the state after each event (None for an outlier). An event
    the server may not see is replaced by its redacted form when `redact_hidden` (what
    `/backfill`, `/get_missing_events` and `/event` send, so that the DAG stays
    walkable), or left out otherwise.
    """
    result: list[Mapping[str, Any]] = []
    for event in events:
        if event_visible_to_server(state_at(event.event_id), server_name):
            result.append(event.pdu)
        elif redact_hidden:
            result.append(redact(event.pdu, event.room_version))
    return result
