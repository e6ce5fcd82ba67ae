"""The auth difference and (v2.1) the conflicted state subgraph.

Both are computed from one walk over the auth chains of the *conflicted* events only.

Like Synapse (whose chain index and in-memory path both do so), a state map's "full
auth chain" here includes the map's own events. This matters only for unconflicted
events, which then lie in every full chain and never in the difference; conflicted
events are in the full conflicted set either way.

Why the unconflicted events' chains need not be walked: every such event is in every
map, so its whole chain is in every full chain. Writing K for the union of those
chains and C_i for the chains of map i's conflicted events, map i's full chain is
K ∪ C_i, and the auth difference is (∪C_i − ∩C_i) − K. The first part comes from the
small conflicted region. K only matters for candidates that are neither conflicted
nor unconflicted events themselves (superseded state cited on one side of a fork);
only when such candidates exist is K probed: by storage's `agreed_reach` when it has
one (a walk up from the candidates), else by a walk down from the unconflicted events
that stops at events every conflicted chain already holds (their chains hold no
candidate) and as soon as every candidate is accounted for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from worker.matrix.events import StateKey
from worker.matrix.state_res.source import EventSource
from worker.matrix.state_res.split import ConflictedState, split_conflicted

#: Storage's fast path: the IDs in the auth chains of the given events, without them.
AuthChain = Callable[[Iterable[str]], set[str]]

#: Storage's fast path for K: of the given events, those in the auth chain of some
#: unconflicted event (found by walking up from them through the events that cite
#: them, which stops at the first unconflicted one), or None when it cannot tell.
AgreedReach = Callable[[set[str]], set[str] | None]


@dataclass(frozen=True, slots=True)
class Conflicts:
    auth_difference: set[str]
    #: Empty unless asked for (v2.1).
    conflicted_subgraph: set[str]


class _Region:
    """The conflicted events' auth chains: which events some maps' chains hold but not all."""

    __slots__ = ("edges", "everywhere", "partial", "postorder")

    def __init__(self) -> None:
        #: The events in the full chain of every map's conflicted events (the events
        #: themselves included), and those in some but not all of them.
        self.everywhere: set[str] = set()
        self.partial: set[str] = set()
        #: event ID → its auth event IDs (only filled by `walk`).
        self.edges: dict[str, tuple[str, ...]] = {}
        #: Every event after all of its auth events (only filled by `walk`).
        self.postorder: list[str] = []

    def walk(self, roots: Sequence[set[str]], source: EventSource) -> None:
        """Depth-first walk from every root, then push each map's bit down the DAG."""
        edges = self.edges
        postorder = self.postorder
        for root in set().union(*roots):
            if root in edges:
                continue
            edges[root] = source.auth_ids(root)
            stack = [(root, iter(edges[root]))]
            while stack:
                node, children = stack[-1]
                for child in children:
                    if child not in edges:
                        edges[child] = source.auth_ids(child)
                        stack.append((child, iter(edges[child])))
                        break
                else:
                    stack.pop()
                    postorder.append(node)
        masks: dict[str, int] = {}
        for index, ids in enumerate(roots):
            bit = 1 << index
            for event_id in ids:
                masks[event_id] = masks.get(event_id, 0) | bit
        for node in reversed(postorder):
            mask = masks.get(node, 0)
            for child in edges[node]:
                masks[child] = masks.get(child, 0) | mask
        full = (1 << len(roots)) - 1
        for event_id, mask in masks.items():
            (self.everywhere if mask == full else self.partial).add(event_id)

    def from_chains(self, roots: Sequence[set[str]], auth_chain: AuthChain) -> None:
        """The same sets from storage's chains, by set operations on whole chains."""
        chains = [auth_chain(ids) | ids for ids in roots]
        self.everywhere = set.intersection(*chains)
        self.partial = set.union(*chains) - self.everywhere


def analyse_conflicts(
    state_sets: Sequence[Mapping[StateKey, str]],
    unconflicted: Mapping[StateKey, str],
    conflicted: ConflictedState,
    source: EventSource,
    *,
    with_subgraph: bool,
    auth_chain: AuthChain | None = None,
    agreed_reach: AgreedReach | None = None,
) -> Conflicts:
    """The auth difference of `state_sets`, and their conflicted state subgraph if asked."""
    roots = [{state[key] for key in conflicted if key in state} for state in state_sets]
    region = _Region()
    if with_subgraph or auth_chain is None:
        region.walk(roots, source)
    else:
        region.from_chains(roots, auth_chain)

    conflicted_ids: set[str] = set().union(*roots)
    difference, superseded = _classify(region.partial, conflicted_ids, unconflicted, source)
    if superseded:
        reached = agreed_reach(superseded) if agreed_reach is not None else None
        if reached is None:
            # A caller with `agreed_reach` keeps chains for the conflicted events, not
            # for the whole state: the walk down stops once the candidates are found.
            reached = _reached_from_unconflicted(
                superseded,
                unconflicted,
                region.everywhere,
                source,
                auth_chain if agreed_reach is None else None,
            )
        difference |= superseded - reached

    subgraph: set[str] = set()
    if with_subgraph:
        edges = region.edges
        for node in region.postorder:
            if node in conflicted_ids or any(child in subgraph for child in edges[node]):
                subgraph.add(node)
    return Conflicts(difference, subgraph)


def _classify(
    partial: Iterable[str],
    conflicted_ids: set[str],
    unconflicted: Mapping[StateKey, str],
    source: EventSource,
) -> tuple[set[str], set[str]]:
    """The events in some but not all auth chains, split into those in the auth
    difference for certain (conflicted events) and the candidates to check against the
    agreed state's reach (superseded: neither conflicted nor unconflicted state); the
    unconflicted state's own events are in neither."""
    unconflicted_ids: set[str] | None = None
    difference: set[str] = set()
    superseded: set[str] = set()
    usable = source.usable_keyed
    for event_id in partial:
        if event_id in conflicted_ids:
            difference.add(event_id)
            continue
        # Usually a usable state event, whose key the caller's memo may know already.
        keyed = usable(event_id)
        if keyed is not None:
            if unconflicted.get(keyed[0]) != event_id:
                superseded.add(event_id)
            continue
        event = source.event(event_id)
        if event is not None and event.is_state:
            if unconflicted.get(event.key) == event_id:
                continue
        else:
            if unconflicted_ids is None:
                unconflicted_ids = set(unconflicted.values())
            if event_id in unconflicted_ids:
                continue
        superseded.add(event_id)
    return difference, superseded


def _reached_from_unconflicted(
    candidates: set[str],
    unconflicted: Mapping[StateKey, str],
    everywhere: set[str],
    source: EventSource,
    auth_chain: AuthChain | None,
) -> set[str]:
    """The candidates that lie in the auth chain of some unconflicted event (that is, in K).

    An event every conflicted chain holds (`everywhere`, which this takes over) is
    skipped, with all it cites: its chain is in every C_i and so holds no candidate.
    """
    starts = [event_id for event_id in unconflicted.values() if event_id not in everywhere]
    if auth_chain is not None:
        return candidates & auth_chain(starts)
    # This walk can cover the room's whole membership history, so it goes level by
    # level with set operations rather than edge by edge.
    remaining = set(candidates)
    seen = everywhere
    seen.update(starts)
    frontier: Iterable[str] = starts
    while remaining:
        cited = source.cited_by(frontier)
        cited -= seen
        if not cited:
            break
        seen |= cited
        remaining -= cited
        frontier = cited
    return candidates - remaining


def auth_difference(
    state_sets: Sequence[Mapping[StateKey, str]],
    source: EventSource,
    auth_chain: AuthChain | None = None,
) -> set[str]:
    """The auth difference of the given state maps (see the module docstring)."""
    unconflicted, conflicted = split_conflicted(state_sets)
    if not conflicted:
        return set()
    return analyse_conflicts(
        state_sets, unconflicted, conflicted, source, with_subgraph=False, auth_chain=auth_chain
    ).auth_difference
