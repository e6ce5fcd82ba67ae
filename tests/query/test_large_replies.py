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
from worker.query.heap import keep_freed_memory
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


def test_decoded_state_is_not_moved_to_the_oldest_generation() -> None:
    """With a middle-generation collection due when a large reply arrives, the state's
    entries (alive in the caller's hands) must not be what that collection moves to
    the oldest generation: there they would count towards a full collection of the
    whole heap, the warm state query's tail. `gc` documents the generations: "objects
    that survive a collection are moved into the next older generation"."""
    if not gc.isenabled():
        pytest.skip("the collector is off in this process")
    body = _grouped_reply(ENTRIES)
    gc.collect()
    middle = gc.get_threshold()[1]
    # Each collection of the youngest generation counts one for the middle one: past
    # its threshold, the next automatic collection is of the middle generation.
    while gc.get_count()[1] <= middle:
        gc.collect(0)
    state = read_reply("state", body, State.from_wire, tuples=True)
    # Enough new container objects for the collector to run at least once.
    churn = [[] for _ in range(2 * gc.get_threshold()[0])]
    del churn
    oldest = {id(obj) for obj in gc.get_objects(generation=2)}
    assert len(state.entries) == ENTRIES
    assert not any(id(entry) in oldest for entry in state.entries)


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
