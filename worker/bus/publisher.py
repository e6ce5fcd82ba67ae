"""Publishing to JetStream with deduplication IDs, one at a time or pipelined.

Every publish waits for JetStream's PubAck: only then is the message durable, and only
then may the input that caused it be acknowledged. Pipelining a batch (send all, then
await all acks) costs one round trip per batch instead of one per message.

A pipelined batch is published as JetStream's protocol has it: a plain NATS publish
whose reply subject is where the stream's PubAck (or error) comes back. nats-py's
`publish_async` does the same with a future, a callback, a random token (a system call)
and a parsed PubAck per message; here a batch has one future, each reply subject names
its batch and its place in it, and a reply is only looked at for an error unless the
caller wants the PubAcks. Each message's reply is still checked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple, cast

import msgpack
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError

from worker.bus.subjects import Subjects
from worker.config import Config

log = structlog.get_logger("worker.bus.publisher")

MSG_ID_HEADER: Final = "Nats-Msg-Id"
#: Most publishes waiting for their replies at once (as nats-py's publish_async allows by
#: default): a longer list is published a window at a time.
IN_FLIGHT: Final = 4000
#: The status header of a reply that no stream took the message ("no responders").
_NO_RESPONDERS: Final = "503"


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


class _Batch:
    """The replies of one pipelined batch, by place; done when every one has come."""

    __slots__ = ("future", "replies", "waiting")

    def __init__(self, size: int) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.replies: list[Msg | None] = [None] * size
        self.waiting = size

    def arrived(self, place: int, reply: Msg) -> None:
        if self.replies[place] is not None:
            return
        self.replies[place] = reply
        self.waiting -= 1
        if not self.waiting and not self.future.done():
            self.future.set_result(None)


def _check(reply: Msg) -> None:
    """Raise what JetStream's reply to a publish says went wrong, if anything."""
    headers = reply.headers
    if headers and headers.get(api.Header.STATUS) == _NO_RESPONDERS:
        raise NoStreamResponseError
    # A PubAck never has the word; reading the JSON only then saves parsing each one.
    if b'"error"' in reply.data:
        answer = json.loads(reply.data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises the error's own APIError


def _pub_ack(reply: Msg) -> api.PubAck:
    _check(reply)
    ack: api.PubAck = api.PubAck.from_response(json.loads(reply.data))
    return ack


class Publisher:
    """Publishes to the streams of one configuration through one JetStream context."""

    def __init__(self, js: JetStreamContext, config: Config, *, timeout: float = 10.0) -> None:
        self._js = js
        # The JetStream context's connection (nats-py keeps no public handle to it):
        # pipelined batches are plain publishes and one subscription for the replies.
        self._nc: NATS = js._nc
        self._timeout = timeout
        self.subjects = Subjects(config.streams.subject_prefix)
        #: The reply subjects' common start (`<inbox>.`), once subscribed.
        self._inbox: str | None = None
        #: Batches waiting for replies, by number.
        self._batches: dict[str, _Batch] = {}
        self._numbers = itertools.count()
        self._subscribing = asyncio.Lock()

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
        return [_pub_ack(reply) for reply in await self._pipelined(messages)]

    async def publish_checked(self, messages: Iterable[Outgoing]) -> int:
        """`publish_many` without the PubAcks: how many were published, each one's
        reply checked (the same failures are raised)."""
        replies = await self._pipelined(messages)
        for reply in replies:
            _check(reply)
        return len(replies)

    async def _pipelined(self, messages: Iterable[Outgoing]) -> list[Msg]:
        """Publish ``messages`` IN_FLIGHT at a time; their replies, once every one
        has come (TimeoutError if they stop coming)."""
        outgoing = list(messages)
        replies: list[Msg] = []
        for start in range(0, len(outgoing), IN_FLIGHT):
            replies += await self._window(outgoing[start : start + IN_FLIGHT])
        return replies

    async def _window(self, outgoing: list[Outgoing]) -> list[Msg]:
        """Publish ``outgoing`` with reply subjects of one new batch; their replies."""
        inbox = self._inbox if self._inbox is not None else await self._subscribe()
        number = str(next(self._numbers))
        batch = self._batches[number] = _Batch(len(outgoing))
        prefix = f"{inbox}{number}."
        publish = self._nc.publish
        try:
            for place, (subject, payload, msg_id) in enumerate(outgoing):
                await publish(
                    subject,
                    payload,
                    reply=f"{prefix}{place}",
                    headers={MSG_ID_HEADER: msg_id} if msg_id is not None else None,
                )
            await asyncio.wait_for(batch.future, self._timeout)
        finally:
            del self._batches[number]
        return cast(list[Msg], batch.replies)  # every place has its reply

    async def _subscribe(self) -> str:
        """Subscribe to the replies of every batch (once, whichever batch comes first;
        nats-py keeps the subscription across reconnections)."""
        async with self._subscribing:
            if self._inbox is None:
                inbox = f"{self._nc.new_inbox()}."
                start = len(inbox)
                batches = self._batches

                async def on_reply(reply: Msg) -> None:
                    number, _, place = reply.subject[start:].partition(".")
                    batch = batches.get(number)
                    # None: a late reply of a batch given up on (timed out, or cancelled
                    # while NATS was away); it is published again, and JetStream drops
                    # the copies.
                    if batch is not None:
                        batch.arrived(int(place), reply)

                await self._nc.subscribe(f"{inbox}*.*", cb=on_reply)
                self._inbox = inbox
        return self._inbox
