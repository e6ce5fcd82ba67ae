"""Matrix state resolution: v1 (room version 1), v2 (2–11) and v2.1 (12).

`resolve_state` is the one entry point the pipeline needs; the pieces it is built from
(splitting maps, the auth difference, the two orderings) are exported for reuse and
tests. Pure code: events come in through a synchronous `get_event`, nothing is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from worker.matrix.events import StateKey, StateMap
from worker.matrix.room_versions import RoomVersion, StateResAlgorithm
from worker.matrix.state_res.difference import (
    AgreedReach,
    AuthChain,
    Conflicts,
    analyse_conflicts,
)
from worker.matrix.state_res.difference import auth_difference as _auth_difference
from worker.matrix.state_res.ordering import (
    is_power_event,
    mainline_order,
    reverse_topological_power_order,
)
from worker.matrix.state_res.source import (
    CREATE_KEY,
    AuthOutcomes,
    EventSource,
    GetEvent,
    IsRejected,
    KeptAnswers,
    PowerLevelsParents,
    UsableKeyed,
    first_create_ids,
)
from worker.matrix.state_res.split import (
    ConflictedState,
    split_conflicted,
    split_conflicted_v1,
    split_differing,
)
from worker.matrix.state_res.v1 import resolve_v1_conflicts
from worker.matrix.state_res.v2 import resolve_v2_conflicts

__all__ = [
    "AgreedReach",
    "AuthChain",
    "AuthOutcomes",
    "ConflictedState",
    "Conflicts",
    "EventSource",
    "GetEvent",
    "IsRejected",
    "KeptAnswers",
    "PowerLevelsParents",
    "UsableKeyed",
    "analyse_conflicts",
    "auth_difference",
    "is_power_event",
    "mainline_order",
    "resolve_conflicts",
    "resolve_state",
    "reverse_topological_power_order",
    "split_conflicted",
    "split_conflicted_v1",
    "split_differing",
]


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: GetEvent,
    auth_chain: AuthChain | None = None,
    is_rejected: IsRejected | None = None,
) -> StateMap:
    """Resolve the states after several prev events into the state before their child.

    - `get_event` looks up a stored event (rejected ones too) and returns None for an
      unknown one. Unknown events are treated as Synapse treats them: an unknown
      conflicted or auth-difference event cannot be authorized and is left out (in v1 as
      well), an unknown auth event is skipped, and an unconflicted entry is kept as is
      (it is never looked at). Nothing raises for a missing event.
    - `auth_chain`, when storage can answer it cheaply, returns the IDs in the auth
      chains of the given events (without them). Without it, chains are walked through
      `get_event`; either way only the conflicted events' chains are walked in full.
    - `is_rejected` marks events that failed authorization on receipt. A rejected event
      is never admitted to the resolved state, and never used as an auth event (spec:
      rejected auth events are excluded). State maps never hold rejected events; auth
      chains can reach one only through other rejected events.

    All events must belong to one room; the caller guarantees it. The result is a new
    dict the caller owns.
    """
    if not state_sets:
        return {}
    if len(state_sets) == 1:
        return dict(state_sets[0])
    unconflicted, differing = split_differing(state_sets)
    resolved = resolve_conflicts(
        room_version, unconflicted, differing, get_event, auth_chain, is_rejected
    )
    resolved.update(unconflicted)
    return resolved


def resolve_conflicts(
    room_version: RoomVersion,
    unconflicted: Mapping[StateKey, str],
    differing: Sequence[Mapping[StateKey, str]],
    get_event: GetEvent,
    auth_chain: AuthChain | None = None,
    is_rejected: IsRejected | None = None,
    agreed_reach: AgreedReach | None = None,
    kept: KeptAnswers | None = None,
    usable_of: UsableKeyed | None = None,
) -> StateMap:
    """`resolve_state` for callers that split the state maps themselves.

    `unconflicted` holds the keys on which every map agrees (present in all, same
    event); `differing[i]` holds map i's entries for every other key. The resolved
    state is `unconflicted` with the returned entries added (their keys are never in
    `unconflicted`). A key among the differing ones that is not returned is absent
    from the resolved state.

    The point is the cost: a caller whose maps are large and mostly equal, and kept in
    another form (the store's NID maps), splits them there and names only the
    differing part; `unconflicted` is only looked up by key (and its values read in
    full only in the rare case `analyse_conflicts` describes, and not even then when
    `agreed_reach` answers), so it may be a mapping that names entries on demand.
    `kept`, if given, keeps answers about events across resolutions (see
    `KeptAnswers` for when that is sound); `usable_of` answers
    `EventSource.usable_keyed` from the caller's own memo.
    """
    if not differing or not any(differing):
        return {}
    creates = [
        state if CREATE_KEY in state else {CREATE_KEY: create}
        for state in differing
        if (create := state.get(CREATE_KEY) or unconflicted.get(CREATE_KEY)) is not None
    ]
    source = EventSource(
        room_version,
        get_event,
        is_rejected,
        first_create_ids(creates),
        kept,
        usable_of,
    )
    if room_version.state_res is StateResAlgorithm.V1:
        return resolve_v1_conflicts(unconflicted, differing, source)
    return resolve_v2_conflicts(unconflicted, differing, source, auth_chain, agreed_reach)


def auth_difference(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: GetEvent,
    auth_chain: AuthChain | None = None,
) -> set[str]:
    """The auth difference of the state maps (each map's own events count as in its chain)."""
    source = EventSource(room_version, get_event)
    return _auth_difference(state_sets, source, auth_chain)
