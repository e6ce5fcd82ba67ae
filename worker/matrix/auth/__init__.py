"""Matrix authorization rules for room versions 1–12.

Pure functions over `Event`s and state maps; see `rules` for how the pipeline runs them.
"""

from worker.matrix.auth.errors import AuthError
from worker.matrix.auth.power_levels import CREATOR_LEVEL, Level, parse_level, user_power_level
from worker.matrix.auth.rules import VerdictKey, check_auth, check_create, verdict_key
from worker.matrix.auth.selection import (
    auth_types_for_event,
    create_event_id_for_room,
    state_from_auth_events,
    third_party_invite_token,
    validate_auth_events,
)

__all__ = [
    "CREATOR_LEVEL",
    "AuthError",
    "Level",
    "VerdictKey",
    "auth_types_for_event",
    "check_auth",
    "check_create",
    "create_event_id_for_room",
    "parse_level",
    "state_from_auth_events",
    "third_party_invite_token",
    "user_power_level",
    "validate_auth_events",
    "verdict_key",
]
