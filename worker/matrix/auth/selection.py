"""Which state events may authorize an event, and whether an event's own list obeys that.

`auth_types_for_event` is the server-server spec's "Auth events selection": builders use
it to fill `auth_events`, the pipeline uses it to pick the state an event is checked
against. `validate_auth_events` is the rule "considering the event's auth_events" (rule 2
in v1–v11, rule 3 in v12), which only looks at the listed events themselves and so runs
once per event, before any state is known.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Set
from typing import Any

from worker.matrix.auth.errors import AuthError
from worker.matrix.events import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    THIRD_PARTY_INVITE,
    Event,
    StateKey,
)
from worker.matrix.room_versions import RoomVersion

CREATE_KEY: StateKey = (CREATE, "")
POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")
JOIN_RULES_KEY: StateKey = (JOIN_RULES, "")

#: Memberships whose authorization reads the join rules.
_JOIN_RULE_MEMBERSHIPS = ("join", "invite", "knock")
#: A v12 room ID is `!` + the unpadded URL-safe base64 of a SHA-256 (43 characters).
_V12_ROOM_ID = re.compile(r"![A-Za-z0-9_\-]{43}")


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
) -> set[StateKey]:
    """The (type, state key) pairs an event of this shape may cite as auth events.

    Takes the fields rather than an `Event` so that a builder can ask before the event
    (and so its ID) exists. Malformed content (a non-string token, say) selects nothing
    for that part: the auth rules reject such an event anyway, with a clearer reason.
    """
    if event_type == CREATE:
        return set()
    keys: set[StateKey] = {POWER_LEVELS_KEY, (MEMBER, sender)}
    if not room_version.room_id_from_create:
        # v12 names the create event through the room ID instead.
        keys.add(CREATE_KEY)
    if event_type != MEMBER:
        return keys
    if state_key is not None:
        keys.add((MEMBER, state_key))
    membership = content.get("membership")
    if not isinstance(membership, str):
        return keys
    if membership in _JOIN_RULE_MEMBERSHIPS:
        keys.add(JOIN_RULES_KEY)
    if membership == "invite":
        token = third_party_invite_token(content)
        if token is not None:
            keys.add((THIRD_PARTY_INVITE, token))
    elif membership == "join" and room_version.restricted_join_rule:
        via = content.get("join_authorised_via_users_server")
        if isinstance(via, str):
            keys.add((MEMBER, via))
    return keys


def third_party_invite_token(content: Mapping[str, Any]) -> str | None:
    """`content.third_party_invite.signed.token`, if every step of that path is well formed."""
    invite = content.get("third_party_invite")
    if not isinstance(invite, Mapping):
        return None
    signed = invite.get("signed")
    if not isinstance(signed, Mapping):
        return None
    token = signed.get("token")
    return token if isinstance(token, str) else None


def create_event_id_for_room(room_version: RoomVersion, room_id: str) -> str | None:
    """The create event's ID implied by a v12 room ID, or None.

    None means either that the room version does not derive room IDs from the create
    event (v1–v11: the create is among the auth events instead), or, for v12, that the
    room ID cannot be one (then `validate_auth_events` rejects the event).
    """
    if not room_version.room_id_from_create or not _V12_ROOM_ID.fullmatch(room_id):
        return None
    return "$" + room_id[1:]


def validate_auth_events(
    event: Event,
    auth_events: Mapping[str, Event | None],
    rejected_ids: Set[str],
    expected: Set[StateKey] | None = None,
) -> None:
    """Check the event's own `auth_events` list, raising `AuthError` on the first fault.

    `auth_events` maps each cited ID to the stored event, or to None (or no entry) when it
    is unknown. An `m.room.create` event is allowed by its own rule before this one is
    reached, so its list is not examined. In v12 the caller must still check that the
    create event named by `create_event_id_for_room` is stored and was not rejected.
    `expected` is the event's `auth_types_for_event`, when the caller has it already
    (it needs the same set to pick the event's state later).
    """
    if event.type == CREATE:
        return
    version = event.room_version
    if expected is None:
        expected = auth_types_for_event(
            version, event.type, event.state_key, event.sender, event.content
        )
    seen: dict[StateKey, str] = {}
    for auth_id in event.auth_event_ids:
        auth_event = auth_events.get(auth_id)
        if auth_event is None:
            raise AuthError(
                f"{event.event_id} cites auth event {auth_id}, which this server does not have"
            )
        if auth_event.room_id != event.room_id:
            raise AuthError(
                f"{event.event_id} in {event.room_id} cites auth event {auth_id} "
                f"from another room, {auth_event.room_id}"
            )
        auth_state_key = auth_event.state_key
        if auth_state_key is None:
            raise AuthError(
                f"{event.event_id} cites auth event {auth_id} ({auth_event.type}), "
                "which is not a state event"
            )
        key = (auth_event.type, auth_state_key)
        if key in seen:
            raise AuthError(
                f"{event.event_id} cites two auth events for {_describe(key)}: "
                f"{seen[key]} and {auth_id}"
            )
        if key not in expected:
            if key == CREATE_KEY:
                raise AuthError(
                    f"{event.event_id} cites the m.room.create event {auth_id} as an auth "
                    f"event, which room version {version.identifier} forbids (the room ID "
                    "names it)"
                )
            raise AuthError(
                f"{event.event_id} ({event.type} from {event.sender}) cites {auth_id} for "
                f"{_describe(key)}, which the auth events selection does not allow for it"
            )
        if auth_id in rejected_ids:
            raise AuthError(f"{event.event_id} cites auth event {auth_id}, which was rejected")
        seen[key] = auth_id
    if version.room_id_from_create:
        if create_event_id_for_room(version, event.room_id) is None:
            raise AuthError(
                f"{event.event_id} has room ID {event.room_id}, which is not the ID of an "
                f"m.room.create event with '!' for '$' as room version "
                f"{version.identifier} requires"
            )
    elif CREATE_KEY not in seen:
        raise AuthError(f"{event.event_id} does not cite the room's m.room.create event")


def state_from_auth_events(
    auth_events: Iterable[Event], create: Event | None
) -> dict[StateKey, Event]:
    """The state map an event is checked against when it is checked against its auth events.

    `create` is the room's create event, which v12 events do not cite but every rule
    needs; pass None when it is already among `auth_events`.
    """
    state = {auth_event.key: auth_event for auth_event in auth_events if auth_event.is_state}
    if create is not None:
        state[CREATE_KEY] = create
    return state


def _describe(key: StateKey) -> str:
    return f"({key[0]}, {key[1]!r})"
