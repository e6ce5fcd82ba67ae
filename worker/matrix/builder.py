"""Building valid PDUs for tests, benchmarks and the `roomserver publish` demo.

A `RoomBuilder` plays the origin server of one room: it fills in everything a receiver
checks (depth, prev and auth events, hashes, event IDs of the room version, v12 room IDs)
so that hand-written scenarios only say what matters to them: who sends what, and, for
forks, on which events and which state.

Signatures are placeholders: the worker does not verify them (the publisher does), and a
real key would make this module depend on a crypto library for nothing.

Each built event records the state after it, so an event can be built on any earlier event
(`prev_events=[...]`) with that event's state, or on any state a test supplies (`state=`),
which is how forks are made. Auth events are always chosen from the state the event is
built on, by the spec's selection rules (`worker.matrix.auth.auth_types_for_event`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

from worker.matrix.auth import auth_types_for_event
from worker.matrix.canonical_json import encode_canonical_json
from worker.matrix.events import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    REDACTION,
    Event,
    StateKey,
    StateMap,
)
from worker.matrix.hashes import (
    add_content_hash,
    compute_event_id,
    encode_base64,
    reference_hash,
)
from worker.matrix.room_versions import RoomVersion, get_room_version

#: Placeholder signature: 64 zero bytes, the length of an ed25519 signature.
DUMMY_SIGNATURE = encode_base64(bytes(64))
DEFAULT_START_TS = 1_700_000_000_000


class BuildOptions(TypedDict, total=False):
    """Optional overrides accepted by every building method."""

    #: Parents of the event; default: the builder's forward extremities.
    prev_events: Sequence[str]
    #: State the event is built on (auth events are chosen from it); default: the state
    #: after the single given prev event, otherwise the builder's current state.
    state: Mapping[StateKey, str]
    #: Use exactly these auth events instead of selecting them.
    auth_events: Sequence[str]
    origin_server_ts: int
    depth: int
    #: Extra top-level keys (for malformed or unusual events in tests).
    extra: Mapping[str, Any]


def server_name(user_id: str) -> str:
    """The server part of a user ID (everything after the first colon)."""
    _, _, domain = user_id.partition(":")
    return domain or "localhost"


class RoomBuilder:
    """Builds the events of one room, one at a time, deterministically.

    `origin_server_ts` starts at `start_ts` and grows by `ts_step` per event, so the same
    script always yields the same event IDs. `keep_history=False` keeps only the current
    state instead of the state after every event (for very large benchmark rooms); building
    on an older event then needs an explicit `state=`.
    """

    def __init__(
        self,
        room_version: RoomVersion | str,
        creator: str,
        *,
        room_id: str | None = None,
        start_ts: int = DEFAULT_START_TS,
        ts_step: int = 1_000,
        key_id: str = "ed25519:dummy",
        keep_history: bool = True,
    ) -> None:
        self.room_version = (
            room_version
            if isinstance(room_version, RoomVersion)
            else get_room_version(room_version)
        )
        self.creator = creator
        self.key_id = key_id
        self._keep_history = keep_history
        self._next_ts = start_ts
        self._ts_step = ts_step
        if room_id is not None and self.room_version.room_id_from_create:
            raise ValueError("from room version 12 the room ID is derived from the create event")
        if room_id is None and not self.room_version.room_id_from_create:
            seed = hashlib.sha256(f"{creator}\x00{start_ts}".encode()).digest()
            room_id = f"!{encode_base64(seed, url_safe=True)[:18]}:{server_name(creator)}"
        self._room_id = room_id
        self._events: dict[str, Event] = {}
        self._state_after: dict[str, StateMap] = {}
        self._extremities: list[str] = []
        self._current_state: StateMap = {}

    # -- what has been built ---------------------------------------------------------

    @property
    def room_id(self) -> str:
        if self._room_id is None:
            raise ValueError("the room has no ID until its m.room.create event is built")
        return self._room_id

    @property
    def events(self) -> list[Event]:
        """Every built event, in build order."""
        return list(self._events.values())

    @property
    def pdus(self) -> list[dict[str, Any]]:
        """The raw PDU dicts of every built event, in build order."""
        return [dict(event.pdu) for event in self._events.values()]

    @property
    def extremities(self) -> list[str]:
        """Built events that no built event names as a prev event yet."""
        return list(self._extremities)

    @property
    def current_state(self) -> StateMap:
        """The state after the most recently built event."""
        return dict(self._current_state)

    def event(self, event_id: str) -> Event:
        return self._events[event_id]

    def state_after(self, event_id: str) -> StateMap:
        """The state after a built event (as the builder saw it: no auth checks)."""
        if event_id not in self._state_after:
            raise KeyError(f"no state is kept for {event_id} (keep_history=False?)")
        return dict(self._state_after[event_id])

    # -- the general case ----------------------------------------------------------

    def build(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        """Build one event; every other method is a shorthand for this."""
        version = self.room_version
        is_create = event_type == CREATE and state_key == ""
        explicit_prev = options.get("prev_events")
        prev_ids = list(explicit_prev) if explicit_prev is not None else list(self._extremities)
        state_before = self._state_before(prev_ids, explicit_prev is not None, options)

        explicit_auth = options.get("auth_events")
        if explicit_auth is not None:
            auth_ids = list(explicit_auth)
        else:
            keys = auth_types_for_event(version, event_type, state_key, sender, content)
            auth_ids = [state_before[key] for key in sorted(keys) if key in state_before]

        depth = options.get("depth")
        if depth is None:
            depth = 1 + max(
                (self._events[p].depth for p in prev_ids if p in self._events), default=0
            )
        ts = options.get("origin_server_ts")
        if ts is None:
            ts = self._next_ts
            self._next_ts += self._ts_step

        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content),
            "depth": depth,
            "origin_server_ts": ts,
            "prev_events": self._refs(prev_ids),
            "auth_events": self._refs(auth_ids),
        }
        if not (is_create and version.room_id_from_create):
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        pdu.update(options.get("extra", {}))
        if version.auth_events_are_pairs and "event_id" not in pdu:
            pdu["event_id"] = self._legacy_event_id(pdu, sender)
        add_content_hash(pdu, version)
        pdu["signatures"] = {server_name(sender): {self.key_id: DUMMY_SIGNATURE}}
        event = Event(compute_event_id(pdu, version), version, pdu)
        self._record(event, prev_ids, state_before)
        if is_create and self._room_id is None:
            self._room_id = event.room_id
        return event

    def _state_before(
        self, prev_ids: list[str], explicit_prev: bool, options: BuildOptions
    ) -> StateMap:
        state = options.get("state")
        if state is not None:
            return dict(state)
        if explicit_prev and len(prev_ids) == 1 and prev_ids[0] in self._state_after:
            return self._state_after[prev_ids[0]]
        if explicit_prev and not prev_ids:
            return {}
        return self._current_state

    def _refs(self, event_ids: Iterable[str]) -> list[Any]:
        if not self.room_version.auth_events_are_pairs:
            return list(event_ids)
        refs: list[Any] = []
        for event_id in event_ids:
            known = self._events.get(event_id)
            digest = (
                reference_hash(known.pdu, self.room_version)
                if known is not None
                else hashlib.sha256(event_id.encode()).digest()
            )
            refs.append([event_id, {"sha256": encode_base64(digest)}])
        return refs

    def _legacy_event_id(self, pdu: Mapping[str, Any], sender: str) -> str:
        """A v1–2 event ID: unique per event content and deterministic."""
        digest = hashlib.sha256(encode_canonical_json(pdu, strict=False)).digest()
        return f"${encode_base64(digest, url_safe=True)[:18]}:{server_name(sender)}"

    def _record(self, event: Event, prev_ids: list[str], state_before: StateMap) -> None:
        self._events[event.event_id] = event
        state_after = state_before
        if event.is_state:
            state_after = dict(state_before)
            state_after[event.key] = event.event_id
        if self._keep_history:
            self._state_after[event.event_id] = state_after
        consumed = set(prev_ids)
        self._extremities = [e for e in self._extremities if e not in consumed]
        self._extremities.append(event.event_id)
        self._current_state = state_after

    # -- shorthands ------------------------------------------------------------------

    def create(
        self,
        *,
        content: Mapping[str, Any] | None = None,
        additional_creators: Sequence[str] | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        """The m.room.create event, sent by the creator (no prev or auth events)."""
        body: dict[str, Any] = {"room_version": self.room_version.identifier}
        if not self.room_version.implicit_room_creator:
            body["creator"] = self.creator
        if additional_creators is not None:
            if not self.room_version.room_id_from_create:
                raise ValueError("additional_creators exist from room version 12 on")
            body["additional_creators"] = list(additional_creators)
        body.update(content or {})
        options.setdefault("prev_events", ())
        options.setdefault("state", {})
        return self.build(CREATE, self.creator, body, state_key="", **options)

    def member(
        self,
        sender: str,
        target: str,
        membership: str,
        *,
        content: Mapping[str, Any] | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        """An m.room.member event for `target` with the given membership."""
        body: dict[str, Any] = {"membership": membership}
        body.update(content or {})
        return self.build(MEMBER, sender, body, state_key=target, **options)

    def join(
        self,
        user_id: str,
        *,
        join_authorised_via_users_server: str | None = None,
        content: Mapping[str, Any] | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        body = dict(content or {})
        if join_authorised_via_users_server is not None:
            body["join_authorised_via_users_server"] = join_authorised_via_users_server
        return self.member(user_id, user_id, "join", content=body, **options)

    def leave(self, user_id: str, **options: Unpack[BuildOptions]) -> Event:
        return self.member(user_id, user_id, "leave", **options)

    def invite(self, sender: str, target: str, **options: Unpack[BuildOptions]) -> Event:
        return self.member(sender, target, "invite", **options)

    def knock(self, user_id: str, **options: Unpack[BuildOptions]) -> Event:
        return self.member(user_id, user_id, "knock", **options)

    def kick(
        self,
        sender: str,
        target: str,
        *,
        reason: str | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        body = {"reason": reason} if reason is not None else None
        return self.member(sender, target, "leave", content=body, **options)

    def ban(
        self,
        sender: str,
        target: str,
        *,
        reason: str | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        body = {"reason": reason} if reason is not None else None
        return self.member(sender, target, "ban", content=body, **options)

    def default_power_levels(self) -> dict[str, Any]:
        """The content Synapse gives a new room: creator at 100 (not listed from v12,
        where creators' power is implicit and may not be listed)."""
        users = {} if self.room_version.room_id_from_create else {self.creator: 100}
        return {
            "users": users,
            "users_default": 0,
            "events": {},
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
        }

    def power_levels(
        self,
        sender: str,
        content: Mapping[str, Any] | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        body = self.default_power_levels() if content is None else dict(content)
        return self.build(POWER_LEVELS, sender, body, state_key="", **options)

    def join_rules(
        self,
        sender: str,
        join_rule: str,
        *,
        allow: Sequence[Mapping[str, Any]] | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        body: dict[str, Any] = {"join_rule": join_rule}
        if allow is not None:
            body["allow"] = [dict(rule) for rule in allow]
        return self.build(JOIN_RULES, sender, body, state_key="", **options)

    def state_event(
        self,
        sender: str,
        event_type: str,
        state_key: str,
        content: Mapping[str, Any],
        **options: Unpack[BuildOptions],
    ) -> Event:
        return self.build(event_type, sender, content, state_key=state_key, **options)

    def message(
        self,
        sender: str,
        body: str = "hello",
        *,
        content: Mapping[str, Any] | None = None,
        event_type: str = "m.room.message",
        **options: Unpack[BuildOptions],
    ) -> Event:
        payload = {"msgtype": "m.text", "body": body} if content is None else dict(content)
        return self.build(event_type, sender, payload, **options)

    def redaction(
        self,
        sender: str,
        redacts: str,
        *,
        reason: str | None = None,
        **options: Unpack[BuildOptions],
    ) -> Event:
        """An m.room.redaction: `redacts` in content from v11, at the top level before."""
        body: dict[str, Any] = {} if reason is None else {"reason": reason}
        if self.room_version.updated_redaction_rules:
            body["redacts"] = redacts
        else:
            options["extra"] = {"redacts": redacts, **options.get("extra", {})}
        return self.build(REDACTION, sender, body, **options)

    def bootstrap(
        self,
        *,
        join_rule: str = "public",
        power_levels: Mapping[str, Any] | None = None,
        additional_creators: Sequence[str] | None = None,
    ) -> list[Event]:
        """The usual start of a room: create, creator's join, power levels, join rules."""
        return [
            self.create(additional_creators=additional_creators),
            self.join(self.creator),
            self.power_levels(self.creator, power_levels),
            self.join_rules(self.creator, join_rule),
        ]
