"""What the running parts share: a thread for blocking work, the NATS link, progress, and the
helpers for stopping, settling messages and retrying transient faults."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError

from worker.pipeline import OutboxRow

if TYPE_CHECKING:
    from worker.runner.pipeline_handle import PipelineHandle

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Back-off (seconds) between retries of work that hit a transient database fault.
TRANSIENT_RETRY_DELAY = 0.05
TRANSIENT_RETRY_MAX_DELAY = 2.0
#: How often the worker looks whether NATS is back while it is away.
NATS_POLL_INTERVAL = 0.1
#: Errors of the NATS client and JetStream API that pass when the connection returns.
NATS_ERRORS = (nats.errors.Error, APIError, TimeoutError)


class DbThread:
    """One thread that runs blocking work in order (the writer's connection, when the
    pipeline runs in this process: worker.runner.pipeline_handle.LocalPipeline)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roomserver-db")

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


@dataclass(frozen=True, slots=True)
class SideWork:
    """What work outside the batches (held-event releases, retries) runs with."""

    pipeline: PipelineHandle
    #: Publishes what such a transaction committed, after the last batch's outputs.
    publish: Callable[[list[OutboxRow], asyncio.Event], Awaitable[None]]


class NatsLink:
    """Waiting for the connection, and giving up on work when it drops."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc

    async def wait_connected(self, stop: asyncio.Event) -> bool:
        """Wait until NATS is connected (True) or the worker is stopped (False)."""
        nc = self.nc
        if not nc.is_connected:
            log.warning("NATS unavailable; waiting for the connection to return")
        while not nc.is_connected and not nc.is_closed and not stop.is_set():
            await sleep_unless_stopped(NATS_POLL_INTERVAL, stop)
        return nc.is_connected

    async def while_connected(self, awaitable: Awaitable[R]) -> R:
        """Await ``awaitable``, giving up as soon as the connection drops: JetStream's
        acks for publishes in flight then never come, and waiting out their timeout
        would only delay the retry after the reconnection."""
        task = asyncio.ensure_future(awaitable)
        while True:
            done, _ = await asyncio.wait({task}, timeout=NATS_POLL_INTERVAL)
            if done:
                return task.result()
            if not self.nc.is_connected:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise nats.errors.ConnectionReconnectingError


class Progress:
    """Batches settled so far, for tests and tools that wait for the worker to catch up."""

    def __init__(self) -> None:
        self.batches = 0
        self._condition = asyncio.Condition()

    async def notify(self) -> None:
        async with self._condition:
            self._condition.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with self._condition:
            await asyncio.wait_for(self._condition.wait_for(predicate), timeout)


async def settle(
    messages: Sequence[Msg], actions: Sequence[Callable[[Msg], Awaitable[None]]]
) -> None:
    """Ack, term, nak or mark in progress each message with its action. A failure loses
    nothing: the input comes back (after a rewind or ack_wait) and is recognised as a
    duplicate, or is processed again."""
    for message, action in zip(messages, actions, strict=True):
        # try/except rather than contextlib.suppress: no context manager per message.
        try:
            await action(message)
        except NATS_ERRORS:
            continue


def next_delay(delay: float, ceiling: float = TRANSIENT_RETRY_MAX_DELAY) -> float:
    """Exponential back-off: twice the last delay, up to `ceiling`."""
    return min(delay * 2, ceiling)


async def sleep_unless_stopped(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def unless_stopped(awaitable: Awaitable[R], stop: asyncio.Event) -> R | None:
    """The result of ``awaitable``, or None if ``stop`` is set first (it is cancelled)."""
    task = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
