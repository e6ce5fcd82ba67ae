"""What a large reply costs besides its bytes: the client's garbage collections
after decoding it, and the worker's page faults for the buffers it is sent from
(docs/queries.md, "Large replies and the tail").

Both are checked against the runtime's own accounts: CPython's lists of objects by
generation (`gc.get_objects`) and the kernel's count of the process's minor page
faults (`getrusage`).
"""

from __future__ import annotations

import gc
import os
import resource

import msgpack
import pytest

from worker.client.replies import read_reply
from worker.heap import keep_freed_memory
from worker.query.schema import GROUPED_FIELD, TAG_FIELD, RawMsgpack, State, pack_reply

pytestmark = pytest.mark.unit

ENTRIES = 10_000


def _grouped_reply(entries: int) -> bytes:
    """A whole current state of `entries` members, as the worker sends it grouped."""
    groups = {
        "m.room.create": [[""], ["$create"]],
        "m.room.member": [
            [f"@user{i}:example.org" for i in range(entries - 1)],
            [f"$member{i:040d}" for i in range(entries - 1)],
        ],
    }
    packed = RawMsgpack(msgpack.packb(groups, use_bin_type=True))
    return pack_reply({"room_id": "!room:x", GROUPED_FIELD: packed, TAG_FIELD: "t.1"})


def test_decoded_state_leaves_no_young_collection_due() -> None:
    """After a large reply is decoded, its entries are in no young generation and no
    young collection is due: the next one would otherwise traverse all 10,000 of them
    (0.4–0.9 ms of the warm state query, in the client). `gc` documents the counts:
    "gc.get_count(): Return the current collection counts as a tuple of (count0,
    count1, count2)", and a generation is collected when its count exceeds its
    threshold (`gc.set_threshold`)."""
    if not gc.isenabled():
        pytest.skip("the collector is off in this process")
    body = _grouped_reply(ENTRIES)
    gc.collect()
    state = read_reply("state", body, State.from_wire, tuples=True)
    assert gc.get_count()[0] < gc.get_threshold()[0]
    young = {id(obj) for generation in (0, 1) for obj in gc.get_objects(generation=generation)}
    assert len(state.entries) == ENTRIES
    assert not any(id(entry) in young for entry in state.entries)
    assert id(state.entries) not in young
    # What the decode made and the state holds: the grouped form's arrays.
    held = [column for group in state.by_type.values() for column in group]
    assert held and not any(id(column) in young for column in held)


def test_held_states_set_off_no_full_collection() -> None:
    """A client that reads large replies over and over, holding the last ones, makes
    no collection of the whole heap (generation 2): one such collection was the warm
    state query's p99 (tens of milliseconds in a client with a big heap). Observed with
    `gc.callbacks`, which the collector calls at the start and stop of every
    collection with the generation in `info` (the `gc` module's documentation). Sixty
    replies: more than five times the middle generation's threshold of young
    collections, each with new objects that survive (as a client's own do)."""
    if not gc.isenabled():
        pytest.skip("the collector is off in this process")
    body = _grouped_reply(ENTRIES)
    collected: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    gc.collect()
    held: list[State] = []
    survivors: list[list[object]] = []
    gc.callbacks.append(seen)
    try:
        for _ in range(60):
            held = [*held[-1:], read_reply("state", body, State.from_wire, tuples=True)]
            survivors.append([[] for _ in range(gc.get_threshold()[0])])
    finally:
        gc.callbacks.remove(seen)
    assert len(held[-1].entries) == ENTRIES
    assert 2 not in collected, collected


def test_callers_frozen_objects_stay_frozen() -> None:
    """A caller that froze its own objects (`gc.freeze()`, "move all objects tracked by
    the garbage collector into a permanent generation, i.e. ignore them in all the
    future collections", as servers do before forking) keeps them frozen through a
    large reply: the client must not `gc.unfreeze()` what it did not freeze."""
    body = _grouped_reply(ENTRIES)
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        state = read_reply("state", body, State.from_wire, tuples=True)
        assert gc.get_freeze_count() == frozen
        assert len(state.entries) == ENTRIES
    finally:
        gc.unfreeze()


def _reply_sized_buffers(payload: bytes) -> int:
    """Minor page faults of making and freeing reply-sized buffers as nats-py's publish
    does (the payload joined to its protocol line and headers, then to its line end),
    after a first round that may fault legitimately."""
    head = b"HPUB _INBOX.x.1 40 680040\r\nNATS/1.0\r\nRoomserver-Worker: abc\r\n\r\n"
    (head + payload) + b"\r\n"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        (head + payload) + b"\r\n"
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_reply_buffers_reuse_the_heap() -> None:
    """Once the worker has set its heap's thresholds, buffers as big as a 10,000-entry
    state reply reuse freed memory: without it, glibc hands the heap's top back to
    the kernel after each and every page is faulted in again (~340 faults per round
    here)."""
    if not keep_freed_memory():
        pytest.skip("not glibc: its allocator's thresholds are not set")
    payload = os.urandom(680_000)
    faults = _reply_sized_buffers(payload)
    # 20 rounds of two 680 kB buffers: ~6,800 faults when the heap is trimmed each time.
    assert faults < 200, faults
