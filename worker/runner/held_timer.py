"""The held-event timer: releases held events that waited `held_max_wait`, between
batches, at most once a second (the check is a count in memory when nothing is held)."""

from __future__ import annotations

import asyncio
import time

import structlog

from worker.runner.common import SideWork

log = structlog.get_logger(__name__)

#: Seconds between looks for held events that have waited long enough.
HELD_CHECK_INTERVAL = 1.0


class HeldTimer:
    def __init__(self, side: SideWork) -> None:
        self.side = side
        self._checked = 0.0

    async def tick(self, stop: asyncio.Event) -> None:
        now = time.monotonic()
        pipeline = self.side.pipeline
        if not pipeline.held_count or now - self._checked < HELD_CHECK_INTERVAL:
            return
        self._checked = now
        released, rows = await pipeline.release_expired()
        if released:
            log.info("processed held events that waited too long", count=released)
            await self.side.publish(rows, stop)
