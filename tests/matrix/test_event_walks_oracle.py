"""Differential test: `/get_missing_events` and `/backfill` walks, ours against Synapse's
own SQL transaction functions run on a real SQLite database (tests/oracle/synapse_walks).

Generated graphs: events with one to three prev events among the recent ones (so forks
and merges are common), now and then a prev event this server does not have, arrival
orders (stream orderings) that disagree with depth, a few depths that are not "max of
the prev events plus one", outliers, and events of another room. Requests use random
seeds, earliest events and limits.

Backfill is deterministic in Synapse and must match exactly, order included. For missing
events Synapse's order within one layer of the breadth-first walk is Python set order,
so the comparison is by layer: the same events, and the same sequence of distances from
`latest_events` (the farthest layer first). That holds exactly when the limit leaves room
for every reachable event plus the largest number of prev events of one event: Synapse
applies the remaining limit to each event's prev events *before* dropping those already
seen, so a tight limit can make it return fewer events than it could (and walk on from
a different front). Under a limit that cuts the walk, ours must return exactly `limit`
events with every nearer layer complete, and Synapse's must be a subset of the reachable
events.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

pytest.importorskip("synapse.storage.databases.main.event_federation")

from tests.oracle.synapse_walks import StoredEvent, SynapseWalks
from worker.matrix.event_walks import DagNode, backfill_events, missing_events

pytestmark = pytest.mark.oracle

ROOM, OTHER = "!room:s", "!other:s"


def _graph(rng: random.Random) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    orderings = rng.sample(range(1, 10_000), 80)
    for index in range(rng.randrange(5, 60)):
        recent = [e for e in events[-6:] if e.room_id == ROOM]
        prevs = tuple(e.event_id for e in rng.sample(recent, min(len(recent), rng.randint(1, 3))))
        if rng.random() < 0.1:
            prevs += (f"$gone{index}",)
        depth = 1 + max((e.depth for e in events if e.event_id in prevs), default=0)
        if rng.random() < 0.1:
            depth = rng.randint(1, depth + 3)
        room = OTHER if rng.random() < 0.05 else ROOM
        events.append(
            StoredEvent(
                f"$e{index}",
                room,
                depth,
                orderings[index],
                prevs if room == ROOM else (),
                outlier=index > 0 and rng.random() < 0.05,
            )
        )
    return events


def _lookup(events: list[StoredEvent], *, outliers: bool) -> dict[str, DagNode]:
    return {
        e.event_id: DagNode(e.event_id, e.depth, e.stream_ordering, e.prev_event_ids)
        for e in events
        if e.room_id == ROOM and (outliers or not e.outlier)
    }


def _distances(nodes: dict[str, DagNode], earliest: list[str], latest: list[str]) -> dict[str, int]:
    """Breadth-first distance from `latest` of every event the walk can reach.

    Only `earliest` is excluded: a latest event that precedes another is reached too.
    """
    distance: dict[str, int] = {}
    seen = set(earliest)
    queue = deque((eid, 0) for eid in dict.fromkeys(latest) if eid in nodes and eid not in seen)
    while queue:
        event_id, hops = queue.popleft()
        for prev in nodes[event_id].prev_event_ids:
            if prev in nodes and prev not in seen:
                seen.add(prev)
                distance[prev] = hops + 1
                queue.append((prev, hops + 1))
    return distance


@pytest.mark.parametrize("seed", range(3))
def test_missing_events_like_synapse(seed: int) -> None:
    rng = random.Random(seed)
    exact = cut = 0
    for _ in range(80):
        events = _graph(rng)
        nodes = _lookup(events, outliers=True)
        ids = [e.event_id for e in events]
        latest = [*rng.sample(ids, rng.randint(1, min(3, len(ids)))), "$unknown"]
        earliest = rng.sample(ids, rng.randint(0, min(4, len(ids))))
        distance = _distances(nodes, earliest, latest)
        # Room for every reachable event plus Synapse's per-step slack (see the module
        # docstring), or a limit that cuts the walk.
        roomy = rng.random() < 0.5
        limit = len(distance) + 3 if roomy else rng.randint(1, max(1, len(distance) - 1))
        walks = SynapseWalks(events)
        try:
            theirs = walks.missing_events(ROOM, earliest, latest, limit)
        finally:
            walks.close()
        ours = missing_events(nodes.get, earliest, latest, limit)
        assert len(set(ours)) == len(ours) <= limit
        assert [distance[e] for e in ours] == sorted((distance[e] for e in ours), reverse=True)
        assert [distance[e] for e in theirs] == sorted((distance[e] for e in theirs), reverse=True)
        if roomy:
            exact += 1
            assert set(ours) == set(theirs) == set(distance)
            assert [distance[e] for e in ours] == [distance[e] for e in theirs]
        elif len(distance) > limit:
            cut += 1
            # The spec's "stopping at the `limit`": as many as asked, nearest layers first.
            assert len(ours) == limit
            farthest = distance[ours[0]]
            assert {e for e, hops in distance.items() if hops < farthest} <= set(ours)
            assert set(theirs) <= set(distance)
            assert len(theirs) <= limit
    assert exact > 20 and cut > 20


@pytest.mark.parametrize("seed", range(3))
def test_backfill_like_synapse(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(80):
        events = _graph(rng)
        nodes = _lookup(events, outliers=False)
        candidates = [e.event_id for e in events if not e.outlier]
        seeds = rng.sample(candidates, rng.randint(1, min(3, len(candidates))))
        seeds += ["$unknown"]
        limit = rng.randint(1, 40)
        walks = SynapseWalks(events)
        try:
            theirs = walks.backfill(ROOM, seeds, limit)
        finally:
            walks.close()
        assert backfill_events(nodes.get, seeds, limit) == theirs, (seeds, limit)
