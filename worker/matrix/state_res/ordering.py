"""The two orderings of state resolution v2: reverse topological power, and mainline.

Both follow the spec's definitions and agree with Synapse (and ruma) where the spec
leaves room: the power ordering's DAG only has the auth edges *between* events of the
full conflicted set (an auth chain is followed no further than that set), and the
create event counts as a power event.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable

from worker.matrix.auth.power_levels import Level
from worker.matrix.state_res.source import EventSource, is_power_event

__all__ = ["is_power_event", "mainline_order", "reverse_topological_power_order"]


def reverse_topological_power_order(
    power_event_ids: Iterable[str],
    full_conflicted_set: Collection[str],
    source: EventSource,
) -> list[str]:
    """The power events and their auth ancestors in the full conflicted set, sorted.

    Kahn's algorithm from the oldest events (those citing nothing in the set) with a heap
    keyed on (higher sender power first, earlier origin_server_ts, smaller event ID).
    Events on an auth cycle (only possible with the free-form IDs of v1–v2) never become
    ready and are left out, as Synapse does.
    """
    graph: dict[str, list[str]] = {}
    stack = list(power_event_ids)
    while stack:
        event_id = stack.pop()
        if event_id in graph:
            continue
        cited = list(
            dict.fromkeys(a for a in source.auth_ids(event_id) if a in full_conflicted_set)
        )
        graph[event_id] = cited
        stack.extend(a for a in cited if a not in graph)

    waiting: dict[str, int] = {}
    citers: dict[str, list[str]] = {}
    ready: list[tuple[Level, int, str]] = []
    for event_id, cited in graph.items():
        if cited:
            waiting[event_id] = len(cited)
            for auth_id in cited:
                citers.setdefault(auth_id, []).append(event_id)
        else:
            ready.append(_power_key(event_id, source))
    heapq.heapify(ready)

    ordered: list[str] = []
    while ready:
        event_id = heapq.heappop(ready)[2]
        ordered.append(event_id)
        for citer in citers.get(event_id, ()):
            left = waiting[citer] - 1
            waiting[citer] = left
            if left == 0:
                heapq.heappush(ready, _power_key(citer, source))
    return ordered


def _power_key(event_id: str, source: EventSource) -> tuple[Level, int, str]:
    event = source.event(event_id)
    ts = event.origin_server_ts if event is not None else 0
    return (-source.sender_power(event_id), ts, event_id)


def mainline_order(
    event_ids: Iterable[str], power_levels_id: str | None, source: EventSource
) -> list[str]:
    """The events sorted by mainline position, then origin_server_ts, then event ID.

    Positions are counted from the oldest mainline event (1) up to the resolved power
    levels event; 0 stands for "no power levels event of the mainline in the chain" and
    sorts first, which is the spec's ∞ under its reversed comparison. Each power levels
    event's position is remembered, so events citing the same power levels (the usual
    case) cost one lookup each.
    """
    event_ids = list(event_ids)
    if not event_ids:
        return []
    mainline: list[str] = []
    pl_id = power_levels_id
    while pl_id is not None and pl_id not in mainline:
        mainline.append(pl_id)
        pl_id = source.power_levels_parent(pl_id)
    positions: dict[str, int] = {
        event_id: index for index, event_id in enumerate(reversed(mainline), start=1)
    }

    def position(event_id: str) -> int:
        path: list[str] = []
        current: str | None = event_id
        found = 0
        while current is not None:
            known = positions.get(current)
            if known is not None:
                found = known
                break
            if current in path:  # an auth cycle (v1–v2 free-form IDs)
                break
            path.append(current)
            current = source.power_levels_parent(current)
        for visited in path:
            positions[visited] = found
        return found

    def key(event_id: str) -> tuple[int, int, str]:
        event = source.event(event_id)
        ts = event.origin_server_ts if event is not None else 0
        return (position(event_id), ts, event_id)

    event_ids.sort(key=key)
    return event_ids
