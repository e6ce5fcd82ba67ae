"""State resolution over NID state maps: the one place the worker resolves stored state.

The writer resolves when forward extremities or prev events disagree; `roomserver
verify` resolves a room's extremities again to check its current state. Both use
`NidResolver`, which reads stored events and snapshots and writes nothing.

A resolution costs what the conflict costs, not what the room costs: the input states
are compared on NIDs, only the keys they disagree on are named in Matrix strings for
the algorithm, and the keys they agree on reach it as a mapping that names an entry
only when the algorithm looks it up (the auth checks read a few power levels, join
rules and member keys). The answer is kept as the entries of the differing keys, the
only ones where the resolved state can differ from any input, and remembered by the
set of input snapshots, which a forked room resolves again after every event that
does not change a branch's state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence

from worker.matrix.events import CREATE, Event, StateKey, StateMap
from worker.matrix.room_versions import get_room_version
from worker.matrix.state_res import KeptAnswers, resolve_conflicts
from worker.storage.auth_citers import AuthCiters
from worker.storage.blocks import NidState, NidStateKey
from worker.storage.cache_budget import DEFAULT_BUDGET, CacheBudget
from worker.storage.database import Database, StorageError
from worker.storage.events import EventStore
from worker.storage.lru import BoundedMemo, LruByWeight
from worker.storage.schema import STATUS_OUTLIER, STATUS_REJECTED
from worker.storage.state import StateStore, StateView

#: The bounds at the default cache budget (worker.storage.cache_budget), which a
#: resolver built without a budget reads when it is made.
#: Entries of each memo of facts about settled events (`BoundedMemo`: emptied when full).
EVENT_MEMO_ENTRIES = DEFAULT_BUDGET.bound("event_memos")

#: Resolutions kept, weighed by their differing entries (~150 bytes each with the key).
RESOLUTION_CACHE_ENTRIES = DEFAULT_BUDGET.bound("resolutions")

#: Auth chain IDs kept for the conflicted events' walks, over all the chains kept
#: (~55 bytes an ID).
AUTH_CHAIN_CACHE_IDS = DEFAULT_BUDGET.bound("auth_chains")

#: Events a walk up the auth DAG may visit before it gives up for the walk down (which
#: costs the room's size): a walk up that has not found an agreed event by then is
#: exploring a large region no agreed event cites.
AGREED_REACH_VISITS = 2_000

#: The differing keys of several snapshots with the resolved event NID of each (0: the
#: key is absent from the resolved state). Every other key has the same event in all
#: the inputs and in the resolution.
Changes = dict[NidStateKey, int]


class NidResolver:
    """The room version's resolution algorithm, given and giving NID state maps."""

    def __init__(
        self,
        db: Database,
        state: StateStore,
        events: EventStore,
        budget: CacheBudget | None = None,
    ) -> None:
        """Without a `budget`, the bounds are the module's (the default budget's)."""
        if budget is None:
            memo_entries, cache_entries = EVENT_MEMO_ENTRIES, RESOLUTION_CACHE_ENTRIES
            chain_ids, citer_weight = AUTH_CHAIN_CACHE_IDS, DEFAULT_BUDGET.bound("auth_citers")
        else:
            memo_entries, cache_entries = budget.bound("event_memos"), budget.bound("resolutions")
            chain_ids, citer_weight = budget.bound("auth_chains"), budget.bound("auth_citers")
        self.db = db
        self.state = state
        self.events = events
        #: (room version, input snapshots) → changes. Snapshots and events never
        #: change once committed, so an entry stays right unless the resolution read
        #: something that may still change (see `_unsettled`) or the transaction that
        #: stored its inputs is undone, when NIDs may be reused (then it is cleared,
        #: with every memo below: see `_forget`).
        self.cache: LruByWeight[tuple[str, frozenset[int]], Changes] = LruByWeight(cache_entries)
        #: Set when the resolution under way looked up an event that is unknown or an
        #: outlier: either may become a different answer later (the event arrives, or
        #: the outlier is promoted and rejected), so that resolution is not remembered.
        self._unsettled = False
        #: Stored events that are no outliers, by ID, with whether each was rejected:
        #: facts that never change once committed. The auth difference walks a large
        #: room's auth events over and over (each resolution starts afresh), and the
        #: event store's LRU costs several times a plain dict lookup.
        self._settled: BoundedMemo[str, tuple[Event, bool]] = BoundedMemo(memo_entries)
        #: The rooms' auth DAGs read upwards, for `_AgreedState.reached`.
        self.citers = AuthCiters(
            db.conn, db.on_rollback_once, citer_weight, write_deferred=db.write_deferred
        )
        #: Event ID → the IDs in its auth chain (itself excluded), for the chains whose
        #: every event is settled (see `_settled`): an event's auth events are part of
        #: its ID, so such a chain never changes. The auth difference unions the chains
        #: of the conflicted events; a forked room's conflict holds the same events, or
        #: events citing them, resolution after resolution.
        self._chains: LruByWeight[str, frozenset[str]] = LruByWeight(chain_ids)
        #: Event ID → the NID of a state event whose auth chain holds it, as the last
        #: walk up from it found (`_AgreedState.reached`): auth edges never change, so
        #: while that event is still agreed on, the next walk's answer is known.
        self.witnesses: BoundedMemo[str, int] = BoundedMemo(memo_entries)
        #: Answers about events kept across resolutions (hashed event IDs only): the
        #: auth rules' outcomes, power levels parents, auth types, power events,
        #: senders' levels.
        self._kept = KeptAnswers(
            BoundedMemo(memo_entries),
            BoundedMemo(memo_entries),
            BoundedMemo(memo_entries),
            BoundedMemo(memo_entries),
            BoundedMemo(memo_entries),
        )
        #: `EventSource.usable_keyed` of the events in `_settled`: facts as lasting.
        self._usable: BoundedMemo[str, tuple[StateKey, Event] | None] = BoundedMemo(memo_entries)
        #: State keys in NIDs and in names, both ways: the auth checks look the same
        #: few keys up in the agreed state in every resolution, and the NID tables'
        #: LRUs cost several dict reads each. Only stored names are kept.
        self._key_nids: BoundedMemo[StateKey, NidStateKey] = BoundedMemo(memo_entries)
        self._key_names: BoundedMemo[NidStateKey, StateKey] = BoundedMemo(memo_entries)

    def _forget(self) -> None:
        """Drop every answer kept across resolutions: the transaction (or input) that
        stored events they read was undone, and NIDs and IDs may come back different.
        Registered once per transaction and input (`on_rollback_once`), before a
        resolution adds anything."""
        self.cache.clear()
        self._settled.clear()
        self._chains.clear()
        self.witnesses.clear()
        self._kept.clear()
        self._usable.clear()
        self._key_nids.clear()
        self._key_names.clear()

    def resolve(self, room_version: str, snapshots: Sequence[int]) -> NidState:
        """The resolution of several snapshots as a NID state map; writes nothing."""
        state = dict(self.state.load(snapshots[0]))
        if len(set(snapshots)) == 1:
            return state
        for key, nid in self.changes(room_version, snapshots).items():
            if nid:
                state[key] = nid
            else:
                state.pop(key, None)
        return state

    def changes(self, room_version: str, snapshots: Sequence[int]) -> Changes:
        """The resolved entries of the keys the snapshots disagree on (see `Changes`).

        The resolver works on Matrix strings. Most events it returns come from one of
        the input states, whose NIDs are at hand; but v2 and v2.1 may also admit an
        event from the auth difference or the conflicted subgraph that is in none of
        them (a state the room passed through on one branch), which is looked up in
        the event store, keys included, since every event it can return is stored.
        Such an event's key may be in no input at all; it is among the changes then."""
        cache_key = (room_version, frozenset(snapshots))
        cached = self.cache.get(cache_key)
        if cached is not None:
            return cached
        states = [self.state.load(s) for s in snapshots]
        differing_keys = self.state.differing_keys(snapshots)
        if not differing_keys:
            return {}
        self.db.on_rollback_once(self._forget)
        key_names = {key: self._key_name(key) for key in differing_keys}
        ids = self.events.ids_of({s[k] for s in states for k in differing_keys if k in s})
        differing, back = _named(states, differing_keys, key_names, ids)
        self._unsettled = False
        room_event = self.events.by_nid(next(iter(ids)))
        agreed = _AgreedState(self, states[0], differing_keys, room_event.row.room_nid)
        version = get_room_version(room_version)
        hashed_ids = not version.auth_events_are_pairs
        resolved = resolve_conflicts(
            version,
            agreed,
            differing,
            self._event_for_resolution,
            # Legacy (v1, v2) event IDs are chosen by their servers: they do not fix
            # their events, and auth events may cite in a cycle (the walk copes).
            auth_chain=self._auth_chain if hashed_ids else None,
            is_rejected=self._is_rejected,
            agreed_reach=agreed.reached,
            kept=self._kept if hashed_ids else None,
            usable_of=self._usable_keyed,
        )
        self._look_up_elsewhere(resolved.values(), back)
        changes: Changes = dict.fromkeys(differing_keys, 0)
        changes.update(back[event_id] for event_id in resolved.values())
        # The create event is where v12 rooms take their create event from when an
        # event cites none; which one wins when the inputs disagree depends on their
        # order, so only order-free answers are remembered.
        if not self._unsettled and all(name[0] != CREATE for name in key_names.values()):
            self.cache.put(cache_key, changes, len(changes) + 1)
        return changes

    def _look_up_elsewhere(
        self, chosen: Iterable[str], back: dict[str, tuple[NidStateKey, int]]
    ) -> None:
        """Add to `back` the key and NID of each chosen event that was in no input
        state (v2 and v2.1 may choose one from the auth difference or the conflicted
        subgraph); every such event is stored, or this is a bug of ours."""
        elsewhere = [event_id for event_id in chosen if event_id not in back]
        if not elsewhere:
            return
        rows = self.events.rows(elsewhere)
        for event_id in elsewhere:
            row = rows.get(event_id)
            if row is None or not row.state_key_nid:
                raise StorageError(
                    f"state resolution chose {event_id}, which is not a stored state event"
                )
            back[event_id] = ((row.type_nid, row.state_key_nid), row.nid)

    def _auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        """The IDs in the auth chains of the given events (`AuthChain`): the union of
        each one's chain, walked once per event and kept while settled.

        The union holds the chain of every event in it (a chain holds its events'
        chains), so an event already in it adds nothing; taking the longest chains
        first, the events they hold (the power levels and join rules that members'
        events cite, say) are skipped."""
        chain: set[str] = set()
        roots = [(self._chain(event_id), event_id) for event_id in set(event_ids)]
        roots.sort(key=lambda root: len(root[0]), reverse=True)
        for below, event_id in roots:
            if event_id not in chain:
                chain |= below
        return chain

    def _chain(self, root: str) -> frozenset[str]:
        """The IDs in one event's auth chain, itself excluded.

        Depth first from the event, down to the events whose chain is kept, each event's
        chain made after its auth events' (the union of theirs and themselves). An
        unknown event cites nothing, as in the walk of `analyse_conflicts`; a chain
        that holds an unknown or outlier event, or starts at one, is not kept (the
        lookups note it for the resolution, as the walk's did), since the event may
        arrive or its status change."""
        kept = self._chains.get(root)
        if kept is not None:
            return kept
        #: The chains made by this call, kept or not, with whether each is settled.
        made: dict[str, tuple[frozenset[str], bool]] = {}
        on_stack = {root}
        stack = [(root, self._auth_ids(root))]
        while stack:
            node, auth_ids = stack[-1]
            for auth_id in auth_ids:
                if auth_id in made:
                    continue
                kept = self._chains.get(auth_id)
                if kept is not None:
                    made[auth_id] = (kept, True)
                    continue
                if auth_id in on_stack:
                    # Hashed event IDs cannot cite in a cycle; legacy ones never come here.
                    raise StorageError(f"{auth_id} is in its own auth chain")
                on_stack.add(auth_id)
                stack.append((auth_id, self._auth_ids(auth_id)))
                break
            else:
                stack.pop()
                on_stack.discard(node)
                chain: set[str] = set(auth_ids)
                settled = node in self._settled
                for auth_id in auth_ids:
                    below, below_settled = made[auth_id]
                    chain |= below
                    settled = settled and below_settled
                frozen = frozenset(chain)
                made[node] = (frozen, settled)
                if settled:
                    self._chains.put(node, frozen, len(frozen) + 1)
        return made[root][0]

    def _auth_ids(self, event_id: str) -> tuple[str, ...]:
        found = self._lookup(event_id)
        return found[0].auth_event_ids if found is not None else ()

    def remembers(self, room_version: str, snapshots: Sequence[int]) -> bool:
        """Whether the resolution of these snapshots is remembered: final, unless the
        transaction is undone (`changes` of a single snapshot is nothing to remember)."""
        return self.cache.get((room_version, frozenset(snapshots))) is not None

    def to_state_map(self, state: NidState) -> StateMap:
        """A NID state map in Matrix strings: (type, state key) → event ID."""
        ids = self.events.ids_of(state.values())
        type_name, sk_name = self.db.type_name, self.db.state_key_name
        return {(type_name(t), sk_name(k)): ids[e] for (t, k), e in state.items()}

    def _key_name(self, key: NidStateKey) -> StateKey:
        try:
            return self._key_names[key]
        except KeyError:
            pass
        name = self._key_names[key] = (self.db.type_name(key[0]), self.db.state_key_name(key[1]))
        return name

    def _key_nid(self, key: StateKey) -> NidStateKey | None:
        """The NIDs of a state key, or None if no stored state has it (writes nothing)."""
        try:
            return self._key_nids[key]
        except KeyError:
            pass
        type_nid = self.db.type_nid(key[0], create=False)
        state_key_nid = self.db.state_key_nid(key[1], create=False) if type_nid else 0
        if not state_key_nid:
            return None  # not kept: a later event may store the name
        nid_key = self._key_nids[key] = (type_nid, state_key_nid)
        return nid_key

    def _lookup(self, event_id: str) -> tuple[Event, bool] | None:
        """The event and whether it was rejected; notes an unknown or outlier event."""
        settled = self._settled.get(event_id)
        if settled is not None:
            return settled
        stored = self.events.by_id(event_id)
        if stored is None:
            self._unsettled = True
            return None
        found = (stored.event, stored.row.status == STATUS_REJECTED)
        if stored.row.status == STATUS_OUTLIER:
            self._unsettled = True
        else:
            self._settled[event_id] = found
        return found

    def _usable_keyed(self, event_id: str) -> tuple[StateKey, Event] | None:
        """The event with its state key if it is known, a state event and not rejected
        (`EventSource.usable_keyed`), kept for settled events."""
        try:
            return self._usable[event_id]
        except KeyError:
            pass
        found = self._lookup(event_id)
        if found is None:
            return None
        event, rejected = found
        keyed = (event.key, event) if event.is_state and not rejected else None
        if event_id in self._settled:
            self._usable[event_id] = keyed
        return keyed

    def _event_for_resolution(self, event_id: str) -> Event | None:
        found = self._lookup(event_id)
        return found[0] if found is not None else None

    def _is_rejected(self, event_id: str) -> bool:
        found = self._lookup(event_id)
        return found is not None and found[1]


class _AgreedState(Mapping[StateKey, str]):
    """The entries all the input states agree on, in Matrix strings, named on lookup.

    The algorithm looks up a few keys here (the auth checks' power levels, join rules
    and members); converting the whole state up front would cost what the room costs.
    Reading all values (a rare branch of the auth difference) names them all at once.
    """

    __slots__ = ("_excluded", "_named", "_resolver", "_room_nid", "_state")

    def __init__(
        self, resolver: NidResolver, state: StateView, excluded: set[NidStateKey], room_nid: int
    ) -> None:
        self._resolver = resolver
        self._state = state
        self._excluded = excluded
        self._named: dict[StateKey, str | None] = {}
        self._room_nid = room_nid

    def reached(self, candidates: set[str]) -> set[str] | None:
        """The candidates in the auth chain of some agreed event (`AgreedReach`).

        From each candidate, walk up through the events that cite it, level by level,
        until an agreed event turns up (the candidate is in its chain) or nothing cites
        further (it is in none). The answer is usually one step up: what the room's
        state cites is cited by that state. Gives up (None) when the room's index is
        incomplete or the walks visit more events than `AGREED_REACH_VISITS` plus the
        state's size (about what the walk down would visit). A candidate whose
        witness from an earlier walk (`NidResolver.witnesses`) is still agreed on needs
        no walk: a forked room asks about the same superseded events again and again."""
        citers = self._resolver.citers.room(self._room_nid)
        if not citers.complete:
            return None
        state, excluded, keys, by_nid = self._state, self._excluded, citers.keys, citers.by_nid
        witnesses = self._resolver.witnesses
        found: set[str] = set()
        for candidate in candidates:
            witness = witnesses.get(candidate)
            if witness is not None:
                key = keys.get(witness)
                if key is not None and state.get(key) == witness and key not in excluded:
                    found.add(candidate)
        unknown = candidates - found
        rows = self._resolver.events.rows(unknown)
        budget = AGREED_REACH_VISITS + len(state)
        #: Events whose every citer, up to the end, was visited without an agreed one.
        barren: set[int] = set()
        for candidate in unknown:
            row = rows.get(candidate)
            # Level by level; each level is the citer lists of the one before, read
            # in place: the create event's list is the room's state events, and the
            # first few usually settle it.
            level: list[Sequence[int]] = [citers.by_id.get(candidate, ())]
            if row is not None:
                level.append(by_nid.get(row.nid, ()))
            seen: set[int] = set()
            while level and candidate not in found:
                following: list[Sequence[int]] = []
                for nid in itertools.chain.from_iterable(level):
                    if nid in seen or nid in barren:
                        continue
                    key = keys[nid]
                    if state.get(key) == nid and key not in excluded:
                        found.add(candidate)
                        witnesses[candidate] = nid
                        break
                    budget -= 1
                    if budget < 0:
                        return None
                    seen.add(nid)
                    cited_by = by_nid.get(nid)
                    if cited_by:
                        following.append(cited_by)
                level = following
            if candidate not in found:
                barren |= seen
        return found

    def _lookup(self, key: StateKey) -> str | None:
        try:
            return self._named[key]
        except KeyError:
            pass
        event_id = None
        nid_key = self._resolver._key_nid(key)
        if nid_key is not None and nid_key not in self._excluded:
            nid = self._state.get(nid_key)
            if nid is not None:
                event_id = self._resolver.events.ids_of((nid,))[nid]
        self._named[key] = event_id
        return event_id

    def __getitem__(self, key: StateKey) -> str:
        event_id = self._lookup(key)
        if event_id is None:
            raise KeyError(key)
        return event_id

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self._lookup(key) is not None

    def get(self, key: StateKey, default: str | None = None) -> str | None:  # type: ignore[override]
        # The auth checks' hot path: names already looked up cost one dict read.
        try:
            event_id = self._named[key]
        except KeyError:
            event_id = self._lookup(key)
        return event_id if event_id is not None else default

    def _nid_items(self) -> Iterator[tuple[NidStateKey, int]]:
        excluded = self._excluded
        return ((k, nid) for k, nid in self._state.items() if k not in excluded)

    def __iter__(self) -> Iterator[StateKey]:
        name = self._resolver._key_name
        return (name(k) for k, _ in self._nid_items())

    def __len__(self) -> int:
        return len(self._state) - sum(1 for k in self._excluded if k in self._state)

    def values(self) -> list[str]:  # type: ignore[override]
        nids = [nid for _, nid in self._nid_items()]
        ids = self._resolver.events.ids_of(nids)
        return [ids[nid] for nid in nids]


def _named(
    states: Sequence[Mapping[NidStateKey, int]],
    differing_keys: Iterable[NidStateKey],
    key_names: Mapping[NidStateKey, StateKey],
    ids: Mapping[int, str],
) -> tuple[list[StateMap], dict[str, tuple[NidStateKey, int]]]:
    """The input states' differing entries in Matrix strings, for the resolver, and
    the way back from each event ID to its key and NID."""
    back: dict[str, tuple[NidStateKey, int]] = {}
    differing: list[StateMap] = []
    for state in states:
        named: StateMap = {}
        for key in differing_keys:
            nid = state.get(key)
            if nid is not None:
                event_id = ids[nid]
                named[key_names[key]] = event_id
                back[event_id] = (key, nid)
        differing.append(named)
    return differing, back
