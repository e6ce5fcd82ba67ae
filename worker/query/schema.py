"""The query replies, written once: what the service sends and what the client reads.

Each reply is a dataclass with `to_wire()` (the msgpack-ready map the service answers
with) and `from_wire()` (the typed value the client returns), so the field names of
the contract (docs/queries.md, "Every query") live in this one module. Errors travel
as `worker.errors.RoomserverError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat, starmap
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Self

import msgpack

from worker.collector import collector_paused

Wire = dict[str, Any]

#: The micro service's name: `$SRV.INFO.roomserver` lists every worker's instance.
SERVICE_NAME: Final = "roomserver"
#: Reply header naming the service instance (micro ID) that answered, so a client can
#: say which worker it heard from (and ask `$SRV.INFO.roomserver.<id>` for its storage).
WORKER_HEADER: Final = "Roomserver-Worker"
#: Request header: the client reads states in the grouped form (docs/queries.md,
#: "The grouped state form"); any other value, or none, gets the contract's triples.
ACCEPT_STATE_HEADER: Final = "Roomserver-Accept-State"
GROUPED: Final = "grouped"
#: The reply field that carries a state in the grouped form, instead of `state`.
GROUPED_FIELD: Final = "state_by_type"
#: Reply field (grouped replies of a whole current state): names that state, for
#: asking again with the request header IF_STATE_HEADER.
TAG_FIELD: Final = "state_tag"
#: Request header: the tag of the whole current state the client already has; a reply
#: with UNCHANGED_FIELD true (and no state) says it is still the room's current state.
IF_STATE_HEADER: Final = "Roomserver-If-State"
UNCHANGED_FIELD: Final = "state_unchanged"
#: States of at least this many entries make their StateEntry values with the
#: collector paused (about the size of a reply the client decodes so: LARGE_REPLY).
LARGE_STATE: Final = 1_000


def accepts_grouped(headers: Mapping[str, str] | None) -> bool:
    """Whether a request's headers ask for states in the grouped form."""
    value = (headers or {}).get(ACCEPT_STATE_HEADER)
    return value is not None and value.strip() == GROUPED


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


def grouped_state(entries: Iterable[Sequence[str]]) -> dict[str, list[list[str]]]:
    """Triples in the grouped form: type → [state keys, event IDs], two arrays in step.

    Each type is written once instead of once per entry (a 10,000-member room's state
    loses 17% of its bytes), and the reader makes no array per entry."""
    groups: dict[str, list[list[str]]] = {}
    for type_, state_key, event_id in entries:
        group = groups.get(type_)
        if group is None:
            group = groups[type_] = [[], []]
        group[0].append(state_key)
        group[1].append(event_id)
    return groups


def grouped_entries(groups: Mapping[str, Sequence[Sequence[str]]]) -> list[StateEntry]:
    """StateEntry values from the grouped form (ValueError when a type's two arrays
    differ in length)."""
    # One pass in C: each type string is shared by its entries, and every entry is
    # made by tuple.__new__ from zip's triple, with no Python code per entry. starmap
    # hands tuple.__new__ each (StateEntry, triple) pair as its argument tuple as it
    # is, where map would pack a new one for every call (for 10,000 entries, 10,000
    # fewer temporary tuples: 4 % fewer instructions to decode the reply and free it).
    triples = chain.from_iterable(
        zip(repeat(type_, len(state_keys)), state_keys, event_ids, strict=True)
        for type_, (state_keys, event_ids) in groups.items()
    )
    return list(starmap(tuple.__new__, zip(repeat(StateEntry), triples)))  # noqa: RUF058


def _put_state(
    wire: Wire, entries: Sequence[StateEntry], packed: RawMsgpack | None, grouped: bool
) -> None:
    """A state into a reply map: as triples under `state`, or grouped under
    `state_by_type`; `packed` is either, already encoded (the service's cache)."""
    if grouped:
        wire[GROUPED_FIELD] = packed if packed is not None else grouped_state(entries)
    else:
        # msgpack writes a tuple as an array: the entries go out as they are.
        wire["state"] = packed if packed is not None else entries


def _read_state(wire: Mapping[str, Any]) -> list[StateEntry] | None:
    """A reply's state in either form; None when it carries none."""
    groups = wire.get(GROUPED_FIELD)
    if groups is not None:
        return grouped_entries(groups)
    state = wire.get("state")
    return state_entries(state) if state is not None else None


#: A state in the grouped form's columns: type → (state keys, event IDs), in step.
Columns = Mapping[str, tuple[Sequence[str], Sequence[str]]]


def state_columns(groups: Mapping[str, Sequence[Sequence[str]]]) -> Columns:
    """The grouped form as decoded, checked and kept as it is: each type's two arrays
    (ValueError when one is not a pair, or its two arrays differ in length)."""
    columns: dict[str, tuple[Sequence[str], Sequence[str]]] = {}
    for type_, group in groups.items():
        if len(group) != 2 or len(group[0]) != len(group[1]):
            raise ValueError(f"the state of type {type_!r} is not two arrays in step")
        columns[type_] = (group[0], group[1])
    return MappingProxyType(columns)


def _iter_columns(columns: Columns) -> Iterator[StateEntry]:
    """Each entry of `columns` as a StateEntry, made when it is reached (grouped_entries,
    one at a time)."""
    triples = chain.from_iterable(
        zip(repeat(type_, len(state_keys)), state_keys, event_ids, strict=True)
        for type_, (state_keys, event_ids) in columns.items()
    )
    return starmap(tuple.__new__, zip(repeat(StateEntry), triples))  # noqa: RUF058


class State:
    """Reply to `state`: a room's state, whole or in part, now or at an event.

    The client keeps the state as the grouped form brings it (`by_type`: per type, its
    state keys and event IDs in step, the decoded arrays themselves), and makes no
    object per entry until asked: `entries` (a list of StateEntry, made on its first
    use and kept), `iter_entries()` (each made as it is reached), `as_map()`, `get()`.
    For a 10,000-entry state that is 2.5 times fewer instructions to decode and free
    than 10,000 StateEntry values (docs/queries.md, "Round eight"). A state read from
    the contract's triples, or built from entries, keeps its entries as given.
    """

    __slots__ = (
        "_columns",
        "_entries",
        "_len",
        "at",
        "event_id",
        "grouped",
        "packed",
        "room_id",
        "tag",
    )

    room_id: str
    #: The event the state is at; None for the room's current state.
    event_id: str | None
    #: `before` or `after` the event; None for the current state.
    at: str | None
    #: Service side: the entries already encoded (sent instead of `entries`).
    packed: RawMsgpack | None
    #: Service side: send the grouped form (the request asked for it).
    grouped: bool
    #: Service side: the whole current state's tag, sent with it (grouped only).
    tag: str | None

    def __init__(
        self,
        room_id: str,
        event_id: str | None,
        at: str | None,
        entries: Sequence[StateEntry] | None = None,
        packed: RawMsgpack | None = None,
        grouped: bool = False,
        tag: str | None = None,
        *,
        columns: Columns | None = None,
    ) -> None:
        """The state is either `entries` or `columns` (the grouped form's arrays, as
        `state_columns` checked them), not both."""
        if (entries is None) == (columns is None):
            raise TypeError("a State has either entries or columns")
        self.room_id = room_id
        self.event_id = event_id
        self.at = at
        self.packed = packed
        self.grouped = grouped
        self.tag = tag
        self._entries: list[StateEntry] | None = None
        self._columns: Columns | None = columns
        if entries is not None:
            self._entries = entries if isinstance(entries, list) else list(entries)
            self._len = len(self._entries)
        else:
            assert columns is not None
            self._len = sum(len(state_keys) for state_keys, _ in columns.values())

    @property
    def entries(self) -> list[StateEntry]:
        """Every entry as a StateEntry, in a list of the caller's own (made from the
        columns on first use, then kept)."""
        if self._entries is None:
            # Made as a large reply is decoded: with the collector paused, and moved
            # out of the young generations untraversed (worker.collector).
            with collector_paused(self._len >= LARGE_STATE):
                self._entries = list(self.iter_entries())
        return self._entries

    @property
    def by_type(self) -> Columns:
        """type → (state keys, event IDs), two sequences in step (read-only)."""
        if self._columns is not None:
            return self._columns
        columns: dict[str, tuple[Sequence[str], Sequence[str]]] = {
            type_: (keys, ids) for type_, (keys, ids) in grouped_state(self.entries).items()
        }
        return MappingProxyType(columns)

    def iter_entries(self) -> Iterator[StateEntry]:
        """Each entry as a StateEntry, made as it is reached (none is kept)."""
        if self._entries is not None or self._columns is None:
            return iter(self.entries)
        return _iter_columns(self._columns)

    def __len__(self) -> int:
        """How many entries the state has."""
        return self._len

    def get(self, type_: str, state_key: str) -> str | None:
        """The event ID at (type, state key); None when the state has no such entry.
        A scan of the type's state keys (in C): for many look-ups, use `as_map()`."""
        if self._columns is None:
            return self.as_map().get((type_, state_key))
        group = self._columns.get(type_)
        if group is None:
            return None
        state_keys, event_ids = group
        try:
            return event_ids[state_keys.index(state_key)]
        except ValueError:
            return None

    def as_map(self) -> dict[tuple[str, str], str]:
        """(type, state key) → event ID."""
        if self._entries is not None or self._columns is None:
            return {(e.type, e.state_key): e.event_id for e in self.entries}
        return dict(
            chain.from_iterable(
                zip(
                    zip(repeat(type_, len(state_keys)), state_keys, strict=True),
                    event_ids,
                    strict=True,
                )
                for type_, (state_keys, event_ids) in self._columns.items()
            )
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (self.room_id, self.event_id, self.at, self.entries) == (
            other.room_id,
            other.event_id,
            other.at,
            other.entries,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"State(room_id={self.room_id!r}, event_id={self.event_id!r}, at={self.at!r}, "
            f"entries={self.entries!r})"
        )

    def to_wire(self) -> Wire:
        wire: Wire = {"room_id": self.room_id}
        if self.event_id is not None:
            wire["event_id"] = self.event_id
            wire["at"] = self.at
        _put_state(wire, self.entries, self.packed, self.grouped)
        if self.tag is not None:
            wire[TAG_FIELD] = self.tag
        return wire

    @staticmethod
    def unchanged(room_id: str, tag: str) -> Wire:
        """The reply to a request whose IF_STATE_HEADER names the current state."""
        return {"room_id": room_id, UNCHANGED_FIELD: True, TAG_FIELD: tag}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        """The reply's state: the grouped form's arrays kept as they are, or the
        triples as StateEntry values."""
        room_id, event_id, at = wire["room_id"], wire.get("event_id"), wire.get("at")
        groups = wire.get(GROUPED_FIELD)
        if groups is not None:
            return cls(room_id, event_id, at, columns=state_columns(groups))
        return cls(room_id, event_id, at, state_entries(wire["state"]))


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
    #: Service side: send the grouped form (the request asked for it).
    grouped: bool = field(default=False, repr=False, compare=False)

    def to_wire(self) -> Wire:
        wire: Wire = {
            "room_id": self.room_id,
            "room_version": self.room_version,
            "depth": self.depth,
            "latest_event_ids": list(self.latest_event_ids),
        }
        if self.state is not None or self.packed is not None:
            _put_state(wire, self.state or [], self.packed, self.grouped)
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(
            wire["room_id"],
            wire["room_version"],
            wire["depth"],
            list(wire["latest_event_ids"]),
            _read_state(wire),
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


# -- what the rest of a homeserver asks (docs/queries.md, "Federation queries") ---------------


@dataclass(frozen=True, slots=True)
class ServerAllowed:
    """Reply to `server_allowed`: may the server take part in the room (its ACL)."""

    room_id: str
    server_name: str
    allowed: bool
    #: The `m.room.server_acl` event of the current state; None when there is none.
    acl_event_id: str | None

    def to_wire(self) -> Wire:
        return {
            "room_id": self.room_id,
            "server_name": self.server_name,
            "allowed": self.allowed,
            "acl_event_id": self.acl_event_id,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(
            wire["room_id"], wire["server_name"], bool(wire["allowed"]), wire.get("acl_event_id")
        )


@dataclass(frozen=True, slots=True)
class VisibleEvents:
    """Reply to `visible_to_server`."""

    room_id: str
    server_name: str
    #: PDUs in the order asked: in full when visible; redacted when hidden and the
    #: request asked for redaction (else hidden events are left out).
    events: list[dict[str, Any]]
    #: IDs the server may see in full.
    visible: list[str]
    #: IDs it may not (sent redacted, or withheld).
    hidden: list[str]
    #: IDs not served: not stored in this room, or rejected.
    missing: list[str]

    def to_wire(self) -> Wire:
        return {
            "room_id": self.room_id,
            "server_name": self.server_name,
            "events": self.events,
            "visible": self.visible,
            "hidden": self.hidden,
            "missing": self.missing,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(
            wire["room_id"],
            wire["server_name"],
            list(wire["events"]),
            list(wire["visible"]),
            list(wire["hidden"]),
            list(wire["missing"]),
        )


@dataclass(frozen=True, slots=True)
class EventList:
    """Reply to `missing_events` and `backfill`: the PDUs, in the endpoint's order."""

    room_id: str
    events: list[dict[str, Any]]
    #: The events' IDs, in the same order (PDUs of room versions 3+ carry none).
    event_ids: list[str]

    def to_wire(self) -> Wire:
        return {"room_id": self.room_id, "events": self.events, "event_ids": self.event_ids}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(wire["room_id"], list(wire["events"]), list(wire["event_ids"]))


@dataclass(frozen=True, slots=True)
class StateAndAuthChain:
    """Reply to `state_and_auth_chain`: what `/state`, `/state_ids` and `/send_join` send."""

    room_id: str
    #: The event whose state before it this is; None for a prospective event.
    event_id: str | None
    #: The prev events of the prospective event; None with `event_id`.
    prev_event_ids: list[str] | None
    state_event_ids: list[str]
    #: The union of the state events' auth chains (without the state events, unless one
    #: is in another's chain).
    auth_chain_ids: list[str]
    #: The PDUs, unless only IDs were asked for.
    state: list[dict[str, Any]] | None
    auth_chain: list[dict[str, Any]] | None

    def to_wire(self) -> Wire:
        wire: Wire = {"room_id": self.room_id}
        if self.event_id is not None:
            wire["event_id"] = self.event_id
        if self.prev_event_ids is not None:
            wire["prev_event_ids"] = self.prev_event_ids
        wire["state_event_ids"] = self.state_event_ids
        wire["auth_chain_ids"] = self.auth_chain_ids
        if self.state is not None:
            wire["state"] = self.state
        if self.auth_chain is not None:
            wire["auth_chain"] = self.auth_chain
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        prevs = wire.get("prev_event_ids")
        state = wire.get("state")
        chain = wire.get("auth_chain")
        return cls(
            wire["room_id"],
            wire.get("event_id"),
            list(prevs) if prevs is not None else None,
            list(wire["state_event_ids"]),
            list(wire["auth_chain_ids"]),
            list(state) if state is not None else None,
            list(chain) if chain is not None else None,
        )


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """Reply to `prepare_event`: the graph fields of a new event."""

    room_id: str
    room_version: str
    prev_event_ids: list[str]
    depth: int
    auth_event_ids: list[str]

    def to_wire(self) -> Wire:
        return {
            "room_id": self.room_id,
            "room_version": self.room_version,
            "prev_event_ids": self.prev_event_ids,
            "depth": self.depth,
            "auth_event_ids": self.auth_event_ids,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(
            wire["room_id"],
            wire["room_version"],
            list(wire["prev_event_ids"]),
            wire["depth"],
            list(wire["auth_event_ids"]),
        )


@dataclass(frozen=True, slots=True)
class RestrictedJoin:
    """Reply to `restricted_join`."""

    room_id: str
    user_id: str
    #: not_restricted, allowed, unable_to_authorise, unable_to_grant or forbidden.
    outcome: str
    #: True for not_restricted and allowed: the allow list does not stand in the way
    #: (the join event still goes through the auth rules).
    allowed: bool
    #: With `allowed`: the local user to name in `join_authorised_via_users_server`.
    authoriser: str | None
    #: The Matrix error code a refusal carries (M_FORBIDDEN, ...); None when allowed.
    errcode: str | None

    def to_wire(self) -> Wire:
        return {
            "room_id": self.room_id,
            "user_id": self.user_id,
            "outcome": self.outcome,
            "allowed": self.allowed,
            "authoriser": self.authoriser,
            "errcode": self.errcode,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(
            wire["room_id"],
            wire["user_id"],
            wire["outcome"],
            bool(wire["allowed"]),
            wire.get("authoriser"),
            wire.get("errcode"),
        )


@dataclass(frozen=True, slots=True)
class RoomsForUser:
    """Reply to `rooms_for_user`: sorted room IDs."""

    user_id: str
    membership: str
    room_ids: list[str]

    def to_wire(self) -> Wire:
        return {"user_id": self.user_id, "membership": self.membership, "room_ids": self.room_ids}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Self:
        return cls(wire["user_id"], wire["membership"], list(wire["room_ids"]))
