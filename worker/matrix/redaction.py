"""The redaction algorithm of each room version (spec: rooms/vN "Redactions").

Redaction decides which keys survive in a redacted event. It is the input of the reference
hash (hence of event IDs from v3), of signatures, and it is what an event whose content
hash fails is processed as, so it must match the spec to the key.

Version differences, read from the `RoomVersion` flags:

- v1–5 (`special_case_aliases`): `m.room.aliases` keeps `aliases`.
- v8+ (`restricted_join_rule`): `m.room.join_rules` keeps `allow`.
- v9+ (`restricted_join_rule_fix`): `m.room.member` keeps `join_authorised_via_users_server`.
- v11+ (`updated_redaction_rules`): top-level `origin`, `membership` and `prev_state` are no
  longer kept; `m.room.create` keeps its whole content; `m.room.redaction` keeps
  `redacts`; `m.room.power_levels` keeps `invite`; `m.room.member` keeps
  `third_party_invite.signed`.

`third_party_invite` that is not an object is dropped, and one without `signed` becomes
``{}``: the spec keeps only "the `signed` key of the `third_party_invite` key", and
Synapse and ruma agree on both cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from worker.matrix.events import (
    ALIASES,
    CREATE,
    HISTORY_VISIBILITY,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    REDACTION,
)
from worker.matrix.room_versions import RoomVersion

_TOP_LEVEL_V11 = frozenset(
    (
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    )
)
_TOP_LEVEL_V1 = _TOP_LEVEL_V11 | {"prev_state", "origin", "membership"}

_POWER_LEVELS_V1 = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)
_POWER_LEVELS_V11 = (*_POWER_LEVELS_V1, "invite")


def _content_keys(event_type: object, room_version: RoomVersion) -> tuple[str, ...] | None:
    """Content keys kept for `event_type`; None means "keep the whole content"."""
    v11 = room_version.updated_redaction_rules
    if event_type == MEMBER:
        if room_version.restricted_join_rule_fix:
            return ("membership", "join_authorised_via_users_server")
        return ("membership",)
    if event_type == CREATE:
        return None if v11 else ("creator",)
    if event_type == JOIN_RULES:
        if room_version.restricted_join_rule:
            return ("join_rule", "allow")
        return ("join_rule",)
    if event_type == POWER_LEVELS:
        return _POWER_LEVELS_V11 if v11 else _POWER_LEVELS_V1
    if event_type == HISTORY_VISIBILITY:
        return ("history_visibility",)
    if event_type == ALIASES and room_version.special_case_aliases:
        return ("aliases",)
    if event_type == REDACTION and v11:
        return ("redacts",)
    return ()


def redact_content(
    event_type: object, content: object, room_version: RoomVersion
) -> dict[str, Any]:
    """The redacted form of an event's `content` (a new dict; values are shared)."""
    # A dict first: the ABC check costs more than the rest of a small event's.
    if type(content) is not dict and not isinstance(content, Mapping):
        return {}
    keys = _content_keys(event_type, room_version)
    if keys is None:
        return dict(content)
    kept = {key: content[key] for key in keys if key in content}
    if (
        event_type == MEMBER
        and room_version.updated_redaction_rules
        and "third_party_invite" in content
    ):
        invite = content["third_party_invite"]
        if isinstance(invite, Mapping):
            kept["third_party_invite"] = {"signed": invite["signed"]} if "signed" in invite else {}
    return kept


def kept_top_level(room_version: RoomVersion) -> frozenset[str]:
    """The top-level keys a redacted event keeps under `room_version`'s algorithm."""
    return _TOP_LEVEL_V11 if room_version.updated_redaction_rules else _TOP_LEVEL_V1


def redact(
    pdu: Mapping[str, Any], room_version: RoomVersion, *, keep: Set[str] | None = None
) -> dict[str, Any]:
    """The redacted copy of a PDU under `room_version`'s algorithm.

    The input is not modified. The result is a new top-level dict and a new `content`; other
    nested values are shared with the input, so treat the result as read-only. `keep`
    narrows the top-level keys kept to a part of the algorithm's (`kept_top_level`): the
    reference hash's view is the redacted event without its signatures, made in the
    same pass.
    """
    # A copy in C less the keys not kept, rather than a loop over every key.
    redacted = dict(pdu)
    for key in redacted.keys() - (kept_top_level(room_version) if keep is None else keep):
        del redacted[key]
    if "content" in redacted:
        redacted["content"] = redact_content(pdu.get("type"), pdu["content"], room_version)
    return redacted
