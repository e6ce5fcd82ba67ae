"""Reading the dead-letter stream, and replaying dead letters as new inputs.

A dead letter keeps the original input whole (subject and payload, contract section 5),
so once the publisher's fault is fixed (a room's create event sent after its events,
say) the input can be published again as it was. The replay carries a new
`Nats-Msg-Id`, `replay:<dead-letter stream sequence>`: the original's ID (usually the
event ID) may still be in the input stream's duplicate window, which would drop the
replay, while replaying the same dead letter twice is still dropped as a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgpack
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from worker.bus.publisher import MSG_ID_HEADER
from worker.bus.subjects import UNKNOWN_ROOM_TOKEN, Subjects, room_id_from_token

#: Dead letters fetched per round trip.
_FETCH: Final = 256
_FETCH_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One message of the dead-letter stream, decoded."""

    #: Its sequence in the dead-letter stream: what `roomserver replay` selects by.
    sequence: int
    time: datetime | None
    code: str
    room_id: str | None
    message: str
    #: The original input's subject and stream sequence, and its bytes.
    subject: str
    input_sequence: int | None
    payload: bytes

    def as_map(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "time": self.time.isoformat() if self.time else None,
            "code": self.code,
            "room_id": self.room_id,
            "message": self.message,
            "subject": self.subject,
            "input_sequence": self.input_sequence,
            "payload_bytes": len(self.payload),
        }


@dataclass(frozen=True, slots=True)
class Replayed:
    """What publishing one dead letter's input again came to."""

    record: DeadLetterRecord
    msg_id: str
    #: The new input's sequence in the input stream (None if it was not stored).
    input_sequence: int | None
    #: JetStream dropped it: this dead letter was replayed before, within the window.
    duplicate: bool
    error: str | None


def replay_msg_id(sequence: int) -> str:
    return f"replay:{sequence}"


async def read_dead_letters(
    js: JetStreamContext, stream: str, subjects: Subjects, room_id: str | None = None
) -> list[DeadLetterRecord]:
    """Every dead letter in the stream (of one room, if given), oldest first, read
    through an ephemeral consumer that acknowledges nothing and changes nothing."""
    subject = subjects.deadletter(room_id) if room_id is not None else subjects.deadletter_wildcard
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    records: list[DeadLetterRecord] = []
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            try:
                batch = await sub.fetch(min(pending, _FETCH), timeout=_FETCH_TIMEOUT)
            except nats.errors.TimeoutError:
                break  # messages removed (max age) after the count was taken
            for msg in batch:
                records.append(_decode(msg))
                assert msg.metadata is not None
                pending = msg.metadata.num_pending
    finally:
        await sub.unsubscribe()
    return records


def select(
    records: Iterable[DeadLetterRecord],
    *,
    code: str | None = None,
    room_id: str | None = None,
    sequences: Sequence[int] = (),
) -> list[DeadLetterRecord]:
    """The records matching every filter given."""
    wanted = set(sequences)
    return [
        r
        for r in records
        if (code is None or r.code == code)
        and (room_id is None or r.room_id == room_id)
        and (not wanted or r.sequence in wanted)
    ]


async def replay(js: JetStreamContext, records: Iterable[DeadLetterRecord]) -> list[Replayed]:
    """Publish each record's original payload to its original subject, one at a time
    (in order: a room's inputs must stay in order), and wait for JetStream's ack."""
    results: list[Replayed] = []
    for record in records:
        msg_id = replay_msg_id(record.sequence)
        if not record.subject or not record.payload:
            error = "the dead letter does not hold an input to replay"
            results.append(Replayed(record, msg_id, None, False, error))
            continue
        try:
            ack = await js.publish(
                record.subject, record.payload, timeout=10.0, headers={MSG_ID_HEADER: msg_id}
            )
        except nats.errors.NoRespondersError:
            error = f"no stream takes {record.subject}: not an input subject"
            results.append(Replayed(record, msg_id, None, False, error))
        except Exception as exc:  # the JetStream API's own errors, timeouts
            results.append(Replayed(record, msg_id, None, False, repr(exc)))
        else:
            results.append(Replayed(record, msg_id, ack.seq, bool(ack.duplicate), None))
    return results


def _decode(msg: Msg) -> DeadLetterRecord:
    assert msg.metadata is not None
    token = msg.subject.rsplit(".", 1)[-1]
    room_id: str | None = None
    if token != UNKNOWN_ROOM_TOKEN:
        try:
            room_id = room_id_from_token(token)
        except ValueError:
            room_id = None
    try:
        body = msgpack.unpackb(msg.data, raw=False)
    except Exception:  # not written by a worker: shown, never replayable
        body = None
    if not isinstance(body, dict):
        body = {"error": "unreadable", "message": "not a dead-letter map", "subject": ""}
    payload = body.get("payload")
    sequence = body.get("stream_sequence")
    return DeadLetterRecord(
        sequence=msg.metadata.sequence.stream,
        time=msg.metadata.timestamp,
        code=str(body.get("error", "")),
        room_id=room_id,
        message=str(body.get("message", "")),
        subject=str(body.get("subject", "")),
        input_sequence=sequence if isinstance(sequence, int) else None,
        payload=payload if isinstance(payload, bytes) else b"",
    )
