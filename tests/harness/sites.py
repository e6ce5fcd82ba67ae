"""Sites for the process harness: nats-server(s) as child processes, the worker's
storage, and the comparison of a disturbed run with the undisturbed reference run.

The reference itself is a session fixture in tests/faults/conftest.py: the same feed
processed by the same worker subprocess against its own nats-server, with nothing
going wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import APIError

from tests.harness.feed import Feed
from tests.harness.procs import (
    DatabaseDump,
    NatsProcess,
    StoredMessage,
    WorkerProcess,
    cli,
    consumer_settled,
    dump_database,
    nats_cluster,
    read_stream,
    worker_env,
)
from worker.bus.connection import connect
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.streams import ensure_streams
from worker.config import Config, NatsConfig, load_config


@dataclass(slots=True)
class RunResult:
    dump: DatabaseDump
    outputs: list[StoredMessage]
    dead_letters: list[StoredMessage]
    #: The JSON log lines of the worker that finished the run.
    log_lines: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Site:
    """nats-server(s), a connection to them, and the storage of the worker under test."""

    base: Path
    servers: list[NatsProcess]
    nc: NATS
    config: Config

    @property
    def server(self) -> NatsProcess:
        return self.servers[0]

    @property
    def urls(self) -> str:
        return ",".join(server.url for server in self.servers)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    @property
    def storage(self) -> Path:
        return Path(self.config.storage.path)

    def env(self, **overrides: str) -> dict[str, str]:
        replicas = {"streams_replicas": str(len(self.servers))}
        return worker_env(self.urls, self.storage, **replicas, **overrides)

    def worker(self, module: str = "worker.cli", **overrides: str) -> WorkerProcess:
        return WorkerProcess(self.env(**overrides), self.base / "cwd", module)

    def cli(self, *args: str, timeout: float = 60) -> tuple[int, str]:
        """`roomserver ARGS` against this site; (exit status, output)."""
        return cli(self.env(), self.base / "cwd", *args, timeout=timeout)

    async def publish(
        self, feed: Feed, timeout: float = 30.0, messages: Sequence[Outgoing] | None = None
    ) -> None:
        """Publish the feed's inputs (or only `messages`, a part of them)."""
        # A new cluster answers only once it has elected its JetStream leaders.
        deadline = time.monotonic() + timeout
        while True:
            try:
                await ensure_streams(self.js, self.config)
                break
            except (APIError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        chosen = feed.messages if messages is None else messages
        acks = await Publisher(self.js, self.config).publish_many(chosen)
        assert not any(ack.duplicate for ack in acks)

    async def settled(self) -> bool:
        return await consumer_settled(
            self.js, self.config.streams.input, self.config.consumer.durable
        )

    async def result(self) -> RunResult:
        streams = self.config.streams
        prefix = streams.subject_prefix
        return RunResult(
            dump_database(self.storage),
            await read_stream(self.js, streams.output, f"{prefix}.output.>"),
            await read_stream(self.js, streams.deadletter, f"{prefix}.deadletter.>"),
        )


@contextlib.asynccontextmanager
async def site(base: Path, cluster: int = 0) -> AsyncIterator[Site]:
    """A fresh nats-server with file storage under ``base``; with ``cluster``, that many
    servers routed into one JetStream cluster (streams replicated on all of them)."""
    servers = nats_cluster(base, cluster) if cluster else [NatsProcess(base / "nats")]
    try:
        for server in servers:
            await server.start()
        urls = [server.url for server in servers]
        nc = await connect(NatsConfig(), urls, name="fault-test")
        try:
            env = worker_env(",".join(urls), base / "data", streams_replicas=str(len(urls)))
            yield Site(base, servers, nc, load_config(None, env))
        finally:
            await nc.close()
    finally:
        for server in servers:
            await server.stop()


async def finish(site: Site, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Let a worker run undisturbed to the end of the feed, then stop it with SIGTERM;
    returns its log lines."""
    worker = site.worker()
    try:
        await worker.until(site.settled, "every input acknowledged", timeout)
        code = await worker.stop(signal.SIGTERM)
        assert code == 0, worker.log_tail()
    finally:
        worker.ensure_dead()
    return worker.lines


@dataclass(frozen=True, slots=True)
class Figures:
    stored: int
    lost: int
    unexpected: int
    duplicate_outputs: int
    duplicate_dead_letters: int


def compare(result: RunResult, reference: RunResult, feed: Feed) -> Figures:
    """Assert that a disturbed run ended exactly like the reference; return its figures."""
    stored = set(result.dump.events)
    output_ids = [m.msg_id for m in result.outputs]
    dead_ids = [m.msg_id for m in result.dead_letters]
    figures = Figures(
        stored=len(stored),
        lost=len(feed.event_ids - stored),
        unexpected=len(stored - feed.event_ids),
        duplicate_outputs=len(output_ids) - len(set(output_ids)),
        duplicate_dead_letters=len(dead_ids) - len(set(dead_ids)),
    )
    assert figures.lost == 0, sorted(feed.event_ids - stored)[:5]
    assert figures.unexpected == 0
    assert figures.duplicate_outputs == 0
    assert figures.duplicate_dead_letters == 0
    assert None not in output_ids

    # Every output exactly once, in the same order and with the same bytes.
    assert len(result.outputs) == len(reference.outputs)
    for got, want in zip(result.outputs, reference.outputs, strict=True):
        assert (got.subject, got.msg_id, got.data) == (want.subject, want.msg_id, want.data), (
            f"output #{got.seq} differs"
        )
    assert [(m.subject, m.msg_id, m.data) for m in result.dead_letters] == [
        (m.subject, m.msg_id, m.data) for m in reference.dead_letters
    ]
    assert len(reference.dead_letters) == feed.bad_inputs

    # The database holds the same events, statuses, states, rooms and redactions.
    differing = [
        eid for eid, row in reference.dump.events.items() if result.dump.events.get(eid) != row
    ]
    assert not differing, f"{len(differing)} events differ, e.g. {differing[0]}"
    assert result.dump.rooms == reference.dump.rooms
    assert result.dump.redactions == reference.dump.redactions
    assert (result.dump.outbox, result.dump.held) == (0, 0)
    return figures
