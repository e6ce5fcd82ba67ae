"""The in-memory form of one PDU, shared by every rule module.

The PDU dictionary is kept as received (or redacted, when its content hash failed),
because hashes and signatures are over that exact shape; the attributes here are only
typed views of it, normalising the differences between event formats (v1–2 pairs
versus v3+ ID lists, top-level versus content `redacts`, v12 room IDs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.matrix.room_versions import RoomVersion

#: A state map key: (event type, state key).
StateKey = tuple[str, str]
#: A state map: (type, state key) → event ID.
StateMap = dict[StateKey, str]

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
REDACTION = "m.room.redaction"
ALIASES = "m.room.aliases"
HISTORY_VISIBILITY = "m.room.history_visibility"


def _ids(refs: Any, pairs: bool) -> tuple[str, ...]:
    """Event IDs from a `prev_events`/`auth_events` list of either format.

    Assumes the PDU was validated (worker.matrix.pdu) so the shape is right.
    """
    if pairs:
        return tuple(ref[0] for ref in refs)
    return tuple(refs)


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    """One validated PDU with its event ID and room version.

    Equality and hashing are by event ID: two `Event`s with the same ID are the same
    event as far as every rule is concerned.
    """

    event_id: str
    room_version: RoomVersion
    pdu: Mapping[str, Any]
    #: True when the PDU's content hash did not match and `pdu` is the redacted form.
    redacted: bool = False
    prev_event_ids: tuple[str, ...] = field(init=False)
    auth_event_ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        pairs = self.room_version.auth_events_are_pairs
        object.__setattr__(self, "prev_event_ids", _ids(self.pdu.get("prev_events", ()), pairs))
        object.__setattr__(self, "auth_event_ids", _ids(self.pdu.get("auth_events", ()), pairs))

    def __hash__(self) -> int:
        return hash(self.event_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} {self.state_key!r}>"

    @property
    def type(self) -> str:
        return str(self.pdu["type"])

    @property
    def state_key(self) -> str | None:
        value = self.pdu.get("state_key")
        return value if isinstance(value, str) else None

    @property
    def is_state(self) -> bool:
        return isinstance(self.pdu.get("state_key"), str)

    @property
    def key(self) -> StateKey:
        """The (type, state key) this state event occupies; only for state events."""
        state_key = self.state_key
        if state_key is None:
            raise ValueError(f"{self.event_id} is not a state event")
        return (self.type, state_key)

    @property
    def sender(self) -> str:
        return str(self.pdu["sender"])

    @property
    def room_id(self) -> str:
        """The room ID; for a v12 create event, derived from its own event ID."""
        room_id = self.pdu.get("room_id")
        if room_id is None and self.room_version.room_id_from_create and self.type == CREATE:
            return "!" + self.event_id[1:]
        return str(room_id)

    @property
    def content(self) -> Mapping[str, Any]:
        content = self.pdu.get("content")
        return content if isinstance(content, Mapping) else {}

    @property
    def depth(self) -> int:
        depth = self.pdu.get("depth", 0)
        return depth if isinstance(depth, int) else 0

    @property
    def origin_server_ts(self) -> int:
        ts = self.pdu.get("origin_server_ts", 0)
        return ts if isinstance(ts, int) else 0

    @property
    def membership(self) -> str | None:
        value = self.content.get("membership")
        return value if isinstance(value, str) else None

    @property
    def redacts(self) -> str | None:
        """The event a redaction targets: under `content` from v11, top level before."""
        if self.room_version.updated_redaction_rules:
            value = self.content.get("redacts")
        else:
            value = self.pdu.get("redacts")
        return value if isinstance(value, str) else None
