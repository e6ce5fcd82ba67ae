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

    The fields every rule reads (type, state key, sender, room ID, content) are taken
    from the PDU once, when the event is made: the auth rules and the pipeline read
    them some forty times an event, and a plain attribute costs a fraction of a lookup
    in the PDU with its type check.
    """

    event_id: str
    room_version: RoomVersion
    pdu: Mapping[str, Any]
    #: True when the PDU's content hash did not match and `pdu` is the redacted form.
    redacted: bool = False
    prev_event_ids: tuple[str, ...] = field(init=False)
    auth_event_ids: tuple[str, ...] = field(init=False)
    type: str = field(init=False)
    #: The state key; None for an event that is not a state event (no string state key).
    state_key: str | None = field(init=False)
    sender: str = field(init=False)
    #: The room ID; for a v12 create event, derived from its own event ID.
    room_id: str = field(init=False)
    #: The content, or an empty map when the PDU's is not a map.
    content: Mapping[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        pdu = self.pdu
        pairs = self.room_version.auth_events_are_pairs
        set_field = object.__setattr__
        set_field(self, "prev_event_ids", _ids(pdu.get("prev_events", ()), pairs))
        set_field(self, "auth_event_ids", _ids(pdu.get("auth_events", ()), pairs))
        event_type = str(pdu["type"])
        set_field(self, "type", event_type)
        state_key = pdu.get("state_key")
        set_field(self, "state_key", state_key if isinstance(state_key, str) else None)
        set_field(self, "sender", str(pdu["sender"]))
        room_id = pdu.get("room_id")
        if room_id is None and self.room_version.room_id_from_create and event_type == CREATE:
            set_field(self, "room_id", "!" + self.event_id[1:])
        else:
            set_field(self, "room_id", str(room_id))
        content = pdu.get("content")
        set_field(
            self,
            "content",
            content if type(content) is dict or isinstance(content, Mapping) else {},
        )

    def __hash__(self) -> int:
        return hash(self.event_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} {self.state_key!r}>"

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def key(self) -> StateKey:
        """The (type, state key) this state event occupies; only for state events."""
        state_key = self.state_key
        if state_key is None:
            raise ValueError(f"{self.event_id} is not a state event")
        return (self.type, state_key)

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
