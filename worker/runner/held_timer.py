"""The held-event timer: releases held events that waited `held_max_wait`, between
batches, at most once a second (the check is a count in memory when nothing is held)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from worker.pipeline import OutboxRow, Pipeline
from worker.runner.common import DbThread

log = structlog.get_logger(__name__)

#: Seconds between looks for held events that have waited long enough.
HELD_CHECK_INTERVAL = 1.0


class HeldTimer:
    def __init__(
        self,
        db_thread: DbThread,
        pipeline: Pipeline,
        publish: Callable[[list[OutboxRow], asyncio.Event], Awaitable[None]],
    ) -> None:
        self.db_thread = db_thread
        self.pipeline = pipeline
        #: Publishes what a transaction outside the batches committed.
        self._publish = publish
        self._checked = 0.0

    async def tick(self, stop: asyncio.Event) -> None:
        now = time.monotonic()
        if not self.pipeline.held_count or now - self._checked < HELD_CHECK_INTERVAL:
            return
        self._checked = now
        released = await self.db_thread.run(self.pipeline.release_expired)
        if released:
            log.info("processed held events that waited too long", count=released)
            await self._publish(self.pipeline.outbox.emitted, stop)
