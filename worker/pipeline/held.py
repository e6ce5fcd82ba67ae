"""Held events: timeline events that wait for their missing prev events.

An event whose prev events are unknown (or known only as outliers) is held rather than
processed against a guessed state. It is woken when the last of them arrives, and
released anyway, with the state that is known, once it has waited `max_wait`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import structlog

from worker.pipeline.batch import InboundMessage
from worker.storage.database import Database, RoomRow

log = structlog.get_logger(__name__)


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


class HeldEvents:
    """The held events of the database, with their count kept in memory (so that a
    worker holding nothing never asks the database about them)."""

    def __init__(
        self, db: Database, max_wait: float, clock: Callable[[], int] | None = None
    ) -> None:
        self.db = db
        #: Milliseconds since the epoch when an event is held: the wall clock, or the
        #: stream's time of the inputs when rebuilding (worker.rebuild).
        self.clock = clock or _wall_clock_ms
        #: How long an event may wait for missing prev events before it is processed
        #: with the state that is known.
        self.max_wait_ms = int(max_wait * 1000)
        #: Held events whose missing prev events have all arrived, to process next.
        self._releasable: deque[str] = deque()
        self.count = db.held.count()

    def is_held(self, event_id: str) -> bool:
        return bool(self.count) and self.db.held.contains(event_id)

    def hold(
        self, event_id: str, room: RoomRow, missing: list[str], message: InboundMessage
    ) -> None:
        """Keep the input whole until the `missing` prev events have arrived."""
        self.db.held.add(
            event_id=event_id,
            room_nid=room.nid,
            missing=missing,
            subject=message.subject,
            stream_sequence=message.stream_sequence,
            payload=message.data,
            now_ms=self.clock(),
        )
        self.count += 1
        log.info(
            "holding event until its prev events arrive",
            missing=missing,
            room_id=room.room_id,
            event_id=event_id,
        )

    def wake(self, event_id: str) -> None:
        """Queue held events that were waiting only for `event_id`."""
        if not self.count:
            return
        for held_id in self.db.held.waiting_on(event_id):
            self.db.held.drop_wait(event_id, held_id)
            if not self.db.held.waits_remaining(held_id):
                self._releasable.append(held_id)

    def next_woken(self) -> str | None:
        """The next held event whose prev events have all arrived, if any."""
        return self._releasable.popleft() if self._releasable else None

    def expired(self, now_ms: int) -> list[str]:
        """Held events that have waited longer than `max_wait`, oldest first."""
        return self.db.held.expired(now_ms - self.max_wait_ms)

    def release(self, event_id: str, *, forced: bool) -> InboundMessage | None:
        """Stop holding an event; its input, to process now (None if it was not held)."""
        held = self.db.held.remove(event_id)
        if held is None:
            return None
        self.count -= 1
        subject, sequence, payload = held
        log.info("releasing held event", event_id=event_id, forced=forced)
        return InboundMessage(subject, payload, sequence)

    def settle(self) -> None:
        """After a transaction, committed or not: nothing is woken any more, and the
        count is the database's again (a rolled-back hold or release changed it)."""
        self._releasable.clear()
        self.count = self.db.held.count()
