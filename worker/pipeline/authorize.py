"""Authorization verdicts: the spec's checks on receipt of a PDU, over stored state.

Three checks, in the spec's order (server-server API, "Checks performed on receipt of
a PDU"): against the event's own auth events and against the state before the event
(failing either rejects it), then against the room's current state (failing that
soft-fails it). The rules themselves are worker.matrix.auth's; this module finds the
events they are given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from weakref import ref

from worker.matrix.auth import (
    AuthError,
    VerdictKey,
    auth_types_for_event,
    check_auth,
    validate_auth_events,
    verdict_key,
)
from worker.matrix.auth.selection import CREATE_KEY
from worker.matrix.events import CREATE, Event, StateKey
from worker.storage.blocks import NidStateKey
from worker.storage.database import Database, RoomRow
from worker.storage.events import EventStore, StoredEvent
from worker.storage.lru import BoundedMemo
from worker.storage.schema import (
    EMPTY_STATE_KEY_NID,
    STATUS_ACCEPTED,
    STATUS_REJECTED,
    STATUS_SOFT_FAILED,
    WELL_KNOWN_TYPES,
)
from worker.storage.state import DerivedState, StateStore, StateView


@dataclass(slots=True)
class Verdict:
    """What the checks found: the first failure decides the event's status."""

    status: int = STATUS_ACCEPTED
    reason: str | None = None
    #: The event's stored auth events by ID, as the check against them found them
    #: (None before it): storing the event takes their NIDs from here rather than
    #: looking them up again. Nothing the input does in between changes them.
    cited: Mapping[str, StoredEvent] | None = None

    def reject(self, status: int, reason: str) -> None:
        if self.status == STATUS_ACCEPTED:
            self.status, self.reason = status, reason

    @property
    def accepted(self) -> bool:
        return self.status == STATUS_ACCEPTED


@dataclass(frozen=True, slots=True)
class PassedAuth:
    """The auth state an event passed when checked against its own auth events."""

    #: (type, state key) → event NID.
    nids: dict[StateKey, int]
    #: The same entries keyed as a NID state map is: ((type NID, state key NID), event NID).
    entries: tuple[tuple[NidStateKey, int], ...]
    #: Whether the entries fill every key the auth events selection names for the
    #: event (and the create's): then no other entry of a state can be auth-relevant.
    complete: bool

    def held_by(self, state: StateView) -> bool:
        """Whether the auth-relevant part of `state` is exactly this auth state,
        known without turning the selection's keys into NIDs: only when `complete`
        (False otherwise, which proves nothing)."""
        if not self.complete:
            return False
        if type(state) is DerivedState:
            # Its two maps read here, as its `get` reads them, without a call per entry.
            changes, base = state.changes, state.base
            for key, event_nid in self.entries:
                changed = changes.get(key)
                # 0 in the changes: the key is removed (never an event NID).
                if (base.get(key) if changed is None else changed) != event_nid:
                    return False
            return True
        get = state.get
        # A loop, not all() over a generator: three entries, on every event.
        for key, event_nid in self.entries:  # noqa: SIM110
            if get(key) != event_nid:
                return False
        return True


class Authorizer:
    """The three checks over stored events and NID state maps."""

    def __init__(
        self, db: Database, state: StateStore, events: EventStore, memo_entries: int
    ) -> None:
        """`memo_entries` bounds the passes remembered (`passed_auth`, about one per
        active sender: a 2,000-member room's fit the default budget's 4,100)."""
        self.db = db
        self.state = state
        self.events = events
        #: `verdict_key` → the stored events an event with that key cited (and, in
        #: v12, the create event) and what passed against them. The event cache hands
        #: out the same object for an event until its row or JSON changes (a promoted
        #: outlier, a redaction) or a rollback empties the cache, so while it holds the
        #: same objects they are the same events, statuses and contents, and the rules
        #: give the same pass; otherwise the event is checked again. The objects are
        #: held weakly: one the cache dropped is gone, and its entry no longer matches.
        self._passed: BoundedMemo[VerdictKey, tuple[tuple[ref[StoredEvent], ...], PassedAuth]] = (
            BoundedMemo(memo_entries)
        )

    def against_auth_events(
        self, event: Event, room: RoomRow, verdict: Verdict
    ) -> PassedAuth | None:
        """Checks against the event's own auth events (the first two of the spec's
        checks on receipt); failing makes the event rejected.

        Returns the auth state that passed, so that an identical state before the
        event need not be checked again (nor its events looked up)."""
        is_create = event.type == CREATE and event.state_key == ""
        if is_create and self._room_create_nid(room) is not None:
            verdict.reject(STATUS_REJECTED, f"room {event.room_id} already has a create event")
            return None
        auth_ids = event.auth_event_ids
        found = verdict.cited = self.events.many_by_id(auth_ids)
        memo_key = verdict_key(event)
        if memo_key is not None:
            remembered = self._passed.get(memo_key)
            if remembered is not None and self._cites_same(event, found, remembered[0]):
                return remembered[1]
        # One pass over the cited events gives what the rules look at (the events, the
        # rejected ones) and the auth state they make, as events and as NIDs.
        auth_events: dict[str, Event] = {}
        rejected: set[str] = set()
        auth_state: dict[StateKey, Event] = {}
        nids: dict[StateKey, int] = {}
        entries: list[tuple[NidStateKey, int]] = []
        for eid in auth_ids:
            stored = found.get(eid)
            if stored is None:
                continue
            auth_event, row = stored.event, stored.row
            auth_events[eid] = auth_event
            if row.status == STATUS_REJECTED:
                rejected.add(eid)
            state_key = auth_event.state_key
            if state_key is not None:
                key = (auth_event.type, state_key)
                auth_state[key] = auth_event
                nids[key] = row.nid
                entries.append(((row.type_nid, row.state_key_nid), row.nid))
        expected = (
            None
            if is_create
            else auth_types_for_event(
                event.room_version, event.type, event.state_key, event.sender, event.content
            )
        )
        try:
            validate_auth_events(event, auth_events, rejected, expected)
            if event.room_version.room_id_from_create and event.type != CREATE:
                create = self.events.by_id("$" + event.room_id[1:])
                if create is None or create.row.status == STATUS_REJECTED:
                    raise AuthError(
                        f"the room's create event ${event.room_id[1:]} is not an accepted event"
                    )
                auth_state[CREATE_KEY] = create.event
                nids[CREATE_KEY] = create.row.nid
                entries.append(((create.row.type_nid, create.row.state_key_nid), create.row.nid))
            check_auth(event, auth_state)
        except AuthError as exc:
            verdict.reject(STATUS_REJECTED, f"against its auth events: {exc.reason}")
            return None
        # Having passed the rule on the auth events list, every cited key is one the
        # selection names (or the create, which v12 adds), each once: the auth events
        # fill the selection when they are as many as its keys and the create's.
        complete = expected is not None and len(nids) == len(expected) + (
            CREATE_KEY not in expected
        )
        passed = PassedAuth(nids, tuple(entries), complete)
        if memo_key is not None:
            self._passed[memo_key] = (self._cited(event, found), passed)
        return passed

    def _cited(
        self, event: Event, found: Mapping[str, StoredEvent]
    ) -> tuple[ref[StoredEvent], ...]:
        """The stored events a pass of `event` rests on: those it cites (all stored,
        since it passed) and, in v12, the room's create event."""
        cited = tuple(ref(found[eid]) for eid in event.auth_event_ids)
        if event.room_version.room_id_from_create:
            create = self.events.by_id("$" + event.room_id[1:])
            assert create is not None  # the pass needed it
            cited += (ref(create),)
        return cited

    def _cites_same(
        self,
        event: Event,
        found: Mapping[str, StoredEvent],
        cited: tuple[ref[StoredEvent], ...],
    ) -> bool:
        """Whether the event cache holds the very objects a remembered pass rests on."""
        for eid, weak in zip(event.auth_event_ids, cited, strict=False):
            held = weak()
            # A dropped object is no proof either way (nor is an event no longer
            # stored, after a rollback).
            if held is None or found.get(eid) is not held:
                return False
        if event.room_version.room_id_from_create:
            create = cited[-1]()
            return create is not None and self.events.by_id("$" + event.room_id[1:]) is create
        return True

    def against_state_before(
        self,
        event: Event,
        before: int,
        verdict: Verdict,
        already_passed: PassedAuth | None,
    ) -> None:
        """The third check on receipt: failing the state before the event rejects it."""
        if verdict.status == STATUS_ACCEPTED:  # not the property: a call, on every event
            state = self.state.load(before)
            self._check(event, state, verdict, STATUS_REJECTED, "before it", already_passed)

    def against_current_state(
        self, event: Event, room: RoomRow, before: int, verdict: Verdict
    ) -> None:
        """The soft-fail check of a `new` event against the room's current state, when
        there is one: a room joined over federation has none until its first `new`
        event, and a state equal to the state before was checked already."""
        if (
            verdict.status == STATUS_ACCEPTED
            and room.latest_event_nids
            and room.snapshot_nid != before
        ):
            current = self.state.load(room.snapshot_nid)
            self._check(event, current, verdict, STATUS_SOFT_FAILED, "current")

    def auth_state(self, event: Event, state: StateView) -> dict[StateKey, Event]:
        """The auth-relevant part of a NID state map, as events."""
        return self._events_of(self._auth_nids(event, state))

    def _auth_nids(self, event: Event, state: StateView) -> dict[StateKey, int]:
        """The auth-relevant part of a NID state map, as event NIDs."""
        keys = auth_types_for_event(
            event.room_version, event.type, event.state_key, event.sender, event.content
        )
        keys.add((CREATE, ""))
        result: dict[StateKey, int] = {}
        for event_type, state_key in keys:
            # Auth types are well-known types, and many keys are empty: their NIDs are
            # fixed, so only the users' state keys are looked up.
            type_nid = WELL_KNOWN_TYPES.get(event_type) or self.db.type_nid(
                event_type, create=False
            )
            sk_nid = (
                EMPTY_STATE_KEY_NID
                if state_key == ""
                else self.db.state_key_nid(state_key, create=False)
            )
            if type_nid and sk_nid:
                event_nid = state.get((type_nid, sk_nid))
                if event_nid:
                    result[(event_type, state_key)] = event_nid
        return result

    def _events_of(self, nids: Mapping[StateKey, int]) -> dict[StateKey, Event]:
        by_nid = self.events.by_nid
        return {key: by_nid(nid).event for key, nid in nids.items()}

    def _check(
        self,
        event: Event,
        state: StateView,
        verdict: Verdict,
        status: int,
        which: str,
        already_passed: PassedAuth | None = None,
    ) -> None:
        if already_passed is not None and already_passed.held_by(state):
            return  # the same auth state already passed: the rules are deterministic
        nids = self._auth_nids(event, state)
        if already_passed is not None and already_passed.nids == nids:
            return
        try:
            check_auth(event, self._events_of(nids))
        except AuthError as exc:
            verdict.reject(status, f"against the state {which}: {exc.reason}")

    def _room_create_nid(self, room: RoomRow) -> int | None:
        state = self.state.load(room.snapshot_nid)
        create_nid = state.get((1, 1))
        if create_nid:
            return create_nid
        return self.db.room_create_event_nid(room.nid)
