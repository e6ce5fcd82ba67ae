"""History visibility for servers, against the client-server spec's rules.

Client-server API, "Room History Visibility", "Server behaviour": "The rules governing
whether a user is allowed to see an event depend on the state of the room *at that
event*. 1. If the `history_visibility` was set to `world_readable`, allow. 2. If the
user's `membership` was `join`, allow. 3. If `history_visibility` was set to `shared`,
and the user joined the room at any point after the event was sent, allow. 4. If the
user's `membership` was `invite`, and the `history_visibility` was set to `invited`,
allow. 5. Otherwise, deny." A server sees what one of its users could (rule 3 holds for
any server asking, since it is in the room).
"""

from __future__ import annotations

from typing import Any

import pytest

from worker.matrix.builder import RoomBuilder
from worker.matrix.events import HISTORY_VISIBILITY, MEMBER, StateKey
from worker.matrix.redaction import redact
from worker.matrix.visibility import (
    effective_history_visibility,
    event_visible_to_server,
    filter_events_for_server,
    server_may_see,
    server_memberships,
)

pytestmark = pytest.mark.unit

HV: StateKey = (HISTORY_VISIBILITY, "")


def state(visibility: str | None, **members: str) -> dict[StateKey, dict[str, Any]]:
    """A state map: the visibility (None: no event) and `user@server=membership` pairs."""
    result: dict[StateKey, dict[str, Any]] = {}
    if visibility is not None:
        result[HV] = {"history_visibility": visibility}
    for user, membership in members.items():
        local, _, server = user.partition("_at_")
        result[(MEMBER, f"@{local}:{server}")] = {"membership": membership}
    return result


def test_default_and_unknown_visibility_is_shared() -> None:
    """ "By default if no `history_visibility` is set, or if the value is not understood,
    the visibility is assumed to be `shared`.\""""
    assert effective_history_visibility(None) == "shared"
    assert effective_history_visibility({}) == "shared"
    assert effective_history_visibility({"history_visibility": "bogus"}) == "shared"
    assert effective_history_visibility({"history_visibility": ["joined"]}) == "shared"
    assert effective_history_visibility({"history_visibility": "joined"}) == "joined"


def test_world_readable_and_shared_allow_any_server() -> None:
    """Rules 1 and 3: no membership needed."""
    for visibility in ("world_readable", "shared", None, "bogus"):
        assert event_visible_to_server(state(visibility), "b")
        assert event_visible_to_server(state(visibility, x_at_b="leave"), "b")


def test_joined_member_allows() -> None:
    """Rule 2: a user of the server had joined."""
    for visibility in ("invited", "joined"):
        assert event_visible_to_server(state(visibility, x_at_b="join"), "b")
        assert event_visible_to_server(state(visibility, x_at_b="leave", y_at_b="join"), "b")


def test_invite_allows_only_under_invited() -> None:
    """Rule 4: `invite` counts only when the visibility is `invited`."""
    assert event_visible_to_server(state("invited", x_at_b="invite"), "b")
    assert not event_visible_to_server(state("joined", x_at_b="invite"), "b")


def test_otherwise_deny() -> None:
    """Rule 5: no joined (or, for `invited`, invited) user on the server."""
    for visibility in ("invited", "joined"):
        assert not event_visible_to_server(state(visibility), "b")
        for membership in ("leave", "ban", "knock"):
            assert not event_visible_to_server(state(visibility, x_at_b=membership), "b")
        # Another server's members do not count.
        assert not event_visible_to_server(state(visibility, x_at_a="join"), "b")
        assert not event_visible_to_server(state(visibility, x_at_a="join"), "b:8448")


def test_server_names_compare_exactly() -> None:
    """A user belongs to the server after the first colon of its ID, port included."""
    members = {
        (MEMBER, "@x:b:8448"): {"membership": "join"},
        (MEMBER, "@y:b"): {"membership": "invite"},
        (MEMBER, "@z:bb"): {"membership": "join"},
        (MEMBER, "nocolon"): {"membership": "join"},
        (MEMBER, "@w:b"): {"membership": 3},
    }
    assert list(server_memberships(members, "b")) == ["invite"]
    assert list(server_memberships(members, "b:8448")) == ["join"]
    assert server_may_see("joined", ["leave", "join"])
    assert not server_may_see("joined", [])


def test_unknown_state_is_shared() -> None:
    """An event with no known state (an outlier) has no history visibility event."""
    assert event_visible_to_server(None, "b")


def test_filter_redacts_or_withholds() -> None:
    """Hidden events are redacted (keeping the DAG walkable) or left out; visible ones are
    returned as they are, in the order asked."""
    room = RoomBuilder("10", "@alice:a")
    room.bootstrap()
    room.state_event("@alice:a", HISTORY_VISIBILITY, "", {"history_visibility": "joined"})
    secret = room.message("@alice:a", "before bob")
    room.join("@bob:b")
    seen = room.message("@alice:a", "after bob")

    def state_at(event_id: str) -> dict[StateKey, dict[str, Any]]:
        return {
            key: dict(room.event(eid).content) for key, eid in room.state_after(event_id).items()
        }

    asked = [seen, secret]
    assert filter_events_for_server(asked, state_at, "b", redact_hidden=False) == [seen.pdu]
    redacted = filter_events_for_server(asked, state_at, "b", redact_hidden=True)
    assert redacted == [seen.pdu, redact(secret.pdu, secret.room_version)]
    assert redacted[1]["content"] == {}
    assert redacted[1]["prev_events"] == secret.pdu["prev_events"]
    assert filter_events_for_server(asked, state_at, "c", redact_hidden=False) == []
