"""Synapse's event authorization as an oracle for `worker.matrix.auth`.

Test-only: `matrix-synapse` is an optional extra (`oracle`), and nothing under `worker/`
imports it. Synapse runs its auth rules in two halves, as its federation handler does:

- `check_state_independent_auth_rules(store, event)`: the create rules and the rule about
  the event's own `auth_events`, reading those events from a store (async);
- `check_state_dependent_auth_rules(event, auth_events)`: everything else, against an
  iterable of state events.

The store here is a plain dict behind the one async method Synapse calls. Our `Event`s
are turned into Synapse events from the same PDU; for room versions 3+ Synapse computes
the event ID from the PDU itself, so tests that rely on IDs (prev_events, v12 room IDs)
should take IDs from `synapse_event_id` when building events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from synapse.api.errors import SynapseError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.event_auth import (
    check_state_dependent_auth_rules,
    check_state_independent_auth_rules,
)
from synapse.events import EventBase, make_event_from_dict

from worker.matrix.events import CREATE, Event, StateKey
from worker.matrix.room_versions import RoomVersion

#: What the oracle says: None when allowed, else Synapse's reason.
Verdict = str | None


def _synapse_pdu(
    pdu: Mapping[str, Any], room_version: RoomVersion, event_id: str | None
) -> dict[str, Any]:
    """The PDU as Synapse's event constructor wants it (it insists on hashes/signatures)."""
    out = dict(pdu)
    out.setdefault("hashes", {"sha256": ""})
    out.setdefault("signatures", {})
    if room_version.auth_events_are_pairs and event_id is not None:
        out["event_id"] = event_id
    return out


def synapse_event_id(pdu: Mapping[str, Any], room_version: RoomVersion) -> str:
    """The event ID Synapse derives for this PDU (the reference hash from v3 on)."""
    synapse_version = KNOWN_ROOM_VERSIONS[room_version.identifier]
    event = make_event_from_dict(
        _synapse_pdu(pdu, room_version, pdu.get("event_id")), synapse_version
    )
    return str(event.event_id)


def to_synapse(event: Event, *, rejected: bool = False) -> EventBase:
    synapse_version = KNOWN_ROOM_VERSIONS[event.room_version.identifier]
    return make_event_from_dict(
        _synapse_pdu(event.pdu, event.room_version, event.event_id),
        synapse_version,
        rejected_reason="rejected" if rejected else None,
    )


class _Store:
    """The slice of Synapse's event store that `check_state_independent_auth_rules` reads."""

    def __init__(self, events: Mapping[str, EventBase]) -> None:
        self._events = events

    async def get_events(
        self,
        event_ids: Collection[str],
        redact_behaviour: object,
        get_prev_content: bool = False,
        allow_rejected: bool = False,
    ) -> dict[str, EventBase]:
        return {eid: self._events[eid] for eid in event_ids if eid in self._events}


class SynapseOracle:
    """Holds the events of one room, keyed by *our* event IDs, and asks Synapse about more."""

    def __init__(self) -> None:
        self._events: dict[str, EventBase] = {}
        self._loop = asyncio.new_event_loop()

    def close(self) -> None:
        self._loop.close()

    def add(self, event: Event, *, rejected: bool = False) -> None:
        self._events[event.event_id] = to_synapse(event, rejected=rejected)

    def check_against_auth_events(self, event: Event) -> Verdict:
        """Synapse's verdict on the event against its own auth events (what it rejects)."""
        synapse_event = to_synapse(event)
        store = _Store(self._events)
        try:
            self._loop.run_until_complete(check_state_independent_auth_rules(store, synapse_event))
            if event.type == CREATE:
                return None
            auth_events = [self._events[eid] for eid in synapse_event.auth_event_ids()]
            check_state_dependent_auth_rules(synapse_event, auth_events)
        except (
            SynapseError,
            AttributeError,
            KeyError,
            ValueError,
            TypeError,
            AssertionError,
            RuntimeError,
        ) as exc:
            return _reason(exc)
        return None

    def check_against_state(self, event: Event, state: Mapping[StateKey, Event]) -> Verdict:
        """Synapse's verdict on the event against a state map (what it soft-fails)."""
        synapse_event = to_synapse(event)
        return self._dependent(synapse_event, (self._events[e.event_id] for e in state.values()))

    @staticmethod
    def _dependent(synapse_event: EventBase, auth_events: Iterable[EventBase]) -> Verdict:
        try:
            check_state_dependent_auth_rules(synapse_event, auth_events)
        except (
            SynapseError,
            AttributeError,
            KeyError,
            ValueError,
            TypeError,
            AssertionError,
        ) as exc:
            return _reason(exc)
        return None


def _reason(exc: Exception) -> str:
    if isinstance(exc, SynapseError):
        return f"{type(exc).__name__}: {exc.msg}"
    return f"{type(exc).__name__}: {exc}"
