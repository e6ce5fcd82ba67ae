"""Walks of a room's event graph backwards: `/get_missing_events` and `/backfill`.

Both federation endpoints answer "which events came before these?" with a bounded walk
over `prev_events`. The walks here are pure: the caller supplies `get_node`, which
answers for one event ID with a `DagNode` (or None when this server does not have the
event in this room, or cannot serve it), and applies history visibility
(`worker.matrix.visibility`) to the events returned.

Server-server API, "Backfilling and retrieving missing events":

- `/get_missing_events`: "Retrieves previous events that the sender is missing. This is
  done by doing a breadth-first walk of the `prev_events` for the `latest_events`,
  ignoring any events in `earliest_events` and stopping at the `limit`." `limit`
  defaults to 10 and `min_depth` ("The minimum depth of events to retrieve") to 0.
- `/backfill`: "Starting from the PDU ID(s) given in the `v` argument, the PDUs given in
  `v` and the PDUs that preceded them are retrieved, up to the total number given by
  the `limit`."

The spec leaves the order of the answers, and which events win when the limit cuts a
walk short, to the server. Both follow Synapse (storage `event_federation.py`,
`_get_missing_events` and `_get_backfill_events`), so that peers see what they are used
to; where Synapse's choice is arbitrary (set iteration order) the walk here picks the
newest events first, newest meaning greatest (depth, stream ordering).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

#: `/get_missing_events` default `limit` (spec).
DEFAULT_MISSING_EVENTS_LIMIT: Final = 10
#: Synapse serves at most 20 missing events per request, whatever the limit asked.
MAX_MISSING_EVENTS: Final = 20
#: Synapse serves at most 100 events per `/backfill` request (and asks for 100).
MAX_BACKFILL_EVENTS: Final = 100


@dataclass(frozen=True, slots=True)
class DagNode:
    """What a walk needs to know of one stored event."""

    event_id: str
    depth: int
    #: This server's order of arrival (a stream position, an event NID): it breaks ties
    #: between events of equal depth, later arrivals first.
    stream_ordering: int
    prev_event_ids: tuple[str, ...]

    @property
    def recency(self) -> tuple[int, int]:
        """Greater is newer: depth first, then arrival order."""
        return (self.depth, self.stream_ordering)


#: `get_node(event_id)`: the event as a `DagNode`, or None if this server cannot serve it:
#: unknown here or in another room. Synapse walks outliers (events stored without their
#: state) in `/get_missing_events` but not in `/backfill`, whose answers it cannot check
#: for visibility; a lookup for `backfill_events` should answer None for them.
NodeLookup = Callable[[str], DagNode | None]


def _known(get_node: NodeLookup, event_ids: Iterable[str]) -> list[DagNode]:
    """The nodes for `event_ids` this server has, each once, in the given order."""
    nodes: dict[str, DagNode] = {}
    for event_id in event_ids:
        if event_id not in nodes and (node := get_node(event_id)) is not None:
            nodes[event_id] = node
    return list(nodes.values())


def _newest_first(nodes: Iterable[DagNode]) -> list[DagNode]:
    return sorted(nodes, key=lambda node: node.recency, reverse=True)


def missing_events(
    get_node: NodeLookup,
    earliest_events: Iterable[str],
    latest_events: Iterable[str],
    limit: int = DEFAULT_MISSING_EVENTS_LIMIT,
    min_depth: int = 0,
) -> list[str]:
    """The event IDs `/get_missing_events` returns, oldest layer first.

    A breadth-first walk from `latest_events` (themselves not returned) through
    `prev_events`, never entering `earliest_events`, taking at most `limit` events
    (callers cap `limit`, see `MAX_MISSING_EVENTS`). Each layer of the walk is the set
    of events first reached at that distance; when the limit cuts a layer, its newest
    events are kept. Events below `min_depth` are neither returned nor walked through.
    The answer lists the farthest layer first and, within a layer, the oldest event
    first: "approximately chronological", as Synapse puts it.
    """
    seen = set(earliest_events)
    # Only the latest events this server has start the walk; the ones the sender says
    # it already has are skipped.
    front = _newest_first(
        node for node in _known(get_node, latest_events) if node.event_id not in seen
    )
    walked: list[DagNode] = []
    while front and len(walked) < limit:
        layer: list[DagNode] = []
        for node in front:
            for prev in _known(get_node, node.prev_event_ids):
                if prev.event_id in seen or prev.depth < min_depth:
                    continue
                seen.add(prev.event_id)
                layer.append(prev)
        layer = _newest_first(layer)[: limit - len(walked)]
        walked.extend(layer)
        front = layer
    # The walk went newest to oldest; the answer reads oldest to newest.
    return [node.event_id for node in reversed(walked)]


def backfill_events(get_node: NodeLookup, seed_event_ids: Iterable[str], limit: int) -> list[str]:
    """The event IDs `/backfill` returns for `v` = `seed_event_ids`, newest first.

    The seeds and the events before them, at most `limit` (callers cap it, see
    `MAX_BACKFILL_EVENTS`), visited newest first from a priority queue: each visited
    event offers its newest prev events, as many as the answer still has room for, and
    the newest event offered so far is visited next. The answer is ordered by depth,
    then arrival, both descending, as Synapse sends it.
    """
    queue: list[tuple[int, int, str]] = []

    def offer(node: DagNode) -> None:
        # heapq pops the smallest entry first: negate for newest first.
        heapq.heappush(queue, (-node.depth, -node.stream_ordering, node.event_id))

    for seed in _known(get_node, seed_event_ids):
        offer(seed)
    visited: dict[str, DagNode] = {}
    while queue and len(visited) < limit:
        _, _, event_id = heapq.heappop(queue)
        if event_id in visited:
            continue
        node = get_node(event_id)
        if node is None:
            continue
        visited[event_id] = node
        # Only the newest prev events that could still fit are offered (Synapse's
        # `LIMIT` on this step); those already visited take their share of that room.
        room_left = limit - len(visited)
        for prev in _newest_first(_known(get_node, node.prev_event_ids))[:room_left]:
            if prev.event_id not in visited:
                offer(prev)
    return [node.event_id for node in _newest_first(visited.values())]
