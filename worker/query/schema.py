"""The query replies, written once: what the service sends and what the client reads.

Each reply is a dataclass with `to_wire()` (the msgpack-ready map the service answers
with) and `from_wire()` (the typed value the client returns), so the field names of
the contract (docs/queries.md, "Every query") live in this one module. Errors travel
as `worker.errors.RoomserverError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Self

import msgpack

Wire = dict[str, Any]

#: The micro service's name: `$SRV.INFO.roomserver` lists every worker's instance.
SERVICE_NAME: Final = "roomserver"
#: Reply header naming the service instance (micro ID) that answered, so a client can
#: say which worker it heard from (and ask `$SRV.INFO.roomserver.<id>` for its storage).
WORKER_HEADER: Final = "Roomserver-Worker"


class RawMsgpack(bytes):
    """A value already encoded as msgpack, spliced into a reply as it is (the
    service's cache of whole states)."""


def pack_reply(reply: Mapping[str, Any]) -> bytes:
    """Encode a reply map whose top-level values may be RawMsgpack."""
    packer = msgpack.Packer(use_bin_type=True)
    parts: list[bytes] = [packer.pack_map_header(len(reply))]
    for key, value in reply.items():
        parts.append(packer.pack(key))
        parts.append(value if isinstance(value, RawMsgpack) else packer.pack(value))
    return b"".join(parts)


class StateEntry(NamedTuple):
    type: str
    state_key: str
    event_id: str


def state_entries(raw: Iterable[Sequence[str]]) -> list[StateEntry]:
    """[type, state_key, event_id] triples as StateEntry values."""
    # tuple.__new__ straight from each decoded [type, state_key, event_id]: half the
    # cost of StateEntry(...), which matters when a room's state has 10,000 entries.
    make = tuple.__new__
    return [make(StateEntry, entry) for entry in raw]


def _state_wire(entries: Sequence[StateEntry], packed: RawMsgpack | None) -> object:
    # msgpack writes a tuple as an array: the entries go out as they are.
    return packed if packed is not None else entries


@dataclass(frozen=True, slots=True)
class State:
    """Reply to `state`."""

    room_id: str
    #: The event the state is at; None for the room's current state.
    event_id: str | None
    #: `before` or `after` the event; None for the current state.
    at: str | None
    entries: list[StateEntry]
    #: Service side: the entries already encoded (sent instead of `entries`).
    packed: RawMsgpack | None = field(default=None, repr=False, compare=False)

    def as_map(self) -> dict[tuple[str, str], str]:
        """(type, state key) → event ID."""
        return {(e.type, e.state_key): e.event_id for e in self.entries}

    def to_wire(self) -> Wire:
        wire: Wire = {"room_id": self.room_id}
        if self.event_id is not None:
            wire["event_id"] = self.event_id
            wire["at"] = self.at
        wire["state"] = _state_wire(self.entries, self.packed)
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(
            wire["room_id"], wire.get("event_id"), wire.get("at"), state_entries(wire["state"])
        )


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One stored event, in the reply to `events`."""

    event_id: str
    room_id: str
    #: The PDU as stored (redacted once a redaction applied).
    event: dict[str, Any]
    #: accepted, rejected, soft_failed or outlier.
    status: str
    #: Why the event was rejected or soft-failed (None when accepted).
    reason: str | None
    redacted_by: str | None = None

    def to_wire(self) -> Wire:
        return {
            "event_id": self.event_id,
            "room_id": self.room_id,
            "event": self.event,
            "status": self.status,
            "reason": self.reason,
            "redacted_by": self.redacted_by,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(
            wire["event_id"],
            wire["room_id"],
            wire["event"],
            wire["status"],
            wire.get("reason"),
            wire.get("redacted_by"),
        )


@dataclass(frozen=True, slots=True)
class Events:
    """Reply to `events`."""

    events: list[EventInfo]
    #: Asked-for IDs the worker does not have.
    missing: list[str]

    def to_wire(self) -> Wire:
        return {"events": [e.to_wire() for e in self.events], "missing": list(self.missing)}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls([EventInfo.from_wire(e) for e in wire["events"]], list(wire["missing"]))


@dataclass(frozen=True, slots=True)
class Latest:
    """Reply to `latest`."""

    room_id: str
    room_version: str
    depth: int
    latest_event_ids: list[str]
    #: The current state, when asked for.
    state: list[StateEntry] | None
    #: Service side: the state already encoded (sent instead of `state`).
    packed: RawMsgpack | None = field(default=None, repr=False, compare=False)

    def to_wire(self) -> Wire:
        wire: Wire = {
            "room_id": self.room_id,
            "room_version": self.room_version,
            "depth": self.depth,
            "latest_event_ids": list(self.latest_event_ids),
        }
        if self.state is not None or self.packed is not None:
            wire["state"] = _state_wire(self.state or [], self.packed)
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        state = wire.get("state")
        return cls(
            wire["room_id"],
            wire["room_version"],
            wire["depth"],
            list(wire["latest_event_ids"]),
            state_entries(state) if state is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Membership:
    """Reply to `membership` with a `user_id`."""

    room_id: str
    user_id: str
    #: join, invite, leave, ban or knock; None when the user has no membership event.
    membership: str | None
    event_id: str | None

    def to_wire(self) -> Wire:
        return {
            "room_id": self.room_id,
            "user_id": self.user_id,
            "membership": self.membership,
            "event_id": self.event_id,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(wire["room_id"], wire["user_id"], wire.get("membership"), wire.get("event_id"))


@dataclass(frozen=True, slots=True)
class Members:
    """Reply to `membership` without a `user_id`: the users with one membership."""

    room_id: str
    membership: str
    #: Sorted user IDs.
    members: list[str]

    def to_wire(self) -> Wire:
        return {"room_id": self.room_id, "membership": self.membership, "members": self.members}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(wire["room_id"], wire["membership"], list(wire["members"]))


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """One room, in the reply to `rooms`."""

    room_id: str
    room_version: str
    events: int

    def to_wire(self) -> Wire:
        return {"room_id": self.room_id, "room_version": self.room_version, "events": self.events}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(wire["room_id"], wire["room_version"], wire["events"])


@dataclass(frozen=True, slots=True)
class Rooms:
    """Reply to `rooms`, sorted by room ID."""

    rooms: list[RoomSummary]

    def to_wire(self) -> Wire:
        return {"rooms": [r.to_wire() for r in self.rooms]}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls([RoomSummary.from_wire(r) for r in wire["rooms"]])


@dataclass(frozen=True, slots=True)
class AuthChain:
    """Reply to `auth_chain`: the sorted union of the asked-for events' auth chains."""

    event_ids: list[str]

    def to_wire(self) -> Wire:
        return {"event_ids": self.event_ids}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(list(wire["event_ids"]))


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """One event waiting for missing prev events, in the reply to `held`."""

    event_id: str
    room_id: str
    missing_prev_event_ids: list[str]
    #: Missing prev events that have still not arrived.
    waiting_for: list[str]
    held_since_ms: int
    stream_sequence: int

    def to_wire(self) -> Wire:
        return {
            "event_id": self.event_id,
            "room_id": self.room_id,
            "missing_prev_event_ids": self.missing_prev_event_ids,
            "waiting_for": self.waiting_for,
            "held_since_ms": self.held_since_ms,
            "stream_sequence": self.stream_sequence,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(
            wire["event_id"],
            wire["room_id"],
            list(wire["missing_prev_event_ids"]),
            list(wire["waiting_for"]),
            wire["held_since_ms"],
            wire["stream_sequence"],
        )


@dataclass(frozen=True, slots=True)
class Held:
    """Reply to `held`, oldest first."""

    held: list[HeldEvent]

    def to_wire(self) -> Wire:
        return {"held": [h.to_wire() for h in self.held]}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls([HeldEvent.from_wire(h) for h in wire["held"]])


@dataclass(frozen=True, slots=True)
class Retried:
    """Reply to `<prefix>.admin.retry`: a parked room's waiting inputs processed."""

    room_id: str
    processed: int
    #: Still parked: an input failed again (`error` says how).
    parked: bool
    error: str | None

    def to_wire(self) -> Wire:
        return {
            "room_id": self.room_id,
            "processed": self.processed,
            "parked": self.parked,
            "error": self.error,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(wire["room_id"], wire["processed"], bool(wire["parked"]), wire.get("error"))
