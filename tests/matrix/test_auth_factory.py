"""A small factory of dict-built events for the authorization tests (holds no tests).

Auth rules need no hashes or signatures, so events here have made-up IDs; the room's
builder (worker.matrix.builder) is for real, hashed events. v1–v2 events carry their ID
in the PDU and cite events as `[id, {}]` pairs, as their format requires.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from worker.matrix.auth import check_auth
from worker.matrix.events import CREATE, MEMBER, POWER_LEVELS, Event, StateKey
from worker.matrix.room_versions import ROOM_VERSIONS, RoomVersion

ALL_VERSIONS = [str(n) for n in range(1, 13)]


def versions(first: int = 1, last: int = 12) -> list[str]:
    return [str(n) for n in range(first, last + 1)]


def domain(user_id: str) -> str:
    return user_id.partition(":")[2]


class Room:
    """One room's events and current state, built by hand for a test."""

    def __init__(
        self,
        version: str,
        creator: str = "@alice:a",
        *,
        create_content: Mapping[str, Any] | None = None,
    ) -> None:
        self.version: RoomVersion = ROOM_VERSIONS[version]
        self.creator = creator
        self.counter = 0
        self.state: dict[StateKey, Event] = {}
        self.last: Event | None = None
        content: dict[str, Any] = {"room_version": version}
        if not self.version.implicit_room_creator:
            content["creator"] = creator
        if create_content is not None:
            content.update(create_content)
        if self.version.room_id_from_create:
            self.room_id = ""  # derived from the create event's ID below
        else:
            self.room_id = f"!room:{domain(creator)}"
        self.create = self.send(CREATE, creator, content, state_key="")
        if self.version.room_id_from_create:
            self.room_id = self.create.room_id

    def new_id(self, sender: str) -> str:
        self.counter += 1
        if self.version.auth_events_are_pairs:
            return f"${self.counter}:{domain(sender)}"
        digest = hashlib.sha256(f"{self.counter}".encode()).hexdigest()
        return "$" + (digest[:43] if self.version.room_id_from_create else f"e{self.counter}")

    def make(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        prev: list[str] | None = None,
        auth: list[str] | None = None,
        event_id: str | None = None,
        **extra: Any,
    ) -> Event:
        """An event of this room, not yet applied to its state."""
        event_id = event_id or self.new_id(sender)
        if prev is None:
            prev = [self.last.event_id] if self.last is not None else []
        pairs = self.version.auth_events_are_pairs
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content),
            "prev_events": [[p, {}] for p in prev] if pairs else list(prev),
            "auth_events": [[a, {}] for a in auth or []] if pairs else list(auth or []),
            "depth": self.counter,
            "origin_server_ts": 1000 + self.counter,
            "hashes": {"sha256": "unused"},
            "signatures": {},
        }
        if not (self.version.room_id_from_create and event_type == CREATE):
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if pairs:
            pdu["event_id"] = event_id
        pdu.update(extra)
        return Event(event_id=event_id, room_version=self.version, pdu=pdu)

    def send(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        **kwargs: Any,
    ) -> Event:
        """Make an event, check it against the current state, and apply it."""
        event = self.make(event_type, sender, content, state_key=state_key, **kwargs)
        check_auth(event, self.state)
        self.apply(event)
        return event

    def apply(self, event: Event) -> None:
        if event.is_state:
            self.state[event.key] = event
        self.last = event

    def check(self, event: Event) -> None:
        check_auth(event, self.state)

    # Shorthands for the usual steps of a test room.

    def member(
        self, sender: str, membership: str, target: str | None = None, **content: Any
    ) -> Event:
        return self.make(
            MEMBER, sender, {"membership": membership, **content}, state_key=target or sender
        )

    def join(self, user: str) -> Event:
        event = self.member(user, "join")
        self.check(event)
        self.apply(event)
        return event

    def force(self, user: str, membership: str, sender: str | None = None) -> Event:
        """Put a membership into the state without checking it (for arranging a test)."""
        event = self.member(sender or user, membership, user)
        self.apply(event)
        return event

    def power(self, sender: str | None = None, **content: Any) -> Event:
        return self.make(POWER_LEVELS, sender or self.creator, content, state_key="")

    def set_power(self, **content: Any) -> Event:
        event = self.power(**content)
        self.apply(event)
        return event

    def set_state(self, event_type: str, content: Mapping[str, Any], state_key: str = "") -> Event:
        event = self.make(event_type, self.creator, content, state_key=state_key)
        self.apply(event)
        return event


def started(version: str, *users: str, join_rule: str = "public", **power: Any) -> Room:
    """A room whose creator has joined, with the given join rule, power levels and joined users.

    Without power level arguments the room has no power levels event at all.
    """
    room = Room(version)
    room.join(room.creator)
    room.set_state("m.room.join_rules", {"join_rule": join_rule})
    if power:
        room.set_power(**power)
    for user in users:
        room.force(user, "join")
    return room
