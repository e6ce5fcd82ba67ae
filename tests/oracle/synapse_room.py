"""One room as Synapse 1.163 processes federation events, driven through Synapse's code.

Test-only truth for `tests/test_pipeline_oracle.py` and `tests/oracle/sweep.py`. For each
event received (every event is a new, non-backfilled, non-outlier PDU whose prev and auth
events are all known) it runs, in the order of `FederationEventHandler._process_received_pdu`:

1. the state before the event: `StateHandler.resolve_state_groups_for_events` — the prev
   events' state groups, deduplicated; one group is taken as is, several are resolved by
   `synapse.state.v1` / `v2.resolve_events_with_store` with no event map (all persisted);
2. `FederationEventHandler._check_event_auth` itself (validation, the state-independent
   rules, the state-dependent rules against the claimed auth events, then against the auth
   events calculated from the state before): failing sets `context.rejected`;
3. if not rejected, `FederationEventHandler._check_for_soft_fail` itself: the room's current
   state (filtered to the event's auth types) when the prev events differ from the forward
   extremities; failing sets `internal_metadata.soft_failed`;
4. `EventsPersistenceStorageController._calculate_new_extremities` itself, over an
   in-memory port of the two SQL queries it makes (`_get_events_which_are_prevs`,
   `_get_prevs_before_rejected`);
5. the new current state: `EventsPersistenceStorageController._get_new_state_after_events`
   itself with `should_prune=False`, behind the two shortcuts of
   `_calculate_new_forward_extremities_and_state_delta` (reproduced in `_persist`).

The methods are Synapse's functions called with a small object as `self` that provides
only what they read (stores answering from dicts). What is reproduced rather than called:
the glue of `_calculate_new_forward_extremities_and_state_delta` (it also measures and
checks whether our server is still joined: the receiving server here has no users, so it
always is), and `StateResolutionHandler.resolve_state_groups`, whose caching and locking
are left out (`_Resolution`).

Left out on purpose, a documented difference with the worker: Synapse prunes forward
extremities (`_prune_extremities`, called by `_get_new_state_after_events` when
`should_prune`) and sends dummy events to merge them; the worker keeps every extremity.
"""

from __future__ import annotations

import synapse.server  # noqa: F401  (loads Synapse's modules in an order free of import cycles)

# isort: split
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MethodType
from typing import Any

from synapse.api.room_versions import KNOWN_ROOM_VERSIONS, StateResolutionVersions
from synapse.events import EventBase, make_event_from_dict
from synapse.handlers.event_auth import EventAuthHandler
from synapse.handlers.federation_event import FederationEventHandler
from synapse.state import StateResolutionStore, _StateCacheEntry
from synapse.state import v1 as synapse_v1
from synapse.state import v2 as synapse_v2
from synapse.storage.controllers.persist_events import EventsPersistenceStorageController
from synapse.storage.databases.main.event_federation import StateDifference
from synapse.types.state import StateFilter

from tests.oracle.synapse_state import _Clock, run

StateKey = tuple[str, str]
StateMap = dict[StateKey, str]

ACCEPTED = "accepted"
SOFT_FAILED = "soft_failed"
REJECTED = "rejected"

#: The receiving server: no user of the room is on it.
SERVER_NAME = "oracle.invalid"


@dataclass
class Verdict:
    """What Synapse made of one event."""

    outcome: str
    before: StateMap
    after: StateMap
    #: The room's forward extremities and current state once the event is persisted.
    extremities: frozenset[str]
    current_state: StateMap
    reason: str | None = None


@dataclass
class _Context:
    """The slice of `EventContext` the handler and the persister read."""

    before: StateMap
    state_group: int
    rejected: bool | str = False
    partial_state: bool = False
    state_group_deltas: dict[tuple[int, int], StateMap] = field(default_factory=dict)

    async def get_prev_state_ids(self, state_filter: StateFilter | None = None) -> StateMap:
        if state_filter is None:
            return dict(self.before)
        return dict(state_filter.filter_state(self.before))


class _Store:
    """The main store, the persist-events store and the state store of one room, in memory."""

    def __init__(self, room: SynapseRoom) -> None:
        self.room = room
        self._chains: dict[str, frozenset[str]] = {}

    # -- events_worker.py ----------------------------------------------------------

    async def get_events(
        self,
        event_ids: Iterable[str],
        redact_behaviour: object = None,
        get_prev_content: bool = False,
        allow_rejected: bool = False,
    ) -> dict[str, EventBase]:
        found = {}
        for event_id in event_ids:
            event = self.room.events.get(event_id)
            if event is not None and (allow_rejected or event.rejected_reason is None):
                found[event_id] = event
        return found

    async def get_events_as_list(
        self, event_ids: Collection[str], redact_behaviour: object = None
    ) -> list[EventBase]:
        found = await self.get_events(event_ids)
        return [found[e] for e in event_ids if e in found]

    async def have_events_in_timeline(self, event_ids: Iterable[str]) -> set[str]:
        # SELECT event_id FROM events WHERE outlier = False AND event_id IN (...):
        # rejected and soft-failed events are in the events table too.
        return {e for e in event_ids if e in self.room.events}

    async def is_partial_state_room(self, room_id: str) -> bool:
        return False

    async def get_latest_event_ids_in_room(self, room_id: str) -> frozenset[str]:
        return self.room.extremities

    async def get_room_version_id(self, room_id: str) -> str:
        return self.room.version.identifier

    # -- state groups ----------------------------------------------------------------

    async def _get_state_group_for_events(self, event_ids: Collection[str]) -> dict[str, int]:
        return {e: self.room.groups_after[e] for e in event_ids}

    async def _get_state_for_groups(self, groups: Iterable[int]) -> dict[int, StateMap]:
        return {g: dict(self.room.group_states[g]) for g in groups}

    # -- event_federation.py: the auth chain difference --------------------------------

    def _chain(self, event_id: str) -> frozenset[str]:
        """The event and its auth chain (rejected events included: Synapse stores the auth
        links of every event, `_persist_event_auth_chain_txn`)."""
        chain = self._chains.get(event_id)
        if chain is None:
            event = self.room.events.get(event_id)
            found = {event_id}
            if event is not None:
                for auth_id in event.auth_event_ids():
                    found |= self._chain(auth_id)
            chain = self._chains[event_id] = frozenset(found)
        return chain

    def _closure(self, event_ids: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for event_id in event_ids:
            out |= self._chain(event_id)
        return out

    async def get_auth_chain_difference_extended(
        self,
        room_id: str,
        state_sets: list[set[str]],
        conflicted_state: set[str] | None,
        additional_backwards_reachable_conflicted_events: set[str] | None,
    ) -> StateDifference:
        """The union of the state sets' auth chains minus their intersection, and (v2.1)
        the conflicted subgraph: events both reachable from and reaching a conflicted event
        along auth links (a state set's own events count as part of its chain)."""
        chains = [self._closure(ids) for ids in state_sets]
        difference = set().union(*chains) - set(chains[0]).intersection(*chains[1:])
        subgraph: set[str] | None = None
        if conflicted_state is not None:
            starts = conflicted_state | (additional_backwards_reachable_conflicted_events or set())
            subgraph = {e for e in self._closure(starts) if self._chain(e) & conflicted_state}
        return StateDifference(auth_difference=difference, conflicted_subgraph=subgraph)

    # -- events.py (the persist-events store): the two extremity queries -------------

    async def _get_events_which_are_prevs(self, event_ids: Iterable[str]) -> list[str]:
        """Port of `PersistEventsStore._get_events_which_are_prevs`:

            SELECT prev_event_id, internal_metadata FROM event_edges
                INNER JOIN events USING (event_id) LEFT JOIN rejections USING (event_id)
                LEFT JOIN event_json USING (event_id)
            WHERE NOT events.outlier AND rejections.event_id IS NULL AND prev_event_id IN (...)

        keeping rows whose event's internal metadata is not soft_failed. One result per
        matching edge (duplicates included, as the SQL returns them)."""
        wanted = set(event_ids)
        return [
            prev
            for child, prev in self.room.edges
            if prev in wanted
            and child not in self.room.rejected
            and child not in self.room.soft_failed
        ]

    async def _get_prevs_before_rejected(
        self, event_ids: Iterable[str], include_soft_failed: bool = True
    ) -> set[str]:
        """Port of `PersistEventsStore._get_prevs_before_rejected`: repeatedly

            SELECT event_id, prev_event_id, internal_metadata,
                   rejections.event_id IS NOT NULL
            FROM event_edges INNER JOIN events USING (event_id)
                LEFT JOIN rejections USING (event_id) LEFT JOIN event_json USING (event_id)
            WHERE NOT events.outlier AND event_id IN (<to check>)

        and for each row whose event is soft-failed (or rejected), the prev event is
        collected and checked next, unless collected already. Note that Synapse writes
        `event_edges` rows only for events that are not rejected (`_update_metadata_tables_txn`
        runs after `_store_rejected_events_txn` filtered them out), so the rejected branch
        finds no rows; `edges` here holds exactly the rows Synapse would have."""
        existing_prevs: set[str] = set()
        to_check = set(event_ids)
        while to_check:
            rows = [(c, p) for c, p in self.room.edges if c in to_check]
            to_check = set()
            for child, prev in rows:
                if prev in existing_prevs:
                    continue
                soft_failed = child in self.room.soft_failed
                if (include_soft_failed and soft_failed) or child in self.room.rejected:
                    to_check.add(prev)
                    existing_prevs.add(prev)
        return existing_prevs


class _EventAuth:
    """`EventAuthHandler.compute_auth_events` reads nothing from its handler."""

    def compute_auth_events(
        self, event: EventBase, current_state_ids: StateMap, for_verification: bool = False
    ) -> list[str]:
        return EventAuthHandler.compute_auth_events(
            self,  # type: ignore[arg-type]
            event,
            current_state_ids,
            for_verification,
        )


class _StateController:
    """The slice of `StateStorageController` `_check_for_soft_fail` reads."""

    def __init__(self, room: SynapseRoom) -> None:
        self.room = room

    async def get_current_state_ids(
        self, room_id: str, state_filter: StateFilter | None = None
    ) -> StateMap:
        state = self.room.current_state
        return dict(state_filter.filter_state(state)) if state_filter else dict(state)


class _Resolution:
    """`StateResolutionHandler.resolve_state_groups` without its cache and lock: the state
    groups' maps resolved by the room version's algorithm."""

    async def resolve_state_groups(
        self,
        room_id: str,
        room_version: str,
        state_groups_ids: Mapping[int, StateMap],
        event_map: dict[str, EventBase] | None,
        state_res_store: StateResolutionStore,
    ) -> _StateCacheEntry:
        version = KNOWN_ROOM_VERSIONS[room_version]
        state_sets = list(state_groups_ids.values())
        if version.state_res == StateResolutionVersions.V1:
            state = await synapse_v1.resolve_events_with_store(
                room_id, version, state_sets, event_map, state_res_store.get_events
            )
        else:
            state = await synapse_v2.resolve_events_with_store(
                _Clock(),  # type: ignore[arg-type]
                room_id,
                version,
                state_sets,
                event_map,
                state_res_store,
            )
        return _StateCacheEntry(state=dict(state), state_group=None)


class _Handler:
    """`self` for `FederationEventHandler` methods: only the attributes they read."""

    server_name = SERVER_NAME

    def __init__(self, room: SynapseRoom) -> None:
        self._store = room.store
        self._event_auth_handler = _EventAuth()
        self._state_storage_controller = _StateController(room)
        self._load_or_fetch_auth_events_for_event = MethodType(
            FederationEventHandler._load_or_fetch_auth_events_for_event, self
        )


class _EventClock:
    """Synapse's clock for `_prune_extremities`: now is the received event's timestamp."""

    def __init__(self) -> None:
        self.now_ms = 0

    def time_msec(self) -> int:
        return self.now_ms


class _Persister:
    """`self` for `EventsPersistenceStorageController` methods."""

    server_name = SERVER_NAME

    def __init__(self, room: SynapseRoom) -> None:
        self.main_store = room.store
        self.persist_events_store = room.store
        self.state_store = room.store
        self._state_resolution_handler = _Resolution()
        self._state_deletion_store = None
        #: `_StateCacheEntry.get_state` reads it only when the entry has no state.
        self._state_controller = None
        self._clock = _EventClock()

    @staticmethod
    def is_mine_id(user_id: str) -> bool:
        return user_id.partition(":")[2] == SERVER_NAME


class SynapseRoom:
    """Receives the events of one room in order, as a Synapse server with no local users."""

    def __init__(self, room_version: str) -> None:
        self.version = KNOWN_ROOM_VERSIONS[room_version]
        self.room_id = ""
        #: Every persisted event (none is an outlier), rejected ones with a reason.
        self.events: dict[str, EventBase] = {}
        self.rejected: set[str] = set()
        self.soft_failed: set[str] = set()
        #: Rows of Synapse's event_edges table: (event, prev event), non-rejected events.
        self.edges: list[tuple[str, str]] = []
        self.extremities: frozenset[str] = frozenset()
        self.current_state: StateMap = {}
        #: State groups, one per distinct state map (Synapse makes more groups, but
        #: groups with equal maps resolve alike; see `state_before`).
        self.group_states: dict[int, StateMap] = {}
        self._group_ids: dict[frozenset[tuple[StateKey, str]], int] = {}
        self.groups_after: dict[str, int] = {}
        #: Events after which Synapse's `_prune_extremities` would have dropped some
        #: extremities (the documented difference: not applied here).
        self.prunable = 0
        self.store = _Store(self)
        self._handler = _Handler(self)
        self._persister = _Persister(self)

    # -- state ---------------------------------------------------------------------

    def _group(self, state: Mapping[StateKey, str]) -> int:
        key = frozenset(state.items())
        group = self._group_ids.get(key)
        if group is None:
            group = self._group_ids[key] = len(self._group_ids) + 1
            self.group_states[group] = dict(state)
        return group

    def state_after(self, event_id: str) -> StateMap:
        return dict(self.group_states[self.groups_after[event_id]])

    def state_before(self, prev_event_ids: Iterable[str]) -> StateMap:
        """`StateHandler.resolve_state_groups_for_events` for the prev events: no group →
        empty, one → its state, several → resolved with no event map."""
        groups = {self.groups_after[e] for e in prev_event_ids}
        if not groups:
            return {}
        if len(groups) == 1:
            return dict(self.group_states[next(iter(groups))])
        entry = run(
            _Resolution().resolve_state_groups(
                self.room_id,
                self.version.identifier,
                {g: self.group_states[g] for g in sorted(groups)},
                None,
                StateResolutionStore(self.store, None),  # type: ignore[arg-type]
            )
        )
        return dict(run(entry.get_state(None)))  # type: ignore[arg-type]

    # -- one event -------------------------------------------------------------------

    def receive(self, pdu: Mapping[str, Any]) -> Verdict:
        """Process one PDU as `_process_received_pdu` does (not backfilled)."""
        event = make_event_from_dict(dict(pdu), self.version)
        if not self.room_id:
            self.room_id = event.room_id
        origin = event.sender.partition(":")[2]
        before = self.state_before(event.prev_event_ids())
        context = _Context(before=before, state_group=self._group(before))
        run(FederationEventHandler._check_event_auth(self._handler, None, event, context))  # type: ignore[arg-type]
        if not context.rejected:
            run(
                FederationEventHandler._check_for_soft_fail(
                    self._handler,  # type: ignore[arg-type]
                    event,
                    context,  # type: ignore[arg-type]
                    origin,
                )
            )
        outcome = ACCEPTED
        if context.rejected:
            outcome = REJECTED
            event = make_event_from_dict(
                dict(pdu), self.version, rejected_reason=str(context.rejected)
            )
        elif event.internal_metadata.is_soft_failed():
            outcome = SOFT_FAILED
        after = dict(before)
        if outcome != REJECTED and event.is_state():
            after[(event.type, event.state_key)] = event.event_id
        context.state_group = self._group(after)
        self._persist(event, context)
        return Verdict(
            outcome=outcome,
            before=before,
            after=after,
            extremities=self.extremities,
            current_state=dict(self.current_state),
            reason=str(context.rejected) if context.rejected else None,
        )

    def _count_prunable(
        self, event: EventBase, context: _Context, latest: set[str], state: StateMap
    ) -> None:
        """Whether `_prune_extremities` would drop extremities here. Synapse calls it when
        the resolved state is the state group of one of the new extremities; the result is
        only counted (see the module docstring)."""
        groups = {e: self.groups_after.get(e, context.state_group) for e in latest}
        resolved = self._group_ids.get(frozenset(state.items()))
        if len(latest) < 2 or resolved not in groups.values():
            return
        self._persister._clock.now_ms = event.origin_server_ts
        pruned = run(
            EventsPersistenceStorageController._prune_extremities(
                self._persister,  # type: ignore[arg-type]
                self.room_id,
                set(latest),
                resolved,
                groups,
                [(event, context)],  # type: ignore[list-item]
            )
        )
        if pruned != latest:
            self.prunable += 1

    def _persist(self, event: EventBase, context: _Context) -> None:
        """`_calculate_new_forward_extremities_and_state_delta` for one event, then the
        rows the persisting transaction writes."""
        latest = self.extremities
        pairs: Sequence[Any] = [(event, context)]
        new_latest = run(
            EventsPersistenceStorageController._calculate_new_extremities(
                self._persister,  # type: ignore[arg-type]
                self.room_id,
                pairs,
                latest,
            )
        )
        new_state: StateMap | None = None
        if new_latest != latest:
            single_non_state = (
                len(latest) == 1
                and len(new_latest) == 1
                and len(event.prev_event_ids()) == 1
                and not event.is_state()
            )
            if not single_non_state:
                full, delta, new_latest = run(
                    EventsPersistenceStorageController._get_new_state_after_events(
                        self._persister,  # type: ignore[arg-type]
                        self.room_id,
                        pairs,
                        latest,
                        set(new_latest),
                        should_prune=False,
                    )
                )
                if full is not None:
                    new_state = dict(full)
                    self._count_prunable(event, context, set(new_latest), new_state)
                elif delta is not None:
                    new_state = {**self.current_state, **delta}
        # The transaction: the event, its state group, its edges unless rejected.
        self.events[event.event_id] = event
        self.groups_after[event.event_id] = context.state_group
        if context.rejected:
            self.rejected.add(event.event_id)
        else:
            if event.internal_metadata.is_soft_failed():
                self.soft_failed.add(event.event_id)
            self.edges.extend((event.event_id, p) for p in event.prev_event_ids())
        self.extremities = frozenset(new_latest)
        if new_state is not None:
            self.current_state = new_state
