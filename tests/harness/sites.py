"""Sites for the process harness: nats-server(s) as child processes, the worker's
storage, and the comparison of a disturbed run with the undisturbed reference run.

The reference itself is a session fixture in tests/faults/conftest.py: the same feed
processed by the same worker subprocess against its own nats-server, with nothing
going wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections import defaultdict
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
from worker.bus.partitions import partition_of_room
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.streams import ensure_streams
from worker.config import (
    Config,
    NatsConfig,
    PartitionsConfig,
    load_config,
    partition_directory,
)


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
        defaults = {"streams_replicas": str(len(self.servers))}
        if self.config.partitions.count > 1:
            defaults["partitions_count"] = str(self.config.partitions.count)
        return worker_env(self.urls, self.storage, **(defaults | overrides))

    def worker(
        self, module: str = "worker.cli", args: Sequence[str] = ("run",), **overrides: str
    ) -> WorkerProcess:
        return WorkerProcess(self.env(**overrides), self.base / "cwd", module, args)

    def cli(self, *args: str, timeout: float = 60) -> tuple[int, str]:
        """`roomserver ARGS` against this site; (exit status, output)."""
        return cli(self.env(), self.base / "cwd", *args, timeout=timeout)

    async def publish(
        self, feed: Feed, timeout: float = 60.0, messages: Sequence[Outgoing] | None = None
    ) -> None:
        """Publish the feed's inputs (or only `messages`, a part of them)."""
        # A new cluster answers only once it has elected its JetStream leaders.
        deadline = time.monotonic() + timeout
        while True:
            try:
                await ensure_streams(self.js, self.config)
                break
            except (APIError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    logs = "\n".join(
                        f"--- {s.store_dir.name}:\n{s.log_tail()}" for s in self.servers
                    )
                    raise AssertionError(f"JetStream did not answer: {exc!r}\n{logs}") from exc
                await asyncio.sleep(0.1)
        chosen = feed.messages if messages is None else messages
        acks = await Publisher(self.js, self.config).publish_many(chosen)
        assert not any(ack.duplicate for ack in acks)

    async def settled(self) -> bool:
        return await consumer_settled(
            self.js, self.config.streams.input, self.config.consumer.durable
        )

    async def result(self) -> RunResult:
        streams = await self.result_streams()
        streams.dump = dump_database(self.storage)
        return streams

    async def result_streams(self) -> RunResult:
        """The output and dead-letter streams, without a database (partitions have one
        each: compare_partitions reads them)."""
        streams = self.config.streams
        prefix = streams.subject_prefix
        return RunResult(
            DatabaseDump({}, {}, set(), 0, 0),
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

    # Every output exactly once, with the same bytes, and in its room's order: rooms
    # interleave differently from run to run, since cheap rooms' inputs go before an
    # expensive room's (worker.runner.fairness); a room's inputs never do.
    assert len(result.outputs) == len(reference.outputs)
    assert _by_subject(result.outputs) == _by_subject(reference.outputs)
    assert sorted((m.subject, m.msg_id, m.data) for m in result.dead_letters) == sorted(
        (m.subject, m.msg_id, m.data) for m in reference.dead_letters
    )
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


# -- partitions ---------------------------------------------------------------------------


def partitioned(s: Site, count: int) -> Site:
    """``s`` with ``count`` partitions: the streams it creates carry the partition
    transform, and its workers' environment names the count."""
    s.config = dataclasses.replace(s.config, partitions=PartitionsConfig(count))
    return s


async def partitions_settled(s: Site) -> bool:
    """Every partition's consumer has had and acknowledged all its inputs (its ack
    floor is its own last input, not the stream's)."""
    for k in range(s.config.partitions.count):
        durable = f"{s.config.consumer.durable}-{k}"
        try:
            info = await s.js.consumer_info(s.config.streams.input, durable)
        except Exception:  # not created yet, or its leader is being elected
            return False
        if info.num_pending or info.num_ack_pending or not info.delivered.stream_seq:
            return False
    return True


def _by_subject(outputs: Sequence[StoredMessage]) -> dict[str, list[tuple[str | None, bytes]]]:
    rooms: dict[str, list[tuple[str | None, bytes]]] = defaultdict(list)
    for message in outputs:
        rooms[message.subject].append((message.msg_id, message.data))
    return rooms


async def compare_partitions(s: Site, reference: RunResult, feed: Feed) -> Figures:
    """Assert that a partitioned run ended like the one-worker reference: each room held
    by the one partition NATS's hash gives it, with the same events, state and
    redactions; every output once and in its room's order (rooms interleave differently
    across partitions); the same dead letters. Returns the run's figures."""
    count = s.config.partitions.count
    events: dict[str, tuple[object, ...]] = {}
    rooms: dict[str, tuple[object, ...]] = {}
    redactions: set[tuple[str, str, int]] = set()
    for k in range(count):
        dump = dump_database(partition_directory(s.storage, k))
        assert (dump.outbox, dump.held) == (0, 0), k
        for room_id in dump.rooms:
            assert partition_of_room(room_id, count) == k, room_id
        assert not events.keys() & dump.events.keys()
        events.update(dump.events)
        rooms.update(dump.rooms)
        redactions |= dump.redactions
    assert rooms == reference.dump.rooms
    assert events == reference.dump.events
    assert redactions == reference.dump.redactions

    result = await s.result_streams()
    output_ids = [m.msg_id for m in result.outputs]
    dead_ids = [m.msg_id for m in result.dead_letters]
    figures = Figures(
        stored=len(events),
        lost=len(feed.event_ids - events.keys()),
        unexpected=len(events.keys() - feed.event_ids),
        duplicate_outputs=len(output_ids) - len(set(output_ids)),
        duplicate_dead_letters=len(dead_ids) - len(set(dead_ids)),
    )
    assert (figures.lost, figures.unexpected) == (0, 0)
    assert (figures.duplicate_outputs, figures.duplicate_dead_letters) == (0, 0)
    assert None not in output_ids
    assert _by_subject(result.outputs) == _by_subject(reference.outputs)
    assert sorted((m.subject, m.msg_id, m.data) for m in result.dead_letters) == sorted(
        (m.subject, m.msg_id, m.data) for m in reference.dead_letters
    )
    assert len(result.dead_letters) == feed.bad_inputs
    return figures
