"""Parked rooms: a room whose input hit a bug stops, whole, until it is retried.

An unexpected error (not bad input, not a storage fault) keeps the failed input and
every later input of its room in worker.storage.parked, so that nothing is built on a
missing event; other rooms go on. `roomserver retry` or a restart processes the kept
inputs again, in order, a transaction at a time.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final

import structlog

from worker.pipeline.batch import Batch, InboundMessage
from worker.storage.database import Database
from worker.storage.parked import ParkedStore

log = structlog.get_logger(__name__)

#: Parked inputs retried in one transaction.
RETRY_CHUNK: Final = 200


@dataclass(frozen=True, slots=True)
class RetryStep:
    """What one transaction of a parked room's retry did."""

    #: Parked inputs processed (and removed from the room's waiting inputs).
    processed: int
    #: The room has no waiting inputs left and is no longer parked.
    unparked: bool
    #: The error that parked the room again, if one did.
    error: str | None


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a room is parked: what worker.storage.parked records."""

    room_id: str
    event_id: str | None
    stream_sequence: int
    error: str
    traceback: str
    now_ms: int


class _RetryFailed(Exception):
    """Undoes a parked room's retry transaction after one of its inputs failed again."""


class Parking:
    """The parked rooms, kept in memory beside their table, and their retry."""

    def __init__(
        self, db: Database, batch: Batch, event_id_of: Callable[[InboundMessage], str | None]
    ) -> None:
        self.db = db
        self.batch = batch
        self.store = ParkedStore(db)
        #: The input's event ID for the operator, if it can be read at all.
        self._event_id_of = event_id_of
        #: Rooms whose inputs wait for a retry (see worker.storage.parked).
        self._parked: set[str] = set(self.store.room_ids())
        #: The parked room being retried, and how its retry failed.
        self._retrying: str | None = None
        self._retry_failure: _Failure | None = None

    @property
    def count(self) -> int:
        return len(self._parked)

    def room_ids(self) -> list[str]:
        return sorted(self._parked)

    def intercept(self, room_id: str | None, message: InboundMessage) -> bool:
        """Whether the input is not to be processed now: its room is parked (it is kept,
        after the input that failed, in order) or its failed retry is being undone."""
        if room_id is None:
            return False
        if room_id == self._retrying and self._retry_failure:
            return True  # the failed retry is undone as a whole
        if room_id in self._parked and room_id != self._retrying:
            self.store.keep(room_id, message.subject, message.stream_sequence, message.data)
            self.batch.counts.parked += 1
            log.debug(
                "input kept for a parked room",
                room_id=room_id,
                stream_sequence=message.stream_sequence,
            )
            return True
        return False

    def park(self, room_id: str, message: InboundMessage, exc: Exception) -> None:
        """A bug, not bad input: keep the input whole and stop the room (its savepoint
        is already rolled back), so that nothing is built on a missing event."""
        event_id = self._event_id_of(message)
        failure = _Failure(
            room_id=room_id,
            event_id=event_id,
            stream_sequence=message.stream_sequence,
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
            now_ms=int(time.time() * 1000),
        )
        log.error(
            "room parked: an unexpected error on one of its inputs; the room's inputs are "
            "kept and wait for `roomserver retry` or a restart",
            room_id=room_id,
            event_id=event_id,
            stream_sequence=message.stream_sequence,
            error=failure.error,
            retry=room_id == self._retrying,
            exc_info=exc,
        )
        if room_id == self._retrying:
            # The retry's transaction is undone as a whole (see retry).
            self._retry_failure = failure
            return
        self._record_failure(failure)
        self.store.keep(room_id, message.subject, message.stream_sequence, message.data)
        self.batch.counts.parked += 1
        if room_id not in self._parked:
            self._parked.add(room_id)
            self.db.on_rollback(lambda: self._parked.discard(room_id))

    def retry(
        self,
        room_id: str,
        limit: int,
        transaction: Callable[[], AbstractContextManager[None]],
        process: Callable[[InboundMessage], None],
        undo: Callable[[], None],
    ) -> RetryStep:
        """Process up to `limit` of a parked room's inputs with `process`, in order, in
        one `transaction`; the room is unparked with its last input. Transient faults
        propagate.

        If one fails again, the whole transaction is undone (events released from hold
        on the way included, so the order stays the one the room would have had), the
        caches are dropped (`undo`) and only the new error is recorded: the room stays
        parked from the same input."""
        self._retrying, self._retry_failure = room_id, None
        try:
            try:
                with transaction():
                    return self._retry_in_transaction(room_id, limit, process)
            except _RetryFailed:
                pass
            failure = self._retry_failure
            assert failure is not None
            undo()
            with self.db.transaction():
                self._record_failure(failure)
            return RetryStep(0, False, failure.error)
        finally:
            self._retrying = None

    def _retry_in_transaction(
        self, room_id: str, limit: int, process: Callable[[InboundMessage], None]
    ) -> RetryStep:
        processed = 0
        for parked in self.store.inputs(room_id, limit):
            process(InboundMessage(parked.subject, parked.payload, parked.stream_sequence))
            self.store.remove_input(parked.seq)
            processed += 1
            if self._retry_failure is not None:
                raise _RetryFailed
        if self.store.inputs(room_id, 1):
            return RetryStep(processed, False, None)
        self.store.unpark(room_id)
        self._parked.discard(room_id)
        self.db.on_rollback(lambda: self._parked.add(room_id))
        return RetryStep(processed, True, None)

    def _record_failure(self, failure: _Failure) -> None:
        self.store.park(
            room_id=failure.room_id,
            event_id=failure.event_id,
            stream_sequence=failure.stream_sequence,
            error=failure.error,
            traceback=failure.traceback,
            now_ms=failure.now_ms,
        )
