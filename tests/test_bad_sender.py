"""A PDU whose sender is no user ID is dead-lettered (`bad_sender`), through the
pipeline on a real SQLite file. Before, a v12 create event from "nodomain" was
accepted and made a room whose creator, with infinite power, was no user."""

from __future__ import annotations

import copy
from pathlib import Path

import msgpack

from tests.harness.pipeline import SUBJECTS, pack
from worker.matrix.builder import RoomBuilder
from worker.matrix.hashes import content_hash, encode_base64
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import Database


def test_v12_create_event_from_a_sender_without_domain_is_dead_lettered(
    tmp_path: Path,
) -> None:
    builder = RoomBuilder("12", "@alice:example.org")
    pdu = copy.deepcopy(dict(builder.create().pdu))
    pdu["sender"] = "nodomain"
    pdu["hashes"] = {"sha256": encode_base64(content_hash(pdu, strict=True))}
    db = Database(tmp_path)
    pipeline = Pipeline(db, SUBJECTS)
    # The room ID is derived from the event ID, which the changed PDU no longer has;
    # the subject names the room the event claims, as a publisher would.
    room_id = "!" + builder.room_id[1:]
    message = InboundMessage(SUBJECTS.input(room_id), pack({"event": pdu}), 1)
    assert pipeline.process_batch([message]) == [Disposition.TERM]
    [(_, subject, _, payload)] = db.outbox.pending()
    assert ".deadletter." in subject
    body = msgpack.unpackb(payload, raw=False)
    assert body["error"] == "bad_sender", body["message"]
    assert db.get_room(room_id) is None
