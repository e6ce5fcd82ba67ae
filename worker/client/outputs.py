"""The client's outputs: one output message, and the stream of them a durable pull
consumer delivers (contract section 4)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self

import msgpack
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from worker.bus.lifecycle import Started


@dataclass(slots=True)
class Output:
    """One output message (contract section 4) and the means to settle it."""

    type: str
    body: dict[str, Any]
    subject: str
    stream_sequence: int
    msg: Msg = field(repr=False)
    settled: bool = False

    @property
    def room_id(self) -> str | None:
        value = self.body.get("room_id")
        return value if isinstance(value, str) else None

    @property
    def event_id(self) -> str | None:
        value = self.body.get("event_id", self.body.get("redacted_event_id"))
        return value if isinstance(value, str) else None

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """Have it redelivered (after `delay` seconds)."""
        if not self.settled:
            self.settled = True
            await self.msg.nak(delay=delay)


class OutputStream(Started):
    """Outputs from a durable pull consumer, oldest first; use `async with` then
    `async for`.

    With `auto_ack` (the default) an output is acknowledged when the loop asks for the
    next one, so an output whose handling raised or was interrupted is delivered again
    (at least once). Outputs fetched but not yet handed out when the block ends are
    given back at once (nak), so the next reader gets them without waiting for the
    consumer's ack timeout.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        durable: str,
        *,
        batch: int,
        auto_ack: bool,
        idle_timeout: float | None,
        fetch_wait: float = 1.0,
    ) -> None:
        self._js = js
        self._stream = stream
        self._subject = subject
        self._durable = durable
        self._batch = batch
        self._auto_ack = auto_ack
        self._idle_timeout = idle_timeout
        self._fetch_wait = fetch_wait if idle_timeout is None else min(fetch_wait, idle_timeout)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._pending: deque[Msg] = deque()
        self._in_hand: Output | None = None

    async def start(self) -> None:
        """Bind the durable pull consumer (created if missing)."""
        self._sub = await self._js.pull_subscribe(
            self._subject,
            durable=self._durable,
            stream=self._stream,
            config=api.ConsumerConfig(
                durable_name=self._durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )

    async def close(self) -> None:
        """Give back what was not handled; the durable consumer stays."""
        in_hand, self._in_hand = self._in_hand, None
        with contextlib.suppress(nats.errors.Error):
            if in_hand is not None:
                await in_hand.nak()
            while self._pending:
                await self._pending.popleft().nak()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Output:
        if self._in_hand is not None and self._auto_ack:
            await self._in_hand.ack()
        self._in_hand = None
        if self._sub is None:
            raise RuntimeError("use the output stream inside `async with`")
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while not self._pending:
            # An empty fetch raises nats-py's TimeoutError, a subclass of the builtin.
            with contextlib.suppress(TimeoutError):
                self._pending.extend(await self._sub.fetch(self._batch, timeout=self._fetch_wait))
            if (
                not self._pending
                and self._idle_timeout is not None
                and loop.time() - idle_since >= self._idle_timeout
            ):
                raise StopAsyncIteration
        msg = self._pending.popleft()
        body = msgpack.unpackb(msg.data, raw=False)
        meta = msg.metadata
        output = Output(
            type=str(body.get("type", "")) if isinstance(body, dict) else "",
            body=body if isinstance(body, dict) else {},
            subject=msg.subject,
            stream_sequence=meta.sequence.stream if meta is not None else 0,
            msg=msg,
        )
        self._in_hand = output
        return output
