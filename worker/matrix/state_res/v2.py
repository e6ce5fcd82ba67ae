"""State resolution v2 (room versions 2–11) and v2.1 (room version 12).

The spec's algorithm (`content/rooms/fragments/v2-state-res.md`, and `v12.md` for
v2.1) in five steps after splitting the maps. Where the spec is silent the choices are
Synapse's, so that this server converges with the servers most rooms are on:

- An event that `get_event` does not know is dropped from the full conflicted set (it
  cannot be authorized); an unknown auth event is skipped.
- A rejected event is never admitted; a rejected auth event is never used.
- A key missing from some maps is conflicted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from worker.matrix.events import StateKey, StateMap
from worker.matrix.room_versions import StateResAlgorithm
from worker.matrix.state_res.difference import AgreedReach, AuthChain, analyse_conflicts
from worker.matrix.state_res.iterative import PartialState, iterative_auth_checks
from worker.matrix.state_res.ordering import mainline_order, reverse_topological_power_order
from worker.matrix.state_res.source import POWER_LEVELS_KEY, EventSource
from worker.matrix.state_res.split import ConflictedState


def resolve_v2_conflicts(
    unconflicted: Mapping[StateKey, str],
    differing: Sequence[Mapping[StateKey, str]],
    source: EventSource,
    auth_chain: AuthChain | None = None,
    agreed_reach: AgreedReach | None = None,
) -> StateMap:
    """The resolved entries outside the unconflicted state map, given the split.

    `unconflicted` holds the keys every input map gives the same event, and
    `differing[i]` holds input map i's entries for every other key. The caller adds
    the unconflicted map itself (step 5), so it can stay on its own terms (a large map
    it never copies, or one that names its entries on demand): this only looks keys
    up in it, and reads all its values only for the rare auth difference candidates
    that no conflicted or unconflicted entry explains (see `analyse_conflicts`).
    """
    conflicted: ConflictedState = {}
    for entries in differing:
        for key, event_id in entries.items():
            conflicted.setdefault(key, set()).add(event_id)
    if not conflicted:
        return {}
    v2_1 = source.room_version.state_res is StateResAlgorithm.V2_1
    conflicts = analyse_conflicts(
        differing,
        unconflicted,
        conflicted,
        source,
        with_subgraph=v2_1,
        auth_chain=auth_chain,
        agreed_reach=agreed_reach,
    )
    full_conflicted: set[str] = set().union(*conflicted.values())
    full_conflicted |= conflicts.auth_difference
    full_conflicted |= conflicts.conflicted_subgraph
    known = {e: event for e in full_conflicted if (event := source.event(e)) is not None}
    full_conflicted = set(known)

    # 1. Power events and their auth ancestors in the set, power-ordered.
    is_power = source.is_power
    power_events = [e for e, event in known.items() if is_power(e, event)]
    ordered_power = reverse_topological_power_order(power_events, full_conflicted, source)

    # 2. Iterative auth checks from the unconflicted state map (v2.1: from nothing).
    state = PartialState({} if v2_1 else unconflicted)
    iterative_auth_checks(ordered_power, state, source)

    # 3. The rest by mainline ordering on the power levels just resolved.
    in_power_order = set(ordered_power)
    remaining = [e for e in full_conflicted if e not in in_power_order]
    ordered_rest = mainline_order(remaining, state.get(POWER_LEVELS_KEY), source)

    # 4. Iterative auth checks of the rest on the partial state.
    iterative_auth_checks(ordered_rest, state, source)

    # 5. The unconflicted state map wins over whatever the checks put in its keys:
    # what is left for the caller to add to it is the rest.
    return {key: event_id for key, event_id in state.changes.items() if key not in unconflicted}
