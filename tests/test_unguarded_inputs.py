"""Inputs run without a savepoint first, and an input that fails undoes exactly what a
savepoint would have undone.

A savepoint per input made SQLite copy every page an input changed into the savepoint's
journal; the pipeline now runs a batch's inputs unguarded (`Unguarded`) and falls back
to savepoints only when an input fails after writing: the whole transaction is undone
and the batch runs again, one savepoint per input. An input that fails before writing
anything (most dead letters: bad msgpack, a bad PDU) is handled in place. Either way
every output and stored row must be the ones the savepoint-per-input path gives, which
these tests compare on real SQLite files.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.harness.pipeline import SUBJECTS
from tests.test_batched_writes import _inputs
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import DB_FILENAME, Database
from worker.storage.events import EventStore, StoredEvent


class Boom(Exception):
    pass


def _tables(path: Path) -> dict[str, list[Any]]:
    conn = sqlite3.connect(path / DB_FILENAME)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
            for name in sorted(names)
            if not name.startswith("sqlite_")
        }
    finally:
        conn.close()


def _run(path: Path, messages: list[InboundMessage], *, careful: bool) -> dict[str, Any]:
    """One batch; with `careful`, every input in a savepoint (the path before)."""
    db = Database(path)
    if careful:
        db.unguarded = db.savepoint  # type: ignore[method-assign,assignment]
    pipeline = Pipeline(db, SUBJECTS)
    dispositions = pipeline.process_batch(messages)
    result = {
        "dispositions": dispositions,
        "emitted": [tuple(row) for row in pipeline.outbox.emitted],
        "parked": pipeline.parked_room_ids(),
        "redone": pipeline.redone,
    }
    db.close()
    # Arrival times differ between the runs; everything else must not.
    tables = _tables(path)
    tables["events"] = [row[:-1] for row in tables["events"]]
    # So do the times rooms were parked at.
    tables["parked_rooms"] = [row[:-2] + row[-1:] for row in tables["parked_rooms"]]
    return {**result, "tables": tables}


def test_a_dead_letter_before_any_write_needs_no_second_run(tmp_path: Path) -> None:
    messages = _inputs()  # a bad msgpack input in the middle, duplicates, a redaction
    unguarded = _run(tmp_path / "unguarded", messages, careful=False)
    careful = _run(tmp_path / "careful", messages, careful=True)
    assert unguarded.pop("redone") == 0
    careful.pop("redone")
    assert unguarded == careful
    assert Disposition.TERM in unguarded["dispositions"]


def test_a_failure_after_writes_runs_the_batch_again_with_savepoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug met after the event's rows are written (in `EventStore.remember`): the
    room is parked with that input, as the savepoint-per-input path does."""
    messages = _inputs()
    failing_id: list[str] = []
    original = EventStore.remember

    def remember(self: EventStore, stored: StoredEvent) -> None:
        original(self, stored)
        if stored.event.type == "m.room.topic":
            failing_id.append(stored.event.event_id)
            raise Boom("after the event's rows")

    monkeypatch.setattr(EventStore, "remember", remember)
    unguarded = _run(tmp_path / "unguarded", messages, careful=False)
    careful = _run(tmp_path / "careful", messages, careful=True)
    assert failing_id
    assert unguarded.pop("redone") == 1
    assert careful.pop("redone") == 0
    assert unguarded == careful
    assert unguarded["parked"]
    stored_ids = {row[1] for row in unguarded["tables"]["events"]}
    assert failing_id[0] not in stored_ids


def test_unguarded_scope_undoes_in_place_only_when_no_row_changed(tmp_path: Path) -> None:
    db = Database(tmp_path)
    undone: list[str] = []
    with db.transaction():
        scope = db.unguarded()
        with pytest.raises(Boom), scope:
            db.on_rollback(lambda: undone.append("read only"))
            db.get_event_row("$absent")
            raise Boom
        assert scope.undone and undone == ["read only"]
        scope = db.unguarded()
        with pytest.raises(Boom), scope:
            db.on_rollback(lambda: undone.append("wrote"))
            db.create_room("!r:example.org", "10")
            raise Boom
        # A row changed: only undoing the transaction undoes it, hooks and all.
        assert not scope.undone and undone == ["read only"]
        scope = db.unguarded()
        with scope:
            pass
        assert not scope.undone
    db.close()
