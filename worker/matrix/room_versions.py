"""The table of Matrix room versions 1–12 and the flags in which they differ.

Every rule that varies by room version reads a flag from here instead of comparing
version strings, so adding a version is one row and the differences stay auditable
against the spec's `content/rooms/vN.md` pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EventIdFormat(Enum):
    """How an event's ID is obtained."""

    #: v1–v2: chosen by the origin server and carried in the `event_id` field.
    LEGACY = "legacy"
    #: v3: `$` + standard unpadded base64 of the reference hash.
    BASE64 = "base64"
    #: v4+: `$` + URL-safe unpadded base64 of the reference hash.
    URL_SAFE = "url_safe"


class StateResAlgorithm(Enum):
    V1 = "v1"
    V2 = "v2"
    V2_1 = "v2.1"


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    event_id_format: EventIdFormat
    state_res: StateResAlgorithm
    #: v6+: canonical JSON forbids floats and integers outside ±(2^53−1).
    strict_canonical_json: bool
    #: v1–v5: `m.room.aliases` has its own auth rule and keeps `aliases` when redacted.
    special_case_aliases: bool
    #: v1–v2: `m.room.redaction` is checked by an auth rule (domain or redact level).
    redaction_in_auth_rules: bool
    #: v6+: power level changes to `notifications` are limited by the sender's level.
    limit_notifications_power_levels: bool
    #: v7+: the `knock` join rule and membership exist.
    knock: bool
    #: v8+: the `restricted` join rule exists; redaction keeps join_rules `allow`.
    restricted_join_rule: bool
    #: v9+: redaction keeps member `join_authorised_via_users_server`.
    restricted_join_rule_fix: bool
    #: v10+: the `knock_restricted` join rule exists.
    knock_restricted_join_rule: bool
    #: v10+: power level values must be integers, never strings.
    enforce_int_power_levels: bool
    #: v11+: the creator is the create event's sender; `redacts` lives in content;
    #: the v11 redaction algorithm applies.
    implicit_room_creator: bool
    updated_redaction_rules: bool
    #: v12: room ID is derived from the create event's ID, creators have infinite
    #: power (create `additional_creators`), and the create event is never an auth event.
    room_id_from_create: bool

    @property
    def auth_events_are_pairs(self) -> bool:
        """v1–v2 list `prev_events`/`auth_events` as `[event_id, {hash}]` pairs."""
        return self.event_id_format is EventIdFormat.LEGACY


def _v(identifier: str, n: int) -> RoomVersion:
    """Build version `n` from the spec's cumulative changes."""
    if n <= 2:
        id_format = EventIdFormat.LEGACY
    elif n == 3:
        id_format = EventIdFormat.BASE64
    else:
        id_format = EventIdFormat.URL_SAFE
    if n == 1:
        state_res = StateResAlgorithm.V1
    elif n >= 12:
        state_res = StateResAlgorithm.V2_1
    else:
        state_res = StateResAlgorithm.V2
    return RoomVersion(
        identifier=identifier,
        event_id_format=id_format,
        state_res=state_res,
        strict_canonical_json=n >= 6,
        special_case_aliases=n <= 5,
        redaction_in_auth_rules=n <= 2,
        limit_notifications_power_levels=n >= 6,
        knock=n >= 7,
        restricted_join_rule=n >= 8,
        restricted_join_rule_fix=n >= 9,
        knock_restricted_join_rule=n >= 10,
        enforce_int_power_levels=n >= 10,
        implicit_room_creator=n >= 11,
        updated_redaction_rules=n >= 11,
        room_id_from_create=n >= 12,
    )


ROOM_VERSIONS: dict[str, RoomVersion] = {str(n): _v(str(n), n) for n in range(1, 13)}


class UnknownRoomVersion(ValueError):
    """A room version outside the table: inputs naming it are dead-lettered."""


def get_room_version(identifier: object) -> RoomVersion:
    """Look a version up, raising `UnknownRoomVersion` for anything not in the table."""
    if isinstance(identifier, str):
        version = ROOM_VERSIONS.get(identifier)
        if version is not None:
            return version
    raise UnknownRoomVersion(f"room version {identifier!r} is not one this server knows (1–12)")
