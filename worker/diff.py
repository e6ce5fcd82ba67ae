"""`roomserver diff DIR_A DIR_B`: do two databases hold the same rooms?

A rebuild from the input stream must come to the same events, statuses, states and
forward extremities as the live worker did. NIDs are local to a database (assigned in
processing order, which batching may change), so the comparison is by event ID and by
(type, state key) → event ID maps, read through the read-only Inspector.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from worker.storage.inspection import Inspector, StateMap, StoreContents

#: Differences listed per kind before the rest are only counted.
SHOWN_PER_KIND: Final = 20


def diff_databases(path_a: Path, path_b: Path) -> list[str]:
    """Every difference between the databases under ``path_a`` and ``path_b``, one line
    each (empty when they hold the same); ReadError `no_database` if one is missing."""
    with Inspector.open(path_a) as a, Inspector.open(path_b) as b:
        return list(differences(a.rows.contents(), b.rows.contents()))


def differences(a: StoreContents, b: StoreContents) -> Iterator[str]:
    """The differences of two databases' contents, A against B."""
    yield from _only_in("event", a.events, b.events)
    yield from _only_in("room", a.rooms, b.rooms)
    for event_id in sorted(a.events.keys() & b.events.keys()):
        ea, eb = a.events[event_id], b.events[event_id]
        if ea.room_id != eb.room_id:
            yield f"event {event_id}: room {ea.room_id} in A, {eb.room_id} in B"
        if ea.status != eb.status:
            yield f"event {event_id}: status {ea.status} in A, {eb.status} in B"
        for when, sa, sb in (
            ("before", ea.state_before, eb.state_before),
            ("after", ea.state_after, eb.state_after),
        ):
            if sa != sb:
                yield f"event {event_id}: state {when} it differs: {_state_difference(sa, sb)}"
    for room_id in sorted(a.rooms.keys() & b.rooms.keys()):
        ra, rb = a.rooms[room_id], b.rooms[room_id]
        if ra.room_version != rb.room_version:
            yield f"room {room_id}: version {ra.room_version} in A, {rb.room_version} in B"
        if ra.forward_extremities != rb.forward_extremities:
            yield (
                f"room {room_id}: forward extremities {', '.join(ra.forward_extremities)} "
                f"in A, {', '.join(rb.forward_extremities)} in B"
            )
        if ra.current_state != rb.current_state:
            yield (
                f"room {room_id}: current state differs: "
                f"{_state_difference(ra.current_state, rb.current_state)}"
            )


def _only_in(kind: str, a: Mapping[str, object], b: Mapping[str, object]) -> Iterator[str]:
    for side, mine, other in (("A", a, b), ("B", b, a)):
        missing = sorted(mine.keys() - other.keys())
        for key in missing[:SHOWN_PER_KIND]:
            yield f"{kind} {key}: only in {side}"
        if len(missing) > SHOWN_PER_KIND:
            yield f"... and {len(missing) - SHOWN_PER_KIND} more {kind}s only in {side}"


def _state_difference(a: StateMap, b: StateMap) -> str:
    """The first few keys whose event differs, as `(type, key): A → B`."""
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = [f"({t}, {k!r}): {a.get((t, k), '-')} → {b.get((t, k), '-')}" for t, k in keys[:3]]
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return "; ".join(shown) + more
