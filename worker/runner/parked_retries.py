"""Retries of parked rooms: every parked room at start-up, and `roomserver retry`
requests (`<prefix>.admin.retry` with {"room_id": ...}) between batches, since the
loop owns the pipeline's transactions and the order of outputs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack
import structlog
from nats.aio.msg import Msg

from worker.runner.common import NATS_ERRORS, SideWork

log = structlog.get_logger(__name__)


class ParkedRetries:
    def __init__(self, side: SideWork) -> None:
        self.side = side
        self.pipeline = side.pipeline
        #: Requests waiting for the loop: (room ID, the request).
        self._requests: asyncio.Queue[tuple[str, Msg]] = asyncio.Queue()

    async def on_request(self, msg: Msg) -> None:
        """A `roomserver retry` request: queued for the loop."""
        try:
            body = msgpack.unpackb(msg.data, raw=False) if msg.data else {}
            room_id = body.get("room_id") if isinstance(body, dict) else None
        except Exception:
            room_id = None
        if not isinstance(room_id, str) or not room_id:
            await _reply(msg, {"error": "bad_request", "message": "room_id is required"})
            return
        self._requests.put_nowait((room_id, msg))

    async def answer_requests(self, stop: asyncio.Event) -> None:
        while not self._requests.empty() and not stop.is_set():
            room_id, msg = self._requests.get_nowait()
            if room_id not in self.pipeline.parked_room_ids():
                answer: dict[str, Any] = {
                    "error": "not_parked",
                    "message": f"room {room_id} is not parked",
                }
            else:
                answer = await self.retry_room(room_id, stop)
            await _reply(msg, answer)

    async def retry_all(self, stop: asyncio.Event) -> None:
        """A restart (after an upgrade, say) retries every parked room first."""
        for room_id in self.pipeline.parked_room_ids():
            await self.retry_room(room_id, stop)

    async def retry_room(self, room_id: str, stop: asyncio.Event) -> dict[str, Any]:
        """Process a parked room's inputs from the one that failed, a transaction at a
        time, publishing each one's outputs; the reply map of `roomserver retry`."""
        log.info("retrying a parked room", room_id=room_id)
        processed = 0
        while True:
            step, rows = await self.pipeline.retry_parked(room_id, stop)
            await self.side.publish(rows, stop)
            processed += step.processed
            if step.error is not None or step.unparked or stop.is_set():
                break
        if step.unparked:
            log.info("parked room retried; it runs again", room_id=room_id, inputs=processed)
        return {
            "room_id": room_id,
            "processed": processed,
            "parked": not step.unparked,
            "error": step.error,
        }


async def _reply(msg: Msg, body: dict[str, Any]) -> None:
    """Answer a request (a request published without a reply subject gets none)."""
    if msg.reply:
        with contextlib.suppress(*NATS_ERRORS):
            await msg.respond(msgpack.packb(body, use_bin_type=True))
