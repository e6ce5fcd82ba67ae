"""Power levels: reading them from state, and the rule for changing them.

A level is read lazily, one key at a time, straight from the current
`m.room.power_levels` content: most checks need one or two values, and parsing the whole
event for every authorization would be waste on the hot path.

Room versions differ in what a level may look like:
- v1–v9 accept integers and strings holding one (`"50"`, `" +050 "`);
  v1–v5 also accept floats, truncated, since they do not enforce canonical JSON
  (fragments `v1-stringy-power-levels`, `v1-floaty-power-levels`);
- v10+ accept integers only;
- v12 gives the room creators an infinite level that no power level event can change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from worker.matrix.auth.errors import AuthError
from worker.matrix.auth.identifiers import is_valid_user_id
from worker.matrix.auth.selection import CREATE_KEY, POWER_LEVELS_KEY
from worker.matrix.events import Event, StateKey
from worker.matrix.room_versions import RoomVersion

#: A level is an integer, except a v12 creator's, which is infinite.
Level = int | float
CREATOR_LEVEL: Final = math.inf
#: No power levels event: the creator has this level (v1–v11), everyone else 0.
CREATOR_DEFAULT_LEVEL: Final = 100

#: The top-level integer properties and their defaults when absent (server-server spec,
#: "Definitions"; client-server `m.room.power_levels`). `state_default` is 50 even when
#: there is no power levels event at all.
NAMED_LEVELS: Final[Mapping[str, int]] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "redact": 50,
    "kick": 50,
    "invite": 0,
}

_INTEGER_STRING = re.compile(r"\s*[+-]?[0-9]+\s*")


def parse_level(value: object, room_version: RoomVersion) -> int | None:
    """The integer a power level value stands for in this room version, or None if invalid."""
    if type(value) is int:
        return value
    if room_version.enforce_int_power_levels or isinstance(value, bool):
        return None
    if isinstance(value, int):  # an int subclass other than bool
        return int(value)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str) and _INTEGER_STRING.fullmatch(value):
        try:
            return int(value)
        except ValueError:  # more digits than Python converts
            return None
    return None


def creator_of(create: Event) -> str | None:
    """The room creator the first-join rule and the no-power-levels default refer to."""
    if create.room_version.implicit_room_creator:
        return create.sender
    creator = create.content.get("creator")
    return creator if isinstance(creator, str) else None


def creators_of(create: Event) -> frozenset[str]:
    """v12 room creators: the create event's sender plus `additional_creators`."""
    additional = create.content.get("additional_creators")
    creators = {create.sender}
    if isinstance(additional, list):
        creators.update(user for user in additional if isinstance(user, str))
    return frozenset(creators)


class PowerLevels:
    """The power levels in force in one state map."""

    __slots__ = ("_content", "_create", "_creators", "_version", "event")

    def __init__(self, state: Mapping[StateKey, Event], room_version: RoomVersion) -> None:
        create = state.get(CREATE_KEY)
        self.event = state.get(POWER_LEVELS_KEY)
        self._version = room_version
        self._content: Mapping[str, Any] = self.event.content if self.event is not None else {}
        #: The creator is only read without a power levels event: found then.
        self._create = create
        self._creators: frozenset[str] = (
            creators_of(create)
            if create is not None and room_version.room_id_from_create
            else frozenset()
        )

    def user_level(self, user_id: str) -> Level:
        if self._creators and user_id in self._creators:
            return CREATOR_LEVEL
        if self.event is None:
            create = self._create
            return (
                CREATOR_DEFAULT_LEVEL if create is not None and user_id == creator_of(create) else 0
            )
        users = self._content.get("users")
        if (type(users) is dict or isinstance(users, Mapping)) and user_id in users:
            level = parse_level(users[user_id], self._version)
            if level is not None:
                return level
        return self.named("users_default")

    def named(self, name: str) -> int:
        """One of `NAMED_LEVELS`: the invite, kick, ban, redact levels and the defaults."""
        if name in self._content:
            level = parse_level(self._content[name], self._version)
            if level is not None:
                return level
        return NAMED_LEVELS[name]

    def send_level(self, event_type: str, is_state: bool) -> int:
        """The spec's *required power level* for sending an event of this type."""
        events = self._content.get("events")
        if (type(events) is dict or isinstance(events, Mapping)) and event_type in events:
            level = parse_level(events[event_type], self._version)
            if level is not None:
                return level
        return self.named("state_default" if is_state else "events_default")


def describe_level(level: Level) -> str:
    return "infinite power (room creator)" if level == CREATOR_LEVEL else f"power level {level}"


def check_power_levels_event(
    event: Event, state: Mapping[StateKey, Event], levels: PowerLevels, sender_level: Level
) -> None:
    """The `m.room.power_levels` rule (rule 10 in v1–v5, 9 in v6–v11, 10 in v12).

    Which values are validated before "If there is no previous m.room.power_levels
    event in the room, allow" depends on the version: v1–v9 only `users`, v10+ also the
    named levels and the `events` and `notifications` maps (as Synapse's
    `_check_power_levels` does). So in v1–v9 a room's first power levels event may hold
    any value outside `users`; such a value is read as absent.

    Once there is a previous event, v1–v9 also reject a level anywhere in the event
    that is neither an integer nor a string holding one: the spec is silent, such a
    value has no meaning to compare, and Synapse fails on it (docs/matrix.md). Keys are
    visited in sorted order so that the reason for a rejection is the same on every run.
    """
    version = event.room_version
    content = event.content
    sender = event.sender
    if version.enforce_int_power_levels:
        # v10+ 1. Named levels present and not an integer: reject.
        new_named = _parse_named(content, event)
        # v10+ 2. `events` or `notifications` present and not an object of integers: reject.
        new_maps = {name: _parse_map(content, name, event) for name in _limited_maps(version)}
    # `users` not an object with valid user IDs for keys and integers for values: reject.
    new_users = _parse_users(content, event)
    if version.room_id_from_create:
        create = state.get(CREATE_KEY)
        if create is not None:
            listed = sorted(creators_of(create).intersection(new_users))
            if listed:
                raise AuthError(
                    f"{sender}'s m.room.power_levels lists room creator(s) {', '.join(listed)} "
                    f"in users; creators have infinite power in room version "
                    f"{version.identifier} and must not be listed"
                )
    current = levels.event
    if current is None:
        return  # the room's first power levels event
    if not version.enforce_int_power_levels:
        new_named = _parse_named(content, event)
        new_maps = {name: _parse_map(content, name, event) for name in _limited_maps(version)}
    old = current.content
    old_named = _lenient_named(old, version)
    for name in NAMED_LEVELS:
        _check_change(sender, sender_level, name, old_named.get(name), new_named.get(name))
    for name, new_map in new_maps.items():
        old_map = _lenient_map(old.get(name), version)
        for key in sorted(old_map.keys() | new_map.keys()):
            _check_change(sender, sender_level, f"{name}.{key}", old_map.get(key), new_map.get(key))
    old_users = _lenient_map(old.get("users"), version)
    for user in sorted(old_users.keys() | new_users.keys()):
        old_level, new_level = old_users.get(user), new_users.get(user)
        if old_level == new_level:
            continue
        if user != sender and old_level is not None and old_level >= sender_level:
            raise AuthError(
                f"{sender} has {describe_level(sender_level)} and cannot change or remove "
                f"{user}'s power level {old_level}, which is not below their own"
            )
        if new_level is not None and new_level > sender_level:
            raise AuthError(
                f"{sender} has {describe_level(sender_level)} and cannot give {user} power "
                f"level {new_level}, which is above their own"
            )


def _limited_maps(version: RoomVersion) -> tuple[str, ...]:
    """The per-key maps whose changes the sender's level limits (`notifications` from v6)."""
    return ("events", "notifications") if version.limit_notifications_power_levels else ("events",)


def _check_change(
    sender: str, sender_level: Level, what: str, old: int | None, new: int | None
) -> None:
    if old == new:
        return
    if old is not None and old > sender_level:
        raise AuthError(
            f"{sender} has {describe_level(sender_level)} and cannot change {what} from "
            f"{old}, which is above their own"
        )
    if new is not None and new > sender_level:
        raise AuthError(
            f"{sender} has {describe_level(sender_level)} and cannot set {what} to {new}, "
            "which is above their own"
        )


def _invalid(event: Event, what: str, value: object) -> AuthError:
    wanted = (
        "an integer"
        if event.room_version.enforce_int_power_levels
        else "an integer or a string holding one"
    )
    return AuthError(
        f"{event.sender}'s m.room.power_levels has {what} = {value!r}; room version "
        f"{event.room_version.identifier} needs {wanted}"
    )


def _parse_named(content: Mapping[str, Any], event: Event) -> dict[str, int]:
    parsed: dict[str, int] = {}
    for name in NAMED_LEVELS:
        if name in content:
            level = parse_level(content[name], event.room_version)
            if level is None:
                raise _invalid(event, name, content[name])
            parsed[name] = level
    return parsed


def _parse_map(content: Mapping[str, Any], name: str, event: Event) -> dict[str, int]:
    if name not in content:
        return {}
    value = content[name]
    if not isinstance(value, Mapping):
        raise AuthError(
            f"{event.sender}'s m.room.power_levels has {name} = {value!r}, which is not an object"
        )
    parsed: dict[str, int] = {}
    for key, raw in value.items():
        level = parse_level(raw, event.room_version)
        if level is None:
            raise _invalid(event, f"{name}.{key}", raw)
        parsed[key] = level
    return parsed


def _parse_users(content: Mapping[str, Any], event: Event) -> dict[str, int]:
    users = _parse_map(content, "users", event)
    for user in users:
        if not is_valid_user_id(user):
            raise AuthError(
                f"{event.sender}'s m.room.power_levels lists {user!r} in users, which is not "
                "a valid user ID"
            )
    return users


def _lenient_named(content: Mapping[str, Any], version: RoomVersion) -> dict[str, int]:
    """The named levels of an already accepted event; an unreadable one counts as absent."""
    parsed: dict[str, int] = {}
    for name in NAMED_LEVELS:
        if name in content:
            level = parse_level(content[name], version)
            if level is not None:
                parsed[name] = level
    return parsed


def _lenient_map(value: object, version: RoomVersion) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    parsed: dict[str, int] = {}
    for key, raw in value.items():
        level = parse_level(raw, version)
        if level is not None:
            parsed[key] = level
    return parsed


def user_power_level(state: Mapping[StateKey, Event], user_id: str) -> Level:
    """A user's power level in a state map that holds the create event.

    For callers outside the auth rules, such as state resolution's ordering by the
    sender's power.
    """
    create = state.get(CREATE_KEY)
    if create is None:
        raise ValueError("the state has no m.room.create event to read the room version from")
    return PowerLevels(state, create.room_version).user_level(user_id)
