"""`/get_missing_events` and `/backfill` walks, against the server-server spec's text.

`/get_missing_events`: "This is done by doing a breadth-first walk of the `prev_events`
for the `latest_events`, ignoring any events in `earliest_events` and stopping at the
`limit`." (`limit`: "Defaults to 10."; `min_depth`: "The minimum depth of events to
retrieve. Defaults to 0.")

`/backfill`: "Starting from the PDU ID(s) given in the `v` argument, the PDUs given in
`v` and the PDUs that preceded them are retrieved, up to the total number given by the
`limit`."
"""

from __future__ import annotations

import pytest

from worker.matrix.event_walks import DagNode, backfill_events, missing_events

pytestmark = pytest.mark.unit


def chain(length: int, prefix: str = "$") -> dict[str, DagNode]:
    """A linear history: $1 ← $2 ← ... (depth = position, arrival order = position)."""
    return {
        f"{prefix}{n}": DagNode(f"{prefix}{n}", n, n, (f"{prefix}{n - 1}",) if n > 1 else ())
        for n in range(1, length + 1)
    }


def diamond() -> dict[str, DagNode]:
    """$a ← $b, $c ← $d (a fork and its merge); $c arrived before $b."""
    return {
        "$a": DagNode("$a", 1, 1, ()),
        "$b": DagNode("$b", 2, 3, ("$a",)),
        "$c": DagNode("$c", 2, 2, ("$a",)),
        "$d": DagNode("$d", 3, 4, ("$b", "$c")),
    }


def test_missing_events_walks_back_from_latest_and_stops_at_earliest() -> None:
    """The latest events are not returned; the earliest are neither returned nor passed."""
    nodes = chain(8)
    assert missing_events(nodes.get, ["$3"], ["$8"]) == ["$4", "$5", "$6", "$7"]
    assert missing_events(nodes.get, [], ["$3"]) == ["$1", "$2"]


def test_missing_events_default_and_explicit_limit() -> None:
    """ "stopping at the `limit`", which defaults to 10; the nearest events are kept."""
    nodes = chain(30)
    assert missing_events(nodes.get, [], ["$30"]) == [f"${n}" for n in range(20, 30)]
    assert missing_events(nodes.get, [], ["$30"], limit=3) == ["$27", "$28", "$29"]
    assert missing_events(nodes.get, [], ["$30"], limit=0) == []


def test_missing_events_min_depth() -> None:
    """`min_depth`: "The minimum depth of events to retrieve"."""
    nodes = chain(10)
    assert missing_events(nodes.get, [], ["$10"], min_depth=7) == ["$7", "$8", "$9"]


def test_missing_events_breadth_first_order() -> None:
    """Breadth-first: both sides of a fork before what precedes them; the answer lists
    the farthest layer first, and within a layer older before newer."""
    nodes = diamond()
    assert missing_events(nodes.get, [], ["$d"]) == ["$a", "$c", "$b"]
    # A cut layer keeps its newest event.
    assert missing_events(nodes.get, [], ["$d"], limit=1) == ["$b"]
    # An event the sender already has is skipped, but the walk goes round it.
    assert missing_events(nodes.get, ["$b"], ["$d"]) == ["$a", "$c"]


def test_missing_events_skips_unknown_events() -> None:
    """Latest or prev events this server does not have are not walked."""
    nodes = chain(3)
    assert missing_events(nodes.get, [], ["$nope", "$3"]) == ["$1", "$2"]
    assert missing_events(nodes.get, [], ["$nope"]) == []
    del nodes["$1"]
    assert missing_events(nodes.get, [], ["$3"]) == ["$2"]


def test_backfill_includes_seeds_and_counts_them_in_the_limit() -> None:
    """ "the PDUs given in `v` and the PDUs that preceded them ... up to the total number
    given by the `limit`" — newest first."""
    nodes = chain(10)
    assert backfill_events(nodes.get, ["$10"], 3) == ["$10", "$9", "$8"]
    assert backfill_events(nodes.get, ["$3"], 10) == ["$3", "$2", "$1"]
    assert backfill_events(nodes.get, ["$nope"], 10) == []


def test_backfill_orders_by_depth_then_arrival() -> None:
    """Equal depths are ordered by arrival, later first ($b arrived after $c)."""
    nodes = diamond()
    assert backfill_events(nodes.get, ["$d"], 10) == ["$d", "$b", "$c", "$a"]
    assert backfill_events(nodes.get, ["$d"], 2) == ["$d", "$b"]
    assert backfill_events(nodes.get, ["$b", "$c"], 10) == ["$b", "$c", "$a"]
