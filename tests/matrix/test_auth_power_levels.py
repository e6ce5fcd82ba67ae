"""Power levels: value formats per room version, change limits, v12 creators."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from tests.matrix.test_auth_factory import ALL_VERSIONS, Room, started, versions
from worker.matrix.auth import CREATOR_LEVEL, AuthError, parse_level, user_power_level
from worker.matrix.room_versions import ROOM_VERSIONS

ALICE, BOB, CAROL, DAVE = "@alice:a", "@bob:b", "@carol:a", "@dave:c"


def rejected(room: Room, sender: str, *words: str, **content: Any) -> str:
    with pytest.raises(AuthError) as info:
        room.check(room.power(sender, **content))
    for word in words:
        assert word in info.value.reason, info.value.reason
    return info.value.reason


def allowed(room: Room, sender: str, **content: Any) -> None:
    room.check(room.power(sender, **content))


def admin(version: str) -> dict[str, int]:
    """Alice's entry (none in v12, where she is the creator) plus Carol at 50."""
    return {CAROL: 50} if version == "12" else {ALICE: 100, CAROL: 50}


# -- the value formats ------------------------------------------------------------------

STRINGY = ["50", "000050", "+50", " 50 ", "\t-50\n", " +050 "]


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_parse_level(version: str) -> None:
    room_version = ROOM_VERSIONS[version]
    assert parse_level(50, room_version) == 50
    assert parse_level(-7, room_version) == -7
    bad: object
    for bad in (True, None, [], {}, "5.0", "1e3", "fifty", "", "5 0", "٣"):
        assert parse_level(bad, room_version) is None, bad
    for text in STRINGY:
        expected = None if room_version.enforce_int_power_levels else int(text)
        assert parse_level(text, room_version) == expected
    floats = None if room_version.enforce_int_power_levels else 51146
    assert parse_level(5.114698e4, room_version) == floats
    assert parse_level(math.inf, room_version) is None
    assert parse_level(math.nan, room_version) is None
    assert parse_level("9" * 5000, room_version) is None


@pytest.mark.parametrize("version", versions(1, 9))
def test_stringy_levels_are_read_before_v10(version: str) -> None:
    room = started(version, BOB, users={ALICE: "100", BOB: " 60 "}, state_default="+55")
    room.check(room.make("m.room.topic", BOB, {"topic": "x"}, state_key=""))
    room.force(DAVE, "join")
    allowed(room, ALICE, users={ALICE: 100, BOB: "60"}, state_default=55)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_power_levels_value_formats(version: str) -> None:
    """Changing the power levels (a previous event exists). A room's first power levels
    event is validated less in v1–v9: see tests/matrix/test_spec_departures.py."""
    room = started(version, users=admin(version))
    ints_only = room.version.enforce_int_power_levels
    users = admin(version)
    for key in ("users_default", "events_default", "state_default", "ban", "redact", "kick"):
        if ints_only:
            rejected(room, ALICE, key, "needs an integer", users=users, **{key: "50"})
        else:
            allowed(room, ALICE, users=users, **{key: "50"})
        rejected(room, ALICE, key, users=users, **{key: "abc"})
        rejected(room, ALICE, key, users=users, **{key: True})
    stringy_user = {**users, BOB: "10"}
    if ints_only:
        rejected(room, ALICE, "users.@bob:b", users=stringy_user)
        rejected(room, ALICE, "events.m.x", users=users, events={"m.x": "1"})
        rejected(room, ALICE, "notifications.room", users=users, notifications={"room": "1"})
    else:
        allowed(room, ALICE, users=stringy_user, events={"m.x": "1"})
    rejected(room, ALICE, "not an object", users=users, events=[])
    rejected(room, ALICE, "not an object", users=["@bob:b"])
    rejected(room, ALICE, "not a valid user ID", users={**users, "bob": 1})
    rejected(room, ALICE, "not a valid user ID", users={**users, "@bob": 1})


@pytest.mark.parametrize("version", versions(1, 5))
def test_notifications_are_not_checked_before_v6(version: str) -> None:
    room = started(version, users={ALICE: 100})
    allowed(room, ALICE, users={ALICE: 100}, notifications="anything")


@pytest.mark.parametrize("version", versions(1, 5))
def test_floats_are_truncated_before_v6(version: str) -> None:
    room = started(version, BOB, users={ALICE: 100.9, BOB: 50.57})
    room.check(room.make("m.room.topic", BOB, {"topic": "x"}, state_key=""))
    # 100.9 is 100: Alice may not set anyone to 101.
    rejected(room, ALICE, "above their own", users={ALICE: 100, BOB: 101})


# -- changes -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_first_power_levels_event_is_free(version: str) -> None:
    room = started(version)
    allowed(room, ALICE, users={BOB: 10**6} if version == "12" else {ALICE: 10**6}, ban=10**6)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize(
    "key", ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]
)
def test_named_level_changes(version: str, key: str) -> None:
    users = {**admin(version), DAVE: 60}
    # Anyone may send power levels, so that only the change limits are tested.
    base: dict[str, Any] = {"users": users, "events": {"m.room.power_levels": 0}}
    arranged: dict[str, Any] = {**base, key: 70}
    room = started(version, CAROL, DAVE, **arranged)
    rejected(room, CAROL, key, "from 70", **{**base, key: 10})  # current above own
    rejected(room, CAROL, key, "from 70", **base)  # removing a value above own
    rejected(room, DAVE, key, "from 70", **{**base, key: 60})
    allowed(room, ALICE, **{**base, key: 10})
    room.set_power(**{**base, key: 40})
    allowed(room, CAROL, **{**base, key: 50})  # both at or below her own 50
    allowed(room, CAROL, **base)  # removing 40
    same = "040" if not room.version.enforce_int_power_levels else 40
    allowed(room, DAVE, **{**base, key: same})  # the same value is no change
    rejected(room, CAROL, key, "to 51", **{**base, key: 51})


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("field", ["events", "notifications"])
def test_per_type_level_changes(version: str, field: str) -> None:
    limited = field == "events" or ROOM_VERSIONS[version].limit_notifications_power_levels
    users = admin(version)
    arranged: dict[str, Any] = {"users": users, "state_default": 0, field: {"a": 70, "b": 40}}
    room = started(version, CAROL, **arranged)
    attempts = [
        {"a": 70, "b": 50, "c": 50},  # allowed: changes at or below 50
        {"a": 70},  # allowed: removes b (40)
        {"a": 10, "b": 40},  # changes a, currently 70
        {"b": 40},  # removes a, currently 70
        {"a": 70, "b": 40, "c": 51},  # adds above own
        {"a": 70, "b": 60},  # changes to above own
    ]
    for n, values in enumerate(attempts):
        event = room.power(CAROL, users=users, state_default=0, **{field: values})
        if n < 2 or not limited:
            room.check(event)
        else:
            with pytest.raises(AuthError, match=field):
                room.check(event)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_user_level_changes(version: str) -> None:
    base = admin(version)
    room = started(version, BOB, CAROL, DAVE, users={**base, BOB: 50, DAVE: 10})
    current = {**base, BOB: 50, DAVE: 10}
    reason = rejected(room, CAROL, "@bob:b's power level 50", users={**current, BOB: 10})
    assert reason.startswith(f"{CAROL} has power level 50")
    rejected(room, CAROL, "@bob:b", users={k: v for k, v in current.items() if k != BOB})
    rejected(room, CAROL, "give @dave:c power level 51", users={**current, DAVE: 51})
    rejected(room, CAROL, "give @erin:e power level 60", users={**current, "@erin:e": 60})
    rejected(room, CAROL, "give @carol:a power level 51", users={**current, CAROL: 51})
    allowed(room, CAROL, users={**current, DAVE: 50, "@erin:e": 50})
    allowed(room, CAROL, users={k: v for k, v in current.items() if k != DAVE})
    allowed(room, CAROL, users={**current, CAROL: 0})  # demoting herself
    allowed(room, CAROL, users={k: v for k, v in current.items() if k != CAROL})
    allowed(room, CAROL, users={**current, CAROL: 50})  # no change at all
    rejected(room, DAVE, "needs 50", users={**current, DAVE: 0})  # below state_default


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_users_default_above_own_is_rejected(version: str) -> None:
    room = started(version, CAROL, users=admin(version), users_default=0)
    rejected(room, CAROL, "users_default", users=admin(version), users_default=51)
    allowed(room, CAROL, users=admin(version), users_default=50)


# -- v12 room creators --------------------------------------------------------------------


def creators_room() -> Room:
    room = Room("12", create_content={"additional_creators": [BOB]})
    room.join(ALICE)
    room.set_state("m.room.join_rules", {"join_rule": "public"})
    room.set_power(users={CAROL: 100}, ban=50, kick=50)
    for user in (BOB, CAROL, DAVE):
        room.force(user, "join")
    return room


def test_v12_creators_have_infinite_power() -> None:
    room = creators_room()
    assert user_power_level(room.state, ALICE) == CREATOR_LEVEL
    assert user_power_level(room.state, BOB) == CREATOR_LEVEL
    assert user_power_level(room.state, CAROL) == 100
    assert user_power_level(room.state, DAVE) == 0
    allowed(room, BOB, users={CAROL: 10**15, DAVE: 99}, ban=10**15)
    rejected(room, CAROL, "power level 100", "above their own", users={CAROL: 100, DAVE: 101})
    with pytest.raises(AuthError, match="infinite power"):
        room.check(room.member(CAROL, "ban", BOB))
    with pytest.raises(AuthError, match="infinite power"):
        room.check(room.member(CAROL, "leave", ALICE))
    room.check(room.member(BOB, "ban", CAROL))
    # One creator cannot kick another: neither is below the other.
    with pytest.raises(AuthError, match="not below"):
        room.check(room.member(ALICE, "leave", BOB))


@pytest.mark.parametrize("creator", [ALICE, BOB])
def test_v12_creators_must_not_be_listed(creator: str) -> None:
    room = creators_room()
    rejected(room, ALICE, creator, "must not be listed", users={CAROL: 100, creator: 100})


def test_v12_creator_listing_is_checked_even_for_the_first_power_levels() -> None:
    room = started("12")
    rejected(room, ALICE, "must not be listed", users={ALICE: 100})


def test_v12_creators_have_infinite_power_without_power_levels() -> None:
    room = started("12", BOB)
    assert user_power_level(room.state, ALICE) == CREATOR_LEVEL
    assert user_power_level(room.state, BOB) == 0


@pytest.mark.parametrize("version", versions(1, 11))
def test_before_v12_the_creator_is_only_100_without_power_levels(version: str) -> None:
    room = started(version)
    assert user_power_level(room.state, ALICE) == 100
    room.set_power(users={BOB: 5})
    assert user_power_level(room.state, ALICE) == 0


def test_user_power_level_needs_a_create_event() -> None:
    with pytest.raises(ValueError, match=re.escape("m.room.create")):
        user_power_level({}, ALICE)
