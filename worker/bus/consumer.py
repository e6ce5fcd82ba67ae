"""The worker's durable pull consumer on the input stream.

Pull rather than push: the worker asks for a batch only when it has room for it, so a
slow database throttles delivery instead of piling up redeliveries. Acks are explicit
because a message may be acknowledged only after its effects are committed.

A fetch is one pull request as JetStream's API has it (a `CONSUMER.MSG.NEXT` request
with `batch`, `expires` and `no_wait`): the server delivers what it has, up to the
batch, and ends the request with a status (404 when nothing more is there, 408 when it
expired) unless the batch is full; with nothing there it waits for the first input. The
messages go to one subscription with a callback that keeps them in a list. nats-py's
`PullSubscription.fetch` does the same with a task, a timer and a random UUID (a
system call) per message, a measurable share of the event loop per input. Each
request has its own reply subject, so that the end of an earlier request (one given
up on) is told apart; its messages are kept for the next fetch, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Final

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from worker.bus.lifecycle import Started
from worker.bus.subjects import Subjects
from worker.config import Config

log = structlog.get_logger("worker.bus.consumer")

_CONFLICT: Final = 409
#: Tokens of a JetStream reply subject without a domain and account hash (the first
#: form): $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>.
_V1_TOKENS: Final = 9
#: Statuses that end a pull request with what it delivered: nothing more there (404),
#: expired (408).
_ENDED: Final = frozenset({"404", "408"})
#: No one answers the consumer's API (the consumer, its stream or JetStream is gone).
_NO_RESPONDERS: Final = "503"
#: An idle heartbeat or flow control message (not asked for; ignored).
_CONTROL: Final = "100"
#: How much sooner than the fetch's own timeout the server expires its request (as
#: nats-py does), so that its 408 usually comes before the timeout.
_EXPIRES_MARGIN_NS: Final = 100_000
#: The shortest expiry asked for (a shorter fetch_timeout gives up first; what its
#: request still delivers is kept for the next fetch).
_MIN_EXPIRES_NS: Final = 1_000_000


def stream_position(message: Msg) -> tuple[int, int]:
    """(stream sequence, messages still pending for the consumer) of a fetched message.

    Read from its reply subject directly: nats-py's `Msg.metadata` builds a datetime and
    two dataclasses per message, a measurable share of the worker's event loop per input.
    A reply that is not JetStream's is left to `Msg.metadata`, which raises for it."""
    tokens = (message.reply or "").split(".")
    if tokens[:2] != [Msg.Ack.Prefix0, Msg.Ack.Prefix1] or len(tokens) < _V1_TOKENS:
        metadata = message.metadata
        return metadata.sequence.stream, metadata.num_pending
    if len(tokens) == _V1_TOKENS:
        return int(tokens[5]), int(tokens[8])
    return int(tokens[Msg.Ack.StreamSeq]), int(tokens[Msg.Ack.NumPending])


def consumer_config(config: Config) -> api.ConsumerConfig:
    """The durable consumer the configuration asks for."""
    consumer = config.consumer
    return api.ConsumerConfig(
        name=consumer.durable,
        durable_name=consumer.durable,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=consumer.ack_wait,
        max_deliver=consumer.max_deliver or -1,
        # load_config fills filter_subject in; a hand-built Config may leave it empty.
        filter_subject=consumer.filter_subject
        or Subjects(config.streams.subject_prefix).input_wildcard,
        max_ack_pending=consumer.max_ack_pending,
        replay_policy=api.ReplayPolicy.INSTANT,
    )


class PullConsumer(Started):
    """Fetches batches of input messages; recreates its consumer if someone deletes it.

    A recreated consumer starts again from the beginning of the stream: the worker's
    processing is idempotent, so this costs time, never correctness.
    """

    def __init__(self, js: JetStreamContext, config: Config) -> None:
        self._js = js
        # The JetStream context's connection and API prefix (nats-py keeps no public
        # handle to them): a pull request is a plain publish to the consumer's API.
        self._nc: NATS = js._nc
        self._stream = config.streams.input
        self._batch_size = config.consumer.batch_size
        self._fetch_timeout = config.consumer.fetch_timeout
        self._consumer_config = consumer_config(config)
        self._next = f"{js._prefix}.CONSUMER.MSG.NEXT.{self._stream}.{self.durable}"
        self._subscription: Subscription | None = None
        #: The reply subjects' common start (`<inbox>.`) of the subscription.
        self._inbox = ""
        self._requests = 0
        #: Delivered messages not returned by a fetch yet, in delivery order.
        self._delivered: list[Msg] = []
        #: The fetch under way: its request's reply subject, how many messages it
        #: returns at most, and what ends its wait (the request's closing status
        #: message, or None).
        self._reply = ""
        self._wanted = 0
        self._waiter: asyncio.Future[Msg | None] | None = None

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def durable(self) -> str:
        assert self._consumer_config.durable_name is not None
        return self._consumer_config.durable_name

    async def start(self) -> None:
        """Create or update the durable consumer and subscribe to its deliveries."""
        await self._create_consumer()
        if self._subscription is None:
            self._inbox = f"{self._nc.new_inbox()}."
            self._subscription = await self._nc.subscribe(f"{self._inbox}*", cb=self._on_message)

    async def close(self) -> None:
        """Stop pulling. The durable consumer stays, with its unacknowledged messages;
        those delivered but not fetched yet come again after ack_wait (or a rewind)."""
        subscription, self._subscription = self._subscription, None
        self._delivered = []
        self._end(None)
        if subscription is not None:
            # Closing after the connection is gone is part of a normal shutdown.
            with contextlib.suppress(nats.errors.ConnectionClosedError):
                await subscription.unsubscribe()

    async def info(self) -> api.ConsumerInfo:
        info: api.ConsumerInfo = await self._js.consumer_info(self._stream, self.durable)
        return info

    async def fetch_batch(self, limit: int | None = None) -> list[Msg]:
        """Up to `limit` (default consumer.batch_size) messages; empty when none came
        within fetch_timeout. One fetch at a time.

        Whatever it returns must each be acked, nak'ed or terminated by the caller.
        """
        if self._subscription is None:
            await self.start()
        batch = self._batch_size if limit is None else min(limit, self._batch_size)
        try:
            if len(self._delivered) < batch:
                await self._pull(batch)
        except APIError as exc:
            # ServiceUnavailable (no responders): the consumer is gone or JetStream is
            # down; NotFound or 409: the consumer was deleted under a pending pull.
            gone = isinstance(exc, ServiceUnavailableError | NotFoundError)
            if not gone and exc.code != _CONFLICT:
                raise
            if not await self._recover(exc):
                # JetStream is not answering: wait as long as an empty fetch would, so the
                # caller's loop does not spin.
                await asyncio.sleep(self._fetch_timeout)
            return []
        taken, self._delivered = self._delivered[:batch], self._delivered[batch:]
        return taken

    async def _pull(self, batch: int) -> None:
        """Ask for what `batch` lacks and wait until it is there, the request ended
        or fetch_timeout passed; raises the APIError of a request that failed with
        nothing delivered."""
        self._requests += 1
        self._reply = reply = f"{self._inbox}{self._requests}"
        self._wanted = batch
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        request = {
            "batch": batch - len(self._delivered),
            "expires": max(_MIN_EXPIRES_NS, int(self._fetch_timeout * 1e9) - _EXPIRES_MARGIN_NS),
            "no_wait": True,
        }
        try:
            await self._nc.publish(self._next, json.dumps(request).encode(), reply=reply)
            ended = await asyncio.wait_for(waiter, self._fetch_timeout)
        except TimeoutError:
            # No answer in time (as while the connection is away): what came is kept.
            return
        finally:
            self._waiter = None
        if ended is None or ended.headers is None or self._delivered:
            return
        status = ended.headers.get(api.Header.STATUS, "")
        if status in _ENDED:
            return
        if status == _NO_RESPONDERS:
            raise ServiceUnavailableError
        description = ended.headers.get(api.Header.DESCRIPTION, "")
        raise APIError(code=int(status) if status.isdigit() else None, description=description)

    async def _on_message(self, message: Msg) -> None:
        headers = message.headers
        status = headers.get(api.Header.STATUS) if headers else None
        if status is None:
            self._delivered.append(message)
            if len(self._delivered) >= self._wanted:
                self._end(None)
        elif status != _CONTROL and message.subject == self._reply:
            # The end of the request under way (an earlier request's end says nothing).
            self._end(message)

    def _end(self, ended: Msg | None) -> None:
        """End the wait of the fetch under way, if any."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(ended)

    async def _recover(self, cause: APIError) -> bool:
        """Recreate the consumer if it is missing; False if JetStream could not say."""
        try:
            await self.info()
        except NotFoundError:
            log.warning(
                "input consumer is missing; recreating it",
                stream=self._stream,
                consumer=self.durable,
                cause=str(cause),
            )
            try:
                # A fresh subscription too: the old one may still hold messages of the
                # deleted consumer, which would come before the redelivered older ones.
                await self.close()
                await self.start()
            except (APIError, TimeoutError) as exc:
                log.warning("could not recreate the input consumer", error=str(exc))
                return False
            return True
        except (APIError, TimeoutError) as exc:
            log.warning("JetStream unavailable while fetching", error=str(exc))
            return False
        return True

    async def _create_consumer(self) -> None:
        # The server creates the consumer, or updates it if it exists with compatible
        # settings (ack_wait, max_deliver, max_ack_pending and filter_subject can change).
        try:
            await self._js.add_consumer(self._stream, self._consumer_config)
        except APIError as exc:
            if exc.code != 400:
                raise
            existing = await self.info()
            log.warning(
                "input consumer exists with settings that cannot be updated; using it as it is",
                stream=self._stream,
                consumer=self.durable,
                error=exc.description,
                existing=existing.config.as_dict(),
            )
