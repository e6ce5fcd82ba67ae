"""The in-memory form of one PDU, shared by every rule module.

The PDU dictionary is kept as received (or redacted, when its content hash failed),
because hashes and signatures are over that exact shape; the attributes here are only
typed views of it, normalising the differences between event formats (v1–2 pairs
versus v3+ ID lists, top-level versus content `redacts`, v12 room IDs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

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


class Event:
    """One validated PDU with its event ID and room version.

    Equality and hashing are by event ID: two `Event`s with the same ID are the same
    event as far as every rule is concerned.

    The fields every rule reads (type, state key, sender, room ID, content) are taken
    from the PDU once, when the event is made: the auth rules and the pipeline read
    them some forty times an event, and a plain attribute costs a fraction of a lookup
    in the PDU with its type check.

    Its attributes are `Final`: mypy refuses any assignment after `__init__`. It is a
    plain class with slots rather than a frozen dataclass because making one costs a
    third as much: a frozen dataclass sets each of its eleven fields through
    `object.__setattr__`, the costliest part of making an event (one per input).
    """

    __slots__ = (
        "auth_event_ids",
        "content",
        "event_id",
        "pdu",
        "prev_event_ids",
        "redacted",
        "room_id",
        "room_version",
        "sender",
        "state_key",
        "type",
    )

    def __init__(
        self,
        event_id: str,
        room_version: RoomVersion,
        pdu: Mapping[str, Any],
        redacted: bool = False,
    ) -> None:
        self.event_id: Final = event_id
        self.room_version: Final = room_version
        self.pdu: Final = pdu
        #: True when the PDU's content hash did not match and `pdu` is the redacted form.
        self.redacted: Final = redacted
        pairs = room_version.auth_events_are_pairs
        self.prev_event_ids: Final = _ids(pdu.get("prev_events", ()), pairs)
        self.auth_event_ids: Final = _ids(pdu.get("auth_events", ()), pairs)
        event_type = str(pdu["type"])
        self.type: Final = event_type
        state_key = pdu.get("state_key")
        #: The state key; None for an event that is not a state event (no string state
        #: key).
        self.state_key: Final = state_key if isinstance(state_key, str) else None
        self.sender: Final = str(pdu["sender"])
        room_id = pdu.get("room_id")
        #: The room ID; for a v12 create event, derived from its own event ID.
        self.room_id: Final = (
            "!" + event_id[1:]
            if room_id is None and room_version.room_id_from_create and event_type == CREATE
            else str(room_id)
        )
        content = pdu.get("content")
        #: The content, or an empty map when the PDU's is not a map.
        self.content: Final[Mapping[str, Any]] = (
            content if type(content) is dict or isinstance(content, Mapping) else {}
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
