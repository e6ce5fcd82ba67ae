"""Requests whose reply may come in chunks: the client's own reply inbox.

nats-py's `request` hands back the first message to reach the reply inbox and drops
the rest, so a reply cut into chunks (worker.query.chunks) needs an inbox that keeps
listening. Each client has one wildcard subscription, `<inbox>.*`; each request gets
a token under it and a queue its messages are routed to, and says in a header that it
reassembles chunks. Every message of a reply must arrive within `timeout` of the one
before it (the first, of the request): a chunk that is lost or late fails the whole
request with `incomplete_reply`, never with part of an answer.

Big replies are decoded with the garbage collector paused: a 10,000-entry state is
30,000 new objects, which would otherwise set off dozens of collections, some of
them full ones over the whole heap (the warm state query's p99 was 20 times its p50
for that reason alone); and what the decode made is then moved out of the young
generations without being traversed (`collector_paused`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from worker.collector import collector_paused
from worker.errors import BAD_REPLY, INCOMPLETE_REPLY, UNAVAILABLE, RoomserverError, is_error_reply
from worker.query.chunks import ACCEPT_CHUNKS_HEADER, Reassembly, chunk_place
from worker.query.schema import WORKER_HEADER

T = TypeVar("T")

#: Replies at least this big are decoded with the garbage collector paused.
LARGE_REPLY: Final = 64 * 1024
#: The status header nats-server sets when no one listens on a request's subject.
_STATUS: Final = "Status"
_NO_RESPONDERS: Final = "503"
#: Messages and bytes the inbox may hold before nats-py drops them: several whole
#: chunked replies (the subscription's defaults would do; this says what is needed).
_PENDING_BYTES: Final = 512 * 1024 * 1024
#: Every request's headers: chunks accepted.
_HEADERS: Final = {ACCEPT_CHUNKS_HEADER: "1"}


def read_reply(
    name: str, data: bytes, read: Callable[[dict[str, Any]], T], *, tuples: bool = False
) -> T:
    """Decode a reply's bytes into a map and then `read` it (a typed result); raise
    the error it carries. With `tuples`, msgpack arrays decode as tuples, which is
    twice as fast for a state's 10,000 triples (for readers that copy them anyway)."""
    with collector_paused(len(data) >= LARGE_REPLY):
        try:
            result = msgpack.unpackb(data, raw=False, use_list=not tuples)
        except Exception as exc:  # msgpack raises several unrelated types
            raise RoomserverError(
                BAD_REPLY, f"the reply to {name} is not msgpack ({exc})"
            ) from None
        if not isinstance(result, dict):
            raise RoomserverError(BAD_REPLY, f"the reply to {name} is not a map")
        if is_error_reply(result):
            raise RoomserverError.from_wire(result)
        value = read(result)
        # The decoded map goes before the collector is back (unless it is the value):
        # what the next collection has to look at is then only what the caller keeps.
        del result
        return value


class NoResponders(Exception):
    """No one listens on the request's subject (nats-server said so at once)."""


class ReplyInbox:
    """One subscription for all of a client's replies, routed by token."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._next = 0

    async def _subscribe(self) -> None:
        if self._sub is None:
            self._prefix = f"{self._nc.new_inbox()}."
            self._sub = await self._nc.subscribe(
                f"{self._prefix}*", cb=self._route, pending_bytes_limit=_PENDING_BYTES
            )

    async def _route(self, msg: Msg) -> None:
        queue = self._waiting.get(msg.subject[len(self._prefix) :])
        if queue is not None:  # else: late for a request that gave up
            queue.put_nowait(msg)

    async def ask(
        self,
        subject: str,
        name: str,
        payload: bytes,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[bytes, str | None]:
        """Send a request (with `headers` besides its own) and return its reply's
        bytes (reassembled when chunked) and the `Roomserver-Worker` header of who
        answered. NoResponders when no one listens on `subject`."""
        await self._subscribe()
        self._next += 1
        token = str(self._next)
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[token] = queue
        try:
            await self._nc.publish(
                subject,
                payload,
                reply=f"{self._prefix}{token}",
                headers={**_HEADERS, **headers} if headers else _HEADERS,
            )
            first = await self._next_message(queue, subject, name, timeout, None)
            headers = first.headers or {}
            if headers.get(_STATUS) == _NO_RESPONDERS and not first.data:
                raise NoResponders(subject)
            place = chunk_place(headers)
            if place is None:
                return first.data, headers.get(WORKER_HEADER)
            reassembly = Reassembly.first(name, headers, first.data)
            while not reassembly.complete:
                msg = await self._next_message(queue, subject, name, timeout, reassembly)
                reassembly.add(msg.headers, msg.data)
            return reassembly.body(), headers.get(WORKER_HEADER)
        finally:
            del self._waiting[token]

    @staticmethod
    async def _next_message(
        queue: asyncio.Queue[Msg],
        subject: str,
        name: str,
        timeout: float,
        reassembly: Reassembly | None,
    ) -> Msg:
        try:
            # A deadline on this task (not wait_for, which runs the get in a task of
            # its own: one task and one turn of the event loop more per message).
            async with asyncio.timeout(timeout):
                return await queue.get()
        except TimeoutError:
            if reassembly is None:
                raise RoomserverError(
                    UNAVAILABLE, f"no answer to {name} within {timeout:g} s"
                ) from None
            raise RoomserverError(
                INCOMPLETE_REPLY,
                f"chunk {reassembly.expected}/{reassembly.count} of the reply to {name} "
                f"did not arrive within {timeout:g} s of the one before; no partial "
                "reply is returned",
            ) from None

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
