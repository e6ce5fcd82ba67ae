"""The client's `State` kept as the grouped form's arrays (docs/queries.md, "Round
eight"): it must hold exactly the entries the reply carries, give each caller a list
of its own, and read the contract's triples (an older worker, `request`) as before.

The truth is the list of StateEntry values the reply was made from, and the grouped
form's own definition: "a map from each type to two arrays in step, the state keys
and the event IDs".
"""

from __future__ import annotations

import gc

import msgpack
import pytest

from worker.client.replies import read_reply
from worker.client.state_cache import StateCache
from worker.query.schema import (
    GROUPED_FIELD,
    TAG_FIELD,
    State,
    StateEntry,
    grouped_state,
    state_columns,
)

pytestmark = pytest.mark.unit

ENTRIES = [
    StateEntry("m.room.create", "", "$c"),
    StateEntry("m.room.member", "@a:x", "$a"),
    StateEntry("m.room.member", "@b:x", "$b"),
    StateEntry("m.room.topic", "", "$t"),
]


def _through_the_wire(entries: list[StateEntry], grouped: bool = True) -> State:
    """A reply carrying `entries` as the worker sends it, decoded as the client does."""
    body = State("!r:x", None, None, entries, grouped=grouped, tag="t.1").to_wire()
    return read_reply("state", msgpack.packb(body), State.from_wire, tuples=True)


def test_columns_hold_the_replys_entries() -> None:
    state = _through_the_wire(ENTRIES)
    # The decoded arrays themselves, type by type, in step.
    assert dict(state.by_type) == {
        "m.room.create": (("",), ("$c",)),
        "m.room.member": (("@a:x", "@b:x"), ("$a", "$b")),
        "m.room.topic": (("",), ("$t",)),
    }
    assert len(state) == 4
    assert sorted(state.entries) == sorted(ENTRIES)
    assert all(type(e) is StateEntry for e in state.entries)
    assert list(state.iter_entries()) == state.entries
    assert state.as_map() == {(e.type, e.state_key): e.event_id for e in ENTRIES}
    assert state.get("m.room.member", "@b:x") == "$b"
    assert state.get("m.room.member", "@c:x") is None
    assert state.get("m.room.name", "") is None
    # The same state held as entries (the service's, or read from triples) is equal.
    assert state == State("!r:x", None, None, state.entries)
    empty = _through_the_wire([])
    assert len(empty) == 0 and empty.entries == [] and empty.as_map() == {}


def test_state_from_entries_answers_the_same() -> None:
    """A State made from entries (the service side, triples from an older worker) has
    the same reading API, its columns made from its entries."""
    state = State("!r:x", None, None, ENTRIES)
    assert len(state) == 4
    assert {t: (list(k), list(e)) for t, (k, e) in state.by_type.items()} == {
        t: (k, e) for t, (k, e) in grouped_state(ENTRIES).items()
    }
    assert state.get("m.room.topic", "") == "$t"
    assert state.get("m.room.topic", "x") is None
    assert list(state.iter_entries()) == ENTRIES
    with pytest.raises(TypeError):
        State("!r:x", None, None)
    with pytest.raises(TypeError):
        State("!r:x", None, None, ENTRIES, columns=state.by_type)


def test_triples_from_an_older_worker_read_as_before() -> None:
    """A worker that ignores the grouped header answers with the contract's triples."""
    state = _through_the_wire(ENTRIES, grouped=False)
    assert state.entries == ENTRIES
    assert state.as_map() == _through_the_wire(ENTRIES).as_map()


def test_arrays_out_of_step_are_refused() -> None:
    with pytest.raises(ValueError):
        state_columns({"m.room.member": (("@a:x", "@b:x"), ("$a",))})
    with pytest.raises(ValueError):
        state_columns({"m.room.member": (("@a:x",), ("$a",), ("$b",))})
    reply = {"room_id": "!r:x", GROUPED_FIELD: {"m.room.member": [["@a:x"], []]}}
    with pytest.raises(ValueError):
        read_reply("state", msgpack.packb(reply), State.from_wire, tuples=True)


def test_each_caller_has_its_own_entries() -> None:
    """Entries made from kept columns (the client's copy of an unchanged state) are a
    list of each State's own; the columns cannot be changed through a State."""
    state = _through_the_wire(ENTRIES)
    cache = StateCache()
    cache.put("!r:x", "t.1", state.by_type, len(state))
    kept = cache.get("!r:x")
    assert kept is not None and kept.size == 4
    first = State("!r:x", None, None, columns=kept.columns)
    second = State("!r:x", None, None, columns=kept.columns)
    first.entries.clear()
    assert sorted(second.entries) == sorted(ENTRIES)
    assert len(first) == 4 and first.get("m.room.topic", "") == "$t"
    with pytest.raises(TypeError):
        state.by_type["m.room.name"] = (("",), ("$n",))  # type: ignore[index]


def test_a_state_over_the_budget_is_not_kept() -> None:
    state = _through_the_wire(ENTRIES)
    cache = StateCache(budget=3)
    cache.put("!r:x", "t.1", state.by_type, len(state))
    assert cache.get("!r:x") is None and len(cache) == 0


def test_entries_made_later_leave_no_young_collection_due() -> None:
    """The 10,000 StateEntry values made from a large state's columns are made as the
    decoded reply was (worker.collector): afterwards no young collection is due and
    none of them is in a young generation. `gc.get_count()`: "Return the current
    collection counts as a tuple of (count0, count1, count2)"."""
    if not gc.isenabled():
        pytest.skip("the collector is off in this process")
    entries = [StateEntry("m.room.member", f"@u{i}:x", f"$e{i:040d}") for i in range(10_000)]
    body = {"room_id": "!r:x", GROUPED_FIELD: grouped_state(entries), TAG_FIELD: "t.1"}
    state = read_reply("state", msgpack.packb(body), State.from_wire, tuples=True)
    gc.collect()
    made = state.entries
    assert gc.get_count()[0] < gc.get_threshold()[0]
    young = {id(obj) for generation in (0, 1) for obj in gc.get_objects(generation=generation)}
    assert len(made) == 10_000
    assert not any(id(entry) in young for entry in made)
    assert id(made) not in young
