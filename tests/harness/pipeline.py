"""The in-process pipeline harness: `Pipeline.process_batch` on a real SQLite file, no
NATS. The outbox rows a batch commits stand in for what the worker would publish, so a
test reads outputs and dead letters without a server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from worker.bus.subjects import Subjects
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.storage.database import Database

SUBJECTS = Subjects("rs")
ALICE = "@alice:example.org"


def pack(value: Any) -> bytes:
    """An input payload as the bus carries it (msgpack, binary strings kept apart)."""
    return bytes(msgpack.packb(value, use_bin_type=True))


class Harness:
    """One worker database and pipeline, fed one message per batch.

    Without `room`, Alice creates a new room of `version` and its bootstrap events are
    sent, so the room is ready for messages. With `room`, the database starts empty and
    knows nothing of that room: a server about to join a room built elsewhere (the
    builder's version applies; `version` is ignored).
    """

    def __init__(self, path: Path, version: str = "10", *, room: RoomBuilder | None = None) -> None:
        self.db = Database(path)
        self.pipeline = Pipeline(self.db, SUBJECTS)
        self.seq = 0
        if room is not None:
            self.builder = room
            self.bootstrap: list[Event] = []
            self.head = room.events[-1].event_id
            return
        self.builder = RoomBuilder(version, ALICE)
        self.bootstrap = self.builder.bootstrap()
        #: The room's latest accepted event, so new events build on what is stored even
        #: when the previous one was dead-lettered.
        self.head = self.bootstrap[-1].event_id
        for event in self.bootstrap:
            assert self.send(event) is Disposition.ACK

    @property
    def room_id(self) -> str:
        return self.builder.room_id

    def send_raw(self, data: bytes, subject: str | None = None) -> Disposition:
        self.seq += 1
        message = InboundMessage(subject or SUBJECTS.input(self.room_id), data, self.seq)
        return self.pipeline.process_batch([message])[0]

    def send(self, event: Event, **fields: Any) -> Disposition:
        return self.send_raw(pack({"event": dict(event.pdu), **fields}))

    def outbox(self) -> list[tuple[str, dict[str, Any]]]:
        """The bodies committed since the last call (then dropped, as if published)."""
        rows = self.db.outbox.pending()
        if rows:
            self.db.outbox.delete_through(rows[-1][0])
        bodies = [(subject, msgpack.unpackb(payload, raw=False)) for _, subject, _, payload in rows]
        for _, body in bodies:
            if body.get("type") == "new_room_event":
                self.head = body["event_id"]
        return bodies

    def message(self, body: str = "hello") -> Event:
        return self.builder.message(ALICE, body, prev_events=[self.head])

    def dead_letters(self) -> list[dict[str, Any]]:
        return [body for subject, body in self.outbox() if ".deadletter." in subject]
