"""A batch's follow-ups (worker.pipeline.process.FollowUps: the cheap rooms' inputs the
input loop gives a busy room's transaction to go on with before it commits) are
processed exactly as if they had been the batch's own last inputs: same dispositions,
outputs, parked rooms and stored rows, on real SQLite files, including when one of
them fails after writing and the batch runs again with savepoints (the follow-ups are
then asked for again and must be the same)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness.pipeline import SUBJECTS, pack
from tests.test_batched_writes import _inputs
from tests.test_unguarded_inputs import Boom, _tables
from worker.matrix.builder import RoomBuilder
from worker.pipeline import InboundMessage, Pipeline
from worker.storage.database import Database
from worker.storage.events import EventStore, StoredEvent

CAROL = "@carol:example.org"


def _busy_room() -> list[InboundMessage]:
    room = RoomBuilder("10", CAROL)
    events = [*room.bootstrap(), *(room.message(CAROL, f"m{i}") for i in range(5))]
    subject = SUBJECTS.input(room.room_id)
    return [
        InboundMessage(subject, pack({"event": dict(e.pdu)}), 1000 + n)
        for n, e in enumerate(events)
    ]


def _outcome(path: Path, own: list[InboundMessage], follow: list[InboundMessage] | None) -> Any:
    """One batch of `own`, then `follow` as its follow-ups (or, if None, `own` alone:
    the caller puts everything in `own`); what it did and what it stored."""
    db = Database(path)
    pipeline = Pipeline(db, SUBJECTS)
    asked: list[int] = []

    def follow_ups(done: int) -> tuple[list[InboundMessage], float | None]:
        asked.append(done)
        return list(follow or []), None

    dispositions = pipeline.process_batch(own, follow_ups if follow is not None else None)
    result = {
        "dispositions": dispositions,
        "emitted": [tuple(row) for row in pipeline.outbox.emitted],
        "parked": pipeline.parked_room_ids(),
        "laps": len(pipeline.batch.stopwatch.laps),
    }
    redone = pipeline.redone
    db.close()
    tables = _tables(path)
    tables["events"] = [row[:-1] for row in tables["events"]]  # arrival times differ
    tables["parked_rooms"] = [row[:-2] + row[-1:] for row in tables["parked_rooms"]]
    return {**result, "tables": tables}, asked, redone


def test_follow_ups_are_processed_as_the_batchs_own_last_inputs(tmp_path: Path) -> None:
    busy, small = _busy_room(), _inputs()  # a bad msgpack input, duplicates, a redaction
    followed, asked, redone = _outcome(tmp_path / "followed", busy, small)
    alone, _, _ = _outcome(tmp_path / "alone", busy + small, None)
    assert asked == [len(busy)]
    assert redone == 0
    assert followed == alone
    assert followed["laps"] == len(busy) + len(small)


def test_a_follow_up_that_fails_after_writing_is_given_again_to_the_careful_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug met after a follow-up's rows are written undoes the whole transaction; the
    batch runs again with savepoints, asks again and must get the same follow-ups: the
    failing input's room is parked with it, as in one batch of all the inputs."""
    original = EventStore.remember

    def remember(self: EventStore, stored: StoredEvent) -> None:
        original(self, stored)
        if stored.event.type == "m.room.topic":
            raise Boom("after the event's rows")

    monkeypatch.setattr(EventStore, "remember", remember)
    busy, small = _busy_room(), _inputs()
    followed, asked, redone = _outcome(tmp_path / "followed", busy, small)
    alone, _, _ = _outcome(tmp_path / "alone", busy + small, None)
    assert redone == 1
    assert asked == [len(busy), len(busy)]
    assert followed == alone
    assert followed["parked"]
