"""Auth events selection and the rule about an event's own auth_events list."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.matrix.test_auth_factory import ALL_VERSIONS, Room, started, versions
from worker.matrix.auth import (
    AuthError,
    auth_types_for_event,
    create_event_id_for_room,
    state_from_auth_events,
    validate_auth_events,
)
from worker.matrix.events import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS, Event
from worker.matrix.room_versions import ROOM_VERSIONS

ALICE, BOB, CAROL = "@alice:a", "@bob:b", "@carol:a"
PL, JR, CR = (POWER_LEVELS, ""), (JOIN_RULES, ""), (CREATE, "")


def selection(
    version: str, event_type: str, state_key: str | None, sender: str, **content: Any
) -> set[tuple[str, str]]:
    return auth_types_for_event(ROOM_VERSIONS[version], event_type, state_key, sender, content)


def with_create(version: str, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return keys if ROOM_VERSIONS[version].room_id_from_create else keys | {CR}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_selection_for_ordinary_events(version: str) -> None:
    assert selection(version, CREATE, "", ALICE) == set()
    expected = with_create(version, {PL, (MEMBER, BOB)})
    assert selection(version, "m.room.message", None, BOB, body="x") == expected
    assert selection(version, "m.room.topic", "", BOB, topic="x") == expected
    assert selection(version, POWER_LEVELS, "", BOB) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_selection_for_membership(version: str) -> None:
    base = with_create(version, {PL, (MEMBER, ALICE), (MEMBER, BOB)})
    for membership in ("join", "invite", "knock"):
        assert selection(version, MEMBER, BOB, ALICE, membership=membership) == base | {JR}
    for membership in ("leave", "ban", "bogus"):
        assert selection(version, MEMBER, BOB, ALICE, membership=membership) == base
    assert selection(version, MEMBER, BOB, ALICE) == base
    assert selection(version, MEMBER, None, ALICE, membership="join") == base - {(MEMBER, BOB)} | {
        JR
    }
    own = with_create(version, {PL, (MEMBER, BOB), JR})
    assert selection(version, MEMBER, BOB, BOB, membership="join") == own


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_selection_for_third_party_invites(version: str) -> None:
    base = with_create(version, {PL, (MEMBER, ALICE), (MEMBER, BOB), JR})
    tpi = {"signed": {"token": "tok", "mxid": BOB}}
    assert selection(version, MEMBER, BOB, ALICE, membership="invite", third_party_invite=tpi) == (
        base | {("m.room.third_party_invite", "tok")}
    )
    for malformed in ({"signed": {"token": 5}}, {"signed": "x"}, "x"):
        keys = selection(
            version, MEMBER, BOB, ALICE, membership="invite", third_party_invite=malformed
        )
        assert keys == base
    # Only invites redeem third-party invites.
    keys = selection(version, MEMBER, BOB, BOB, membership="join", third_party_invite=tpi)
    assert ("m.room.third_party_invite", "tok") not in keys


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_selection_for_restricted_joins(version: str) -> None:
    keys = selection(
        version, MEMBER, BOB, BOB, membership="join", join_authorised_via_users_server=CAROL
    )
    assert ((MEMBER, CAROL) in keys) == ROOM_VERSIONS[version].restricted_join_rule
    knock = selection(
        version, MEMBER, BOB, BOB, membership="knock", join_authorised_via_users_server=CAROL
    )
    assert (MEMBER, CAROL) not in knock
    odd = selection(
        version, MEMBER, BOB, BOB, membership="join", join_authorised_via_users_server=5
    )
    assert odd == with_create(version, {PL, (MEMBER, BOB), JR})


def test_create_event_id_for_room() -> None:
    v12, v11 = ROOM_VERSIONS["12"], ROOM_VERSIONS["11"]
    room_id = "!" + "A" * 42 + "_"
    assert create_event_id_for_room(v12, room_id) == "$" + "A" * 42 + "_"
    assert create_event_id_for_room(v11, room_id) is None
    for bad in ("!short", "!" + "A" * 42 + "=", "!" + "A" * 43 + ":a", "$" + "A" * 43):
        assert create_event_id_for_room(v12, bad) is None


# -- validate_auth_events ---------------------------------------------------------------


def room_with_bob(version: str) -> Room:
    room = started(version, BOB, users={BOB: 50} if version == "12" else {ALICE: 100, BOB: 50})
    return room


def cite(room: Room, sender: str, keys: list[tuple[str, str]], **kwargs: Any) -> Event:
    ids = [room.state[key].event_id for key in keys]
    return room.make("m.room.message", sender, {"body": "x"}, auth=ids, **kwargs)


def by_id(room: Room) -> dict[str, Event | None]:
    return {event.event_id: event for event in room.state.values()}


def proper_keys(room: Room, sender: str) -> list[tuple[str, str]]:
    keys = [PL, (MEMBER, sender)]
    return keys if room.version.room_id_from_create else [CR, *keys]


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_valid_auth_events(version: str) -> None:
    room = room_with_bob(version)
    event = cite(room, BOB, proper_keys(room, BOB))
    validate_auth_events(event, by_id(room), set())
    # The selection says what *may* be cited; citing fewer events is the rules' concern.
    validate_auth_events(cite(room, BOB, proper_keys(room, BOB)[:-1]), by_id(room), set())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unknown_auth_event(version: str) -> None:
    room = room_with_bob(version)
    event = cite(room, BOB, proper_keys(room, BOB))
    known = by_id(room)
    missing = event.auth_event_ids[-1]
    for auth_events in ({**known, missing: None}, {k: v for k, v in known.items() if k != missing}):
        with pytest.raises(AuthError, match=re.escape(missing) + ".*does not have"):
            validate_auth_events(event, auth_events, set())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_rejected_auth_event(version: str) -> None:
    room = room_with_bob(version)
    event = cite(room, BOB, proper_keys(room, BOB))
    bad = room.state[PL].event_id
    with pytest.raises(AuthError, match=re.escape(f"{bad}, which was rejected")):
        validate_auth_events(event, by_id(room), {bad})


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_duplicate_auth_events(version: str) -> None:
    room = room_with_bob(version)
    old_pl = room.state[PL]
    room.set_power(users=dict(old_pl.content["users"]), ban=40)
    event = cite(room, BOB, proper_keys(room, BOB))
    ids = [*event.auth_event_ids, old_pl.event_id]
    event = room.make("m.room.message", BOB, {"body": "x"}, auth=ids)
    known = {**by_id(room), old_pl.event_id: old_pl}
    with pytest.raises(AuthError, match=re.escape("two auth events for (m.room.power_levels, '')")):
        validate_auth_events(event, known, set())
    twice = room.make(
        "m.room.message", BOB, {"body": "x"}, auth=[*event.auth_event_ids[:-1], ids[-2]]
    )
    with pytest.raises(AuthError, match="two auth events"):
        validate_auth_events(twice, known, set())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_auth_event_outside_the_selection(version: str) -> None:
    room = room_with_bob(version)
    for extra in (JR, (MEMBER, ALICE)):
        event = cite(room, BOB, [*proper_keys(room, BOB), extra])
        with pytest.raises(AuthError, match="selection does not allow"):
            validate_auth_events(event, by_id(room), set())
    # The join rules are fine for a join.
    ids = [room.state[key].event_id for key in [*proper_keys(room, CAROL)[:-1], JR]]
    join = room.make(MEMBER, CAROL, {"membership": "join"}, state_key=CAROL, auth=ids)
    validate_auth_events(join, by_id(room), set())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_auth_event_must_be_state(version: str) -> None:
    room = room_with_bob(version)
    message = room.make("m.room.message", BOB, {"body": "x"})
    event = cite(room, BOB, proper_keys(room, BOB))
    event = room.make("m.room.message", BOB, {}, auth=[*event.auth_event_ids, message.event_id])
    with pytest.raises(AuthError, match="not a state event"):
        validate_auth_events(event, {**by_id(room), message.event_id: message}, set())


@pytest.mark.parametrize("version", versions(1, 11))
def test_auth_events_must_include_the_create_until_v12(version: str) -> None:
    room = room_with_bob(version)
    event = cite(room, BOB, [PL, (MEMBER, BOB)])
    with pytest.raises(AuthError, match=re.escape("does not cite the room's m.room.create")):
        validate_auth_events(event, by_id(room), set())


@pytest.mark.parametrize("version", versions(1, 11))
def test_auth_events_from_another_room(version: str) -> None:
    room = room_with_bob(version)
    other = Room(version, creator="@alice:z")
    event = room.make(
        "m.room.message",
        BOB,
        {},
        auth=[other.create.event_id, *(room.state[k].event_id for k in (PL, (MEMBER, BOB)))],
    )
    with pytest.raises(AuthError, match="from another room, !room:z"):
        validate_auth_events(event, {**by_id(room), other.create.event_id: other.create}, set())


def test_v12_auth_events_must_not_include_the_create() -> None:
    room = room_with_bob("12")
    event = cite(room, BOB, [CR, PL, (MEMBER, BOB)])
    with pytest.raises(AuthError, match="room version 12 forbids"):
        validate_auth_events(event, by_id(room), set())


def test_v12_room_id_must_name_a_create_event() -> None:
    room = room_with_bob("12")
    event = room.make("m.room.message", BOB, {}, auth=[], room_id="!notahash:a")
    with pytest.raises(AuthError, match=re.escape("not the ID of an m.room.create")):
        validate_auth_events(event, {}, set())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_event_list_is_not_examined(version: str) -> None:
    room = Room(version)
    validate_auth_events(room.create, {}, set())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_state_from_auth_events(version: str) -> None:
    room = room_with_bob(version)
    message = room.make("m.room.message", BOB, {"body": "x"})
    events = [room.state[PL], room.state[(MEMBER, BOB)], message]
    state = state_from_auth_events(events, room.create)
    assert state == {PL: events[0], (MEMBER, BOB): events[1], CR: room.create}
    assert CR not in state_from_auth_events(events, None)
