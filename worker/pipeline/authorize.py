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

from worker.matrix.auth import AuthError, auth_types_for_event, check_auth, validate_auth_events
from worker.matrix.events import CREATE, Event, StateKey
from worker.storage.database import Database, RoomRow
from worker.storage.events import EventStore
from worker.storage.schema import (
    EMPTY_STATE_KEY_NID,
    STATUS_ACCEPTED,
    STATUS_REJECTED,
    STATUS_SOFT_FAILED,
    WELL_KNOWN_TYPES,
)
from worker.storage.state import StateStore, StateView


@dataclass(slots=True)
class Verdict:
    """What the checks found: the first failure decides the event's status."""

    status: int = STATUS_ACCEPTED
    reason: str | None = None

    def reject(self, status: int, reason: str) -> None:
        if self.status == STATUS_ACCEPTED:
            self.status, self.reason = status, reason

    @property
    def accepted(self) -> bool:
        return self.status == STATUS_ACCEPTED


class Authorizer:
    """The three checks over stored events and NID state maps."""

    def __init__(self, db: Database, state: StateStore, events: EventStore) -> None:
        self.db = db
        self.state = state
        self.events = events

    def against_auth_events(
        self, event: Event, room: RoomRow, verdict: Verdict
    ) -> dict[StateKey, int] | None:
        """Checks against the event's own auth events (the first two of the spec's
        checks on receipt); failing makes the event rejected.

        Returns the auth state that passed, as event NIDs, so that an identical state
        before the event need not be checked again (nor its events looked up)."""
        is_create = event.type == CREATE and event.state_key == ""
        if is_create and self._room_create_nid(room) is not None:
            verdict.reject(STATUS_REJECTED, f"room {event.room_id} already has a create event")
            return None
        found = self.events.many_by_id(event.auth_event_ids)
        auth_events = {
            eid: (found[eid].event if eid in found else None) for eid in event.auth_event_ids
        }
        rejected = {eid for eid, s in found.items() if s.row.status == STATUS_REJECTED}
        try:
            validate_auth_events(event, auth_events, rejected)
            auth_state: dict[StateKey, Event] = {}
            nids: dict[StateKey, int] = {}
            for eid in event.auth_event_ids:
                stored = found.get(eid)
                if stored is None:
                    continue
                auth_event = stored.event
                if auth_event.state_key is not None:
                    key = (auth_event.type, auth_event.state_key)
                    auth_state[key] = auth_event
                    nids[key] = stored.row.nid
            if event.room_version.room_id_from_create and event.type != CREATE:
                create = self.events.by_id("$" + event.room_id[1:])
                if create is None or create.row.status == STATUS_REJECTED:
                    raise AuthError(
                        f"the room's create event ${event.room_id[1:]} is not an accepted event"
                    )
                auth_state[(CREATE, "")] = create.event
                nids[(CREATE, "")] = create.row.nid
            check_auth(event, auth_state)
        except AuthError as exc:
            verdict.reject(STATUS_REJECTED, f"against its auth events: {exc.reason}")
            return None
        return nids

    def against_state_before(
        self,
        event: Event,
        before: int,
        verdict: Verdict,
        already_passed: Mapping[StateKey, int] | None,
    ) -> None:
        """The third check on receipt: failing the state before the event rejects it."""
        if verdict.accepted:
            state = self.state.load(before)
            self._check(event, state, verdict, STATUS_REJECTED, "before it", already_passed)

    def against_current_state(
        self, event: Event, room: RoomRow, before: int, verdict: Verdict
    ) -> None:
        """The soft-fail check of a `new` event against the room's current state, when
        there is one: a room joined over federation has none until its first `new`
        event, and a state equal to the state before was checked already."""
        if verdict.accepted and room.latest_event_nids and room.snapshot_nid != before:
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
        already_passed: Mapping[StateKey, int] | None = None,
    ) -> None:
        nids = self._auth_nids(event, state)
        if already_passed is not None and already_passed == nids:
            return  # the same auth state already passed: the rules are deterministic
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
