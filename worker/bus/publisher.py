"""Publishing to JetStream with deduplication IDs, one at a time or pipelined.

Every publish waits for JetStream's PubAck: only then is the message durable, and only
then may the input that caused it be acknowledged. Pipelining a batch (send all, then
await all acks) costs one round trip per batch instead of one per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

import msgpack
import structlog
from nats.js import JetStreamContext, api

from worker.bus.subjects import Subjects
from worker.config import Config

log = structlog.get_logger("worker.bus.publisher")

MSG_ID_HEADER: Final = "Nats-Msg-Id"


class Outgoing(NamedTuple):
    """One message for publish_many."""

    subject: str
    payload: bytes
    msg_id: str | None = None


def dead_letter_body(
    *,
    error: str,
    message: str,
    subject: str,
    stream_sequence: int | None,
    payload: bytes,
) -> bytes:
    """The contract's dead-letter map (section 5), msgpack-encoded; payload kept as bytes."""
    body: Mapping[str, Any] = {
        "error": error,
        "message": message,
        "subject": subject,
        "stream_sequence": stream_sequence,
        "payload": payload,
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


class Publisher:
    """Publishes to the streams of one configuration through one JetStream context."""

    def __init__(self, js: JetStreamContext, config: Config, *, timeout: float = 10.0) -> None:
        self._js = js
        self._timeout = timeout
        self.subjects = Subjects(config.streams.subject_prefix)

    async def publish(self, subject: str, payload: bytes, msg_id: str | None = None) -> api.PubAck:
        """Publish one message and wait for its PubAck (``duplicate`` is set if dropped)."""
        headers = {MSG_ID_HEADER: msg_id} if msg_id is not None else None
        ack: api.PubAck = await self._js.publish(
            subject, payload, timeout=self._timeout, headers=headers
        )
        return ack

    async def publish_many(self, messages: Iterable[Outgoing]) -> list[api.PubAck]:
        """Publish all ``messages`` pipelined; their PubAcks, in order.

        Raises the first failure after every publish has settled (or asyncio.TimeoutError
        when acks stop coming, as while NATS is unreachable). Messages that did reach a
        stream stay there; republishing the same batch is safe as long as each carries a
        msg_id, since JetStream then drops the copies.
        """
        futures: list[asyncio.Future[api.PubAck]] = []
        try:
            for subject, payload, msg_id in messages:
                headers = {MSG_ID_HEADER: msg_id} if msg_id is not None else None
                futures.append(await self._js.publish_async(subject, payload, headers=headers))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        if not futures:
            return []
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), self._timeout
        )
        acks: list[api.PubAck] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            acks.append(result)
        return acks
