"""A batch of many inputs gives the same results as the same inputs one batch each.

The pipeline does some work once per batch rather than once per input: it decodes and
parses the batch's inputs ahead and checks for already stored events in one query
(`Recipe.prefetch`), and it writes the batch's outbox rows in one statement just before
the commit (`Outbox`). Most tests feed one input per batch, where none of that shows;
these feed whole batches, with the cases that work once per batch could get wrong
(duplicates inside the batch, an outlier promoted in the same batch, a room created by
the batch, an input undone by its savepoint), and compare every output and stored row
with the one-input-per-batch path that the oracle tests check against Synapse.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.harness.pipeline import ALICE, SUBJECTS, pack
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import DB_FILENAME, Database

BOB = "@bob:example.org"


def _input(room_id: str, event: Event, seq: int, **fields: Any) -> InboundMessage:
    return InboundMessage(SUBJECTS.input(room_id), pack({"event": dict(event.pdu), **fields}), seq)


def _inputs() -> list[InboundMessage]:
    """A room created, used and redacted in one stream, with the awkward cases."""
    room = RoomBuilder("10", ALICE)
    events = room.bootstrap()
    join = room.join(BOB)
    hello = room.message(BOB, "hello")
    parent = room.message(BOB, "parent")
    child = room.message(BOB, "child")
    topic = room.state_event(ALICE, "m.room.topic", "", {"topic": "batched"})
    redaction = room.redaction(ALICE, hello.event_id)
    later = room.message(ALICE, "after the redaction")
    seq = 0

    def nxt(event: Event, **fields: Any) -> InboundMessage:
        nonlocal seq
        seq += 1
        return _input(room.room_id, event, seq, **fields)

    return [
        *(nxt(e) for e in events),
        nxt(join, kind="outlier"),  # an outlier, then the same event in the timeline
        nxt(join),
        nxt(hello),
        nxt(hello),  # a duplicate inside the batch
        nxt(child),  # held: its prev event comes next
        nxt(parent),  # releases the child
        nxt(child),  # a duplicate of the released child
        InboundMessage(SUBJECTS.input(room.room_id), b"\xc1 not msgpack", 100),
        nxt(topic),
        nxt(topic),
        nxt(redaction),
        nxt(later),
        nxt(events[0]),  # the create event again: stored long before
    ]


def _run(path: Path, batches: list[list[InboundMessage]]) -> dict[str, Any]:
    """Process the batches; everything the database and the outbox then hold."""
    db = Database(path)
    pipeline = Pipeline(db, SUBJECTS)
    dispositions: list[Disposition] = []
    emitted: list[tuple[int, str, str, bytes]] = []
    for batch in batches:
        dispositions.extend(pipeline.process_batch(batch))
        emitted.extend(tuple(row) for row in pipeline.outbox.emitted)  # type: ignore[misc]
    counters = pipeline.counters
    db.close()
    conn = sqlite3.connect(path / DB_FILENAME)
    try:
        outbox = conn.execute("SELECT seq, subject, msg_id, payload FROM outbox").fetchall()
        events = conn.execute(
            "SELECT e.nid, e.event_id, e.status, e.reason, e.before_snapshot_nid, "
            "e.after_snapshot_nid, e.auth_event_nids, e.redacted_by, j.json "
            "FROM events e JOIN event_json j ON j.event_nid = e.nid ORDER BY e.nid"
        ).fetchall()
        edges = conn.execute("SELECT * FROM event_edges ORDER BY 1, 2").fetchall()
        rooms = conn.execute("SELECT * FROM rooms").fetchall()
    finally:
        conn.close()
    return {
        "dispositions": dispositions,
        "duplicates": counters.duplicates,
        "dead_lettered": counters.dead_lettered,
        "emitted": emitted,
        "outbox": [tuple(row) for row in outbox],
        "bodies": [msgpack.unpackb(row[3], raw=False) for row in outbox],
        "events": events,
        "edges": edges,
        "rooms": rooms,
    }


def test_one_batch_gives_what_one_input_per_batch_gives(tmp_path: Path) -> None:
    messages = _inputs()
    alone = _run(tmp_path / "alone", [[m] for m in messages])
    together = _run(tmp_path / "together", [messages])
    assert together == alone
    # What the comparison rests on: the awkward cases happened.
    assert together["duplicates"] == 4  # hello, child, topic and the create event again
    assert together["dead_lettered"] == 1
    kinds = [body.get("type", "deadletter") for body in together["bodies"]]
    assert kinds == [
        *["new_room_event"] * 8,  # bootstrap, join (the outlier promoted), hello, parent, child
        "deadletter",
        *["new_room_event"] * 2,  # topic, redaction
        "redacted_event",
        "new_room_event",  # later
    ]


def test_outbox_rows_are_what_was_emitted_and_numbers_are_never_reused(tmp_path: Path) -> None:
    """The rows are written at the commit with the numbers given at emit; after the
    published rows are deleted, later numbers still go up (AUTOINCREMENT's promise,
    which "published through N" relies on)."""
    messages = _inputs()
    db = Database(tmp_path)
    pipeline = Pipeline(db, SUBJECTS)
    pipeline.process_batch(messages[:9])
    first = list(pipeline.outbox.emitted)
    assert [tuple(row) for row in db.outbox.pending()] == [tuple(row) for row in first]
    pipeline.outbox.mark_published(first[-1].seq)
    pipeline.outbox.forget_published()
    assert db.outbox.pending() == []
    pipeline.outbox.forget_published()  # a transaction with no input writes nothing
    assert db.outbox.pending() == []
    pipeline.process_batch(messages[9:])
    second = list(pipeline.outbox.emitted)
    assert second and second[0].seq == first[-1].seq + 1
    assert [tuple(row) for row in db.outbox.pending()] == [tuple(row) for row in second]
    assert [row.seq for row in second] == sorted({row.seq for row in second})
    db.close()


def test_a_new_rooms_first_batch_is_decoded_once_an_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inputs after a room's create event, in the batch that creates it, are parsed
    ahead with the create's version (`Recipe.prefetch`): each input is decoded once, not
    once ahead (in vain: the room is not stored yet) and again in its turn; and the
    results are the one-input-per-batch path's."""
    import worker.pipeline.recipe as recipe

    messages = _inputs()
    alone = _run(tmp_path / "alone", [[m] for m in messages])
    decoded: list[bytes] = []
    real = recipe.decode_input

    def counting(data: bytes) -> Any:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(recipe, "decode_input", counting)
    together = _run(tmp_path / "together", [messages])
    assert together == alone
    # Every input once, but the one that is not msgpack (tried ahead and in its turn).
    # Every input once, but the one that is not msgpack (tried ahead, and raised in its
    # turn) and the held child (its input comes back from the held table when released).
    extra = Counter(decoded) - Counter(m.data for m in messages)
    held_child = next(m.data for m in messages if b"\xa5child" in m.data)
    assert sorted(extra.elements()) == sorted([b"\xc1 not msgpack", held_child])
    assert not Counter(m.data for m in messages) - Counter(decoded)
