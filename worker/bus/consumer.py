"""The worker's durable pull consumer on the input stream.

Pull rather than push: the worker asks for a batch only when it has room for it, so a
slow database throttles delivery instead of piling up redeliveries. Acks are explicit
because a message may be acknowledged only after its effects are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import nats.errors
import structlog
from nats.aio.msg import Msg
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
        self._stream = config.streams.input
        self._batch_size = config.consumer.batch_size
        self._fetch_timeout = config.consumer.fetch_timeout
        self._consumer_config = consumer_config(config)
        self._subscription: JetStreamContext.PullSubscription | None = None

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def durable(self) -> str:
        assert self._consumer_config.durable_name is not None
        return self._consumer_config.durable_name

    async def start(self) -> None:
        """Create or update the durable consumer and bind a pull subscription to it."""
        await self._create_consumer()
        if self._subscription is None:
            self._subscription = await self._js.pull_subscribe_bind(
                durable=self.durable, stream=self._stream
            )

    async def close(self) -> None:
        """Stop pulling. The durable consumer stays, with its unacknowledged messages."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            # Closing after the connection is gone is part of a normal shutdown.
            with contextlib.suppress(nats.errors.ConnectionClosedError):
                await subscription.unsubscribe()

    async def info(self) -> api.ConsumerInfo:
        info: api.ConsumerInfo = await self._js.consumer_info(self._stream, self.durable)
        return info

    async def fetch_batch(self, limit: int | None = None) -> list[Msg]:
        """Up to `limit` (default consumer.batch_size) messages; empty when none came
        within fetch_timeout.

        Whatever it returns must each be acked, nak'ed or terminated by the caller.
        """
        if self._subscription is None:
            await self.start()
        assert self._subscription is not None
        batch = self._batch_size if limit is None else min(limit, self._batch_size)
        try:
            return await self._subscription.fetch(batch, timeout=self._fetch_timeout)
        except TimeoutError:
            # nats-py raises its own TimeoutError subclasses or a bare asyncio one,
            # depending on where in the pull request the deadline passes.
            return []
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
