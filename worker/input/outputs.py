"""The output and dead-letter messages of the contract (sections 4 and 5).

Each is built as (subject, Nats-Msg-Id, msgpack body) and written to the outbox in
the same transaction as the effects that caused it; the message ID makes a republish
after a crash a no-op for JetStream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgpack
import ormsgpack

from worker.bus.publisher import dead_letter_body
from worker.bus.subjects import Subjects
from worker.storage.cache_budget import DEFAULT_BUDGET
from worker.storage.lru import BoundedMemo


class Output(NamedTuple):
    """One output message. A named tuple rather than a frozen dataclass: one is made
    for every event, and a frozen dataclass sets each field through
    `object.__setattr__`."""

    subject: str
    msg_id: str
    payload: bytes


class OutputBuilder:
    def __init__(
        self, subjects: Subjects, rooms: int = DEFAULT_BUDGET.bound("output_subjects")
    ) -> None:
        """`rooms`: how many rooms' output subjects are remembered (the cache budget's
        `output_subjects`)."""
        self.subjects = subjects
        #: Room ID → output subject: every output of a room has the same one, and making
        #: it (the room ID in base64) cost more than the rest of the output's envelope.
        self._output_subjects: BoundedMemo[str, str] = BoundedMemo(rooms)
        #: One packer for what `ormsgpack` refuses (see `pack_output`); a builder is
        #: used by one thread, the pipeline's.
        self._packer = msgpack.Packer(use_bin_type=True)

    def new_room_event(
        self,
        *,
        room_id: str,
        room_version: str,
        event_id: str,
        pdu: Mapping[str, Any],
        latest_event_ids: list[str],
        adds_state_event_ids: list[str],
        removes_state_event_ids: list[str],
        last_sent_event_id: str | None,
        send_as_server: str | None,
        transaction_id: Mapping[str, Any] | None,
    ) -> Output:
        """The lists go into the body as they are (the caller made them for it)."""
        body = {
            "type": "new_room_event",
            "room_id": room_id,
            "room_version": room_version,
            "event_id": event_id,
            "event": pdu,
            "latest_event_ids": latest_event_ids,
            "adds_state_event_ids": adds_state_event_ids,
            "removes_state_event_ids": removes_state_event_ids,
            "last_sent_event_id": last_sent_event_id,
            "send_as_server": send_as_server,
            "transaction_id": transaction_id,
        }
        return self._output(room_id, event_id, "new_room_event", body)

    def old_room_event(self, *, room_id: str, event_id: str, pdu: Mapping[str, Any]) -> Output:
        body = {"type": "old_room_event", "room_id": room_id, "event_id": event_id, "event": pdu}
        return self._output(room_id, event_id, "old_room_event", body)

    def rejected_event(
        self, *, room_id: str, event_id: str, kind: str, soft_failed: bool, reason: str
    ) -> Output:
        body = {
            "type": "rejected_event",
            "room_id": room_id,
            "event_id": event_id,
            "kind": kind,
            "soft_failed": soft_failed,
            "reason": reason,
        }
        return self._output(room_id, event_id, "rejected_event", body)

    def redacted_event(
        self, *, room_id: str, redacted_event_id: str, redaction_event_id: str
    ) -> Output:
        body = {
            "type": "redacted_event",
            "room_id": room_id,
            "redacted_event_id": redacted_event_id,
            "redaction_event_id": redaction_event_id,
        }
        return self._output(room_id, redaction_event_id, "redacted_event", body)

    def dead_letter(
        self,
        *,
        room_id: str | None,
        code: str,
        message: str,
        subject: str,
        stream_sequence: int,
        payload: bytes,
    ) -> Output:
        # A partitioned stream stores inputs under <prefix>.input.<K>.<token>; the dead
        # letter keeps the subject they were published to, which a replay goes back to.
        with contextlib.suppress(ValueError):
            subject = self.subjects.original_input(subject)
        body = dead_letter_body(
            error=code,
            message=message,
            subject=subject,
            stream_sequence=stream_sequence,
            payload=payload,
        )
        # The stream sequence names the input, so a dead letter republished after a
        # crash (before the input was terminated) is dropped as a duplicate.
        return Output(
            self.subjects.deadletter(room_id), f"deadletter:{subject}:{stream_sequence}", body
        )

    def _output(
        self, room_id: str, event_id: str, output_type: str, body: Mapping[str, Any]
    ) -> Output:
        """`output_type` is the body's `type`, which the message ID ends with."""
        subject = self._output_subjects.get(room_id)
        if subject is None:
            subject = self._output_subjects[room_id] = self.subjects.output(room_id)
        return Output(subject, f"{event_id}:{output_type}", pack_output(body, self._packer))


def pack_output(body: Mapping[str, Any], fallback: msgpack.Packer) -> bytes:
    """An output's msgpack body: `ormsgpack` packs it, in about half the time `msgpack`
    does (a `new_room_event` carries the whole PDU: ~28k of a linear room's ~500k
    instructions per event went to packing it), into the same bytes for what a body
    holds (str keys; str, int, float, bool, None, bytes, lists and dicts of them: both
    write the shortest form of each, floats as float64, str8 for short strings, as
    `use_bin_type=True` asks; checked value for value in tests/test_output_packing.py).
    What `ormsgpack` refuses (a key that is not a str, an int beyond 64 bits, a type it
    does not know) goes to `msgpack`, which packs it or raises as it always did."""
    try:
        return ormsgpack.packb(body)
    except ormsgpack.MsgpackEncodeError:
        return bytes(fallback.pack(body))
