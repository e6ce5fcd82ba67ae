"""Synapse's `filter_events_for_server` as an oracle for `worker.matrix.visibility`.

`synapse.visibility.filter_events_for_server` is async and reads storage through four
calls; with `filter_out_erased_senders=False` and
`filter_out_remote_partial_state_events=False` (erasure and partial joins are not part of
the roomserver) only two remain, answered here from plain dicts:

- `storage.state.get_state_ids_for_events(event_ids, state_filter=...)`: the state
  (as event IDs) at each non-outlier event, narrowed by the `StateFilter` it passes
  (Synapse's own `StateFilter.filter_state` does the narrowing);
- `storage.main.get_events(event_ids)`: the events themselves.

Synapse's "state at an event" is the state group of the event, i.e. the state after it;
callers pass that. Outliers are marked in the Synapse event's internal metadata, which
is what Synapse reads to skip them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import EventBase, make_event_from_dict
from synapse.types.state import StateFilter
from synapse.visibility import filter_events_for_server

from worker.matrix.events import Event, StateKey


def _to_synapse(event: Event, outlier: bool) -> EventBase:
    pdu = dict(event.pdu)
    if event.room_version.auth_events_are_pairs:
        pdu["event_id"] = event.event_id
    synapse_event = make_event_from_dict(pdu, KNOWN_ROOM_VERSIONS[event.room_version.identifier])
    synapse_event.internal_metadata.outlier = outlier
    return synapse_event


class _StateStorage:
    def __init__(self, state_after: Mapping[str, Mapping[StateKey, str]]) -> None:
        self._state_after = state_after

    async def get_state_ids_for_events(
        self, event_ids: Collection[str], state_filter: StateFilter | None = None
    ) -> dict[str, dict[tuple[str, str], str]]:
        narrowing = state_filter or StateFilter.all()
        return {
            event_id: dict(narrowing.filter_state(dict(self._state_after[event_id])))
            for event_id in event_ids
        }


class _MainStorage:
    def __init__(self, events: Mapping[str, EventBase]) -> None:
        self._events = events

    async def get_events(self, event_ids: Iterable[str], **_options: Any) -> dict[str, EventBase]:
        return {eid: self._events[eid] for eid in event_ids if eid in self._events}


class _Storage:
    def __init__(self, state: _StateStorage, main: _MainStorage) -> None:
        self.state = state
        self.main = main


def synapse_filter_events_for_server(
    all_events: Iterable[Event],
    state_after: Mapping[str, Mapping[StateKey, str]],
    outliers: Collection[str],
    asked: Iterable[Event],
    server_name: str,
    *,
    redact: bool,
) -> list[dict[str, Any]]:
    """Synapse's answer, as PDU dicts, for the events `asked` (in that order).

    `all_events` is every event of the room (the state maps name them), `state_after`
    maps each non-outlier event ID to the state after it, as event IDs.
    """
    synapse_events = {e.event_id: _to_synapse(e, e.event_id in outliers) for e in all_events}
    storage = _Storage(_StateStorage(state_after), _MainStorage(synapse_events))
    loop = asyncio.new_event_loop()
    try:
        filtered = loop.run_until_complete(
            filter_events_for_server(
                storage,  # type: ignore[arg-type]
                server_name,
                "local.example",
                [synapse_events[e.event_id] for e in asked],
                redact=redact,
                filter_out_erased_senders=False,
                filter_out_remote_partial_state_events=False,
            )
        )
    finally:
        loop.close()
    return [_without_empty_unsigned(event.get_pdu_json()) for event in filtered]


def _without_empty_unsigned(pdu: dict[str, Any]) -> dict[str, Any]:
    """The PDU as JSON would carry it (Synapse keeps v1–2 event references as tuples),
    without the `"unsigned": {}` Synapse adds to every PDU it serialises."""
    plain: dict[str, Any] = json.loads(json.dumps(pdu))
    if plain.get("unsigned") == {}:
        del plain["unsigned"]
    return plain
