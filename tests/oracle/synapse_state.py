"""Synapse's state resolution and authorization as a test oracle (test-only).

Wraps `synapse.state.v1` / `v2` and `synapse.event_auth` behind plain synchronous calls
so tests can ask "what would Synapse say" about the same events the worker sees.
Importing this module needs `matrix-synapse`; tests call `pytest.importorskip` first.

Synapse's v2 resolver wants a store with `get_events` and `get_auth_chain_difference`;
`SynapseStore` is a small in-memory one. Synapse's own test store returns no conflicted
subgraph; this one computes it (and the auth difference) from the events, with Synapse's
convention that a state map's events belong to its own auth chain. Resolution can run
with every event "unpersisted" (Synapse computes the difference itself, in memory) or
"persisted" (the store computes it): both must agree.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import synapse.event_auth  # noqa: F401  (import first: synapse.state needs it loaded)
from synapse.api.errors import AuthError as SynapseAuthError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.api.room_versions import RoomVersion as SynapseRoomVersion
from synapse.event_auth import check_state_dependent_auth_rules
from synapse.events import EventBase, make_event_from_dict
from synapse.state import v1 as synapse_v1
from synapse.state import v2 as synapse_v2
from synapse.storage.databases.main.event_federation import StateDifference
from synapse.util.duration import Duration

T = TypeVar("T")
StateKey = tuple[str, str]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never really waits (everything here is in memory)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the Synapse coroutine suspended; the oracle store must not wait")


class _Clock:
    async def sleep(self, duration: Duration) -> None:
        return None


def synapse_version(identifier: str) -> SynapseRoomVersion:
    return KNOWN_ROOM_VERSIONS[identifier]


def synapse_event(pdu: Mapping[str, Any], room_version: str) -> EventBase:
    """Synapse's event for a PDU (it computes v3+ event IDs itself)."""
    return make_event_from_dict(dict(pdu), synapse_version(room_version))


class SynapseStore:
    """The store Synapse's resolvers read, over a dict of events."""

    def __init__(self, events: Mapping[str, EventBase]) -> None:
        self.events = events

    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> dict[str, EventBase]:
        found = {}
        for event_id in event_ids:
            event = self.events.get(event_id)
            if event is not None and (allow_rejected or event.rejected_reason is None):
                found[event_id] = event
        return found

    def closure(self, event_ids: Iterable[str]) -> set[str]:
        """The events and their auth chains."""
        seen: set[str] = set()
        stack = list(event_ids)
        while stack:
            event_id = stack.pop()
            if event_id in seen:
                continue
            seen.add(event_id)
            event = self.events.get(event_id)
            if event is not None:
                stack.extend(event.auth_event_ids())
        return seen

    async def get_auth_chain_difference(
        self,
        room_id: str,
        state_sets: list[set[str]],
        conflicted_state: set[str] | None,
        additional_backwards_reachable_conflicted_events: set[str] | None,
    ) -> StateDifference:
        chains = [self.closure(ids) for ids in state_sets]
        difference = set().union(*chains) - set(chains[0]).intersection(*chains[1:])
        subgraph: set[str] | None = None
        if conflicted_state is not None:
            backwards = self.closure(
                conflicted_state | (additional_backwards_reachable_conflicted_events or set())
            )
            subgraph = {
                event_id for event_id in backwards if self.closure([event_id]) & conflicted_state
            }
        return StateDifference(auth_difference=difference, conflicted_subgraph=subgraph)


def resolve(
    room_version: str,
    room_id: str,
    state_sets: Sequence[Mapping[StateKey, str]],
    events: Mapping[str, EventBase],
    *,
    persisted: bool = False,
) -> dict[StateKey, str]:
    """Synapse's resolution of the state maps."""
    version = synapse_version(room_version)
    store = SynapseStore(events)
    sets = [dict(state) for state in state_sets]
    if room_version == "1":
        result = run(
            synapse_v1.resolve_events_with_store(room_id, version, sets, None, store.get_events)
        )
    else:
        result = run(
            synapse_v2.resolve_events_with_store(
                _Clock(),
                room_id,
                version,
                sets,
                None if persisted else dict(events),
                store,
            )
        )
    return dict(result)


def allows(event: EventBase, auth_state: Iterable[EventBase]) -> bool:
    """Whether Synapse's state-dependent auth rules allow the event against the state."""
    try:
        check_state_dependent_auth_rules(event, list(auth_state))
    except SynapseAuthError:
        return False
    return True
