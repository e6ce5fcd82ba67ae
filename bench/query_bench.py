"""State-query latency: a room whose state has 10,000 entries, asked over NATS; and
the whole state of a 100,000-member room, which comes in chunks.

`python -m bench.query_bench [--entries N] [--samples S] [--restarts R]
[--big-members M]` (starts its own nats-server), or `bench_queries(url, workdir)` and
`bench_big_state(url, workdir)` from `bench.run`.

The room (create, the creator's join, power levels, join rules and N-4 more joins) is
fed to a worker running as its own process (`roomserver run`, as in production, so its
garbage collector sees only its own heap); then the `state` query for the room's whole
current state is timed from this process through the real request/reply path
(client → nats-server → worker → reply → client, decoding included):

- cold: the first query after the worker starts, nothing decoded yet (the worker is
  restarted R times; SQLite's files stay in the OS's cache);
- warm: the same query repeated, the whole state sent each time (a client that keeps
  no states: `state_cache_entries=0`);
- unchanged: the same by a client that keeps the states it got (the default), so that
  the worker answers that the state is unchanged instead of sending it again;
- filtered: warm, only the power levels (what a client about to send an event asks);
- service: the worker's own average processing time for the warm queries, from the
  micro service's stats (`$SRV.STATS`): the part that is not NATS or the client;
- CPU per warm query, of this process and of the worker's, and this process's garbage
  collections during the warm queries (by generation: how many, the longest): what
  decides the tail on a shared machine, where wall times mostly measure waiting for
  a core;
- floor: a bare nats-py request/reply carrying as many bytes as the warm reply, answered
  by a process that does nothing else (`--floor-responder`), one after each warm query:
  what moving those bytes through NATS and nats-py costs on this machine at that
  moment, whatever the worker and the client do; and the same for the bytes of the
  contract's triples (`reply_bytes`), what the reply weighed before the grouped form;
  and this process's CPU per floor request of the warm reply's bytes: what nats-py
  takes to move them, so that the warm query's client CPU beyond it is the decode;
- the warm query split: the worker's reply to the same request not decoded, asked
  right after each warm query (`undecoded`: the worker's and NATS's share), and each
  warm query until `state()` returned (`warm_to_value`) and then freeing the state it
  returned (`warm_freeing`), which `warm` includes as before.

The big room (`bench_big_state`) is built the cheap way: its joins go through the
pipeline in this process, straight into a storage directory (no NATS, no outputs),
which is kept in a cache keyed by the member count and the storage schema, so that
the next run starts at once. A worker process is then started on a copy and asked for
the room's whole state through the client (cold, then warm) and once through
`roomserver state`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgpack
from nats.aio.client import Client as NATS

from bench.common import percentile, worker_env
from bench.query_decode import read_every_entry
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.client import RoomserverClient, RoomserverError
from worker.config import load_config
from worker.matrix.builder import RoomBuilder
from worker.pipeline import Disposition, InboundMessage, Pipeline
from worker.query import SERVICE_NAME
from worker.query.chunks import chunk_size
from worker.query.schema import ACCEPT_STATE_HEADER, GROUPED, State
from worker.runner.pipeline_process import GC_GEN0_THRESHOLD
from worker.storage import schema as storage_schema
from worker.storage.database import Database
from worker.synthetic import linear_room

ROOM_VERSION = "10"
#: State entries of the bootstrap: create, the creator's join, power levels, join rules.
BOOTSTRAP_STATE = 4
#: `storage.cache_mb` of the big room's worker: a 100,000-member room's whole state
#: needs about 100 MiB of the query side's caches to be answered from memory (its
#: names, blocks and encoded reply), more than the default budget's query share; an
#: operator with such rooms raises the budget the same way (docs/operations.md,
#: Memory).
BIG_STATE_CACHE_MB = 512


def _summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "samples": len(ms),
    }


@contextlib.contextmanager
def _worker_process(
    env: dict[str, str], workdir: Path, log: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    """`roomserver run` in its own process, stopped with SIGTERM as an operator would."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run"],
        env={**os.environ, **env},
        cwd=workdir,
        stdout=log,
        stderr=log,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _until_answering(client: RoomserverClient, timeout: float = 60.0) -> None:
    """Poll until the worker's query service answers (it starts with the worker)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.rooms()
            return
        except RoomserverError as exc:
            if exc.code != "unavailable" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


#: Subject the floor responder answers on: the request's body is the reply's size.
FLOOR_SUBJECT = "bench.floor"


async def _floor_responder(url: str) -> None:
    """Answer each request on FLOOR_SUBJECT with as many (random) bytes as it asks for:
    nothing but nats-py, in its own process as the worker is."""
    client = NATS()
    await client.connect(url)
    bodies: dict[int, bytes] = {}

    async def answer(msg: Any) -> None:
        size = int(msg.data)
        body = bodies.get(size)
        if body is None:
            body = bodies[size] = os.urandom(size)
        await msg.respond(body)

    await client.subscribe(FLOOR_SUBJECT, cb=answer)
    await client.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


@contextlib.contextmanager
def _floor_process(url: str) -> Iterator[None]:
    """The floor responder, started and ready; stopped on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.query_bench", "--floor-responder", url],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the floor responder did not start")
        yield
    finally:
        proc.terminate()
        proc.wait()


async def _floor_request(nc: NATS, size: int) -> float:
    """Seconds for one bare request whose reply is `size` bytes."""
    began = time.perf_counter()
    reply = await nc.request(FLOOR_SUBJECT, str(size).encode(), timeout=60)
    elapsed = time.perf_counter() - began
    if len(reply.data) != size:
        raise RuntimeError(f"the floor responder sent {len(reply.data)} bytes, not {size}")
    return elapsed


async def _undecoded_reply(nc: NATS, subject: str, request: bytes) -> bytes:
    """The worker's reply to `request` as the client asks for it (the grouped form), by
    nats-py's own request: its bytes, not decoded."""
    reply = await nc.request(subject, request, timeout=60, headers={ACCEPT_STATE_HEADER: GROUPED})
    return reply.data


async def _undecoded_request(nc: NATS, subject: str, request: bytes) -> float:
    """Seconds for one `_undecoded_reply`."""
    began = time.perf_counter()
    await _undecoded_reply(nc, subject, request)
    return time.perf_counter() - began


async def _service_stats(nc: NATS, prefix: str, window: float = 0.5) -> dict[str, Any]:
    """The `state` endpoint's stats from the one roomserver service using `prefix`.

    `$SRV.STATS.roomserver` is answered by every running instance, so replies are
    gathered for `window` seconds and picked by the subject prefix in their metadata.
    """
    replies: list[dict[str, Any]] = []
    inbox = nc.new_inbox()

    async def collect(msg: Any) -> None:
        replies.append(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.STATS.{SERVICE_NAME}", b"", reply=inbox)
    await asyncio.sleep(window)
    await sub.unsubscribe()
    for reply in replies:
        if reply.get("metadata", {}).get("subject_prefix") == prefix:
            return next(e for e in reply["endpoints"] if e["name"] == "state")
    raise RuntimeError(f"no roomserver service with subject prefix {prefix} answered")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process `pid` has used so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Collections:
    """This process's garbage collections while `on`: by generation, how many, their
    total and their longest pause (milliseconds), from `gc.callbacks`."""

    def __init__(self) -> None:
        self.on = False
        self._began = 0.0
        self.pauses: dict[int, list[float]] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self.on:
            pause = (time.perf_counter() - self._began) * 1000
            self.pauses.setdefault(info["generation"], []).append(pause)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Collections]:
        gc.callbacks.append(self)
        try:
            yield self
        finally:
            gc.callbacks.remove(self)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            f"gen{generation}": {
                "collections": len(pauses),
                "total_ms": round(sum(pauses), 2),
                "max_ms": round(max(pauses), 2),
            }
            for generation, pauses in sorted(self.pauses.items())
        }


async def _cold_query(client: RoomserverClient, room_id: str, entries: int) -> float:
    """Seconds of the first state query a freshly started worker answers (checked whole)."""
    await _until_answering(client)
    began = time.perf_counter()
    state = await client.state(room_id)
    seconds = time.perf_counter() - began
    if len(state.entries) != entries:
        raise RuntimeError(f"the room's state has {len(state.entries)} entries, not {entries}")
    return seconds


def _make_entries(state: State) -> None:
    """Every entry of `state` as a StateEntry (`entries`, where it is made on first use)."""
    if not state.entries:
        raise RuntimeError("the state has no entries")


async def _timed(samples: int, ask: Callable[[], Awaitable[object]]) -> list[float]:
    """Seconds of each of `samples` calls of `ask`, one after the other."""
    times: list[float] = []
    for _ in range(samples):
        began = time.perf_counter()
        await ask()
        times.append(time.perf_counter() - began)
    return times


async def bench_queries(
    url: str, workdir: Path, *, entries: int = 10_000, samples: int = 200, restarts: int = 10
) -> dict[str, Any]:
    """Feed a room with `entries` state entries to a worker and time the state query.

    Returns {"entries", "reply_bytes" (the contract's triples), "grouped_reply_bytes"
    (what the client gets), "feed_seconds", "cold": {p50_ms, p99_ms, samples}, "warm":
    {...}, "filtered": {...}, "unchanged": {...}, "service_warm_avg_ms", "warm_cpu_ms":
    {client, worker} (per warm query), "floor_client_cpu_ms" (this process's CPU per
    floor request of the same bytes), "warm_client_cpu": {p50_ms, p99_ms, samples}
    (this process's CPU in each warm query), "warm_client_gc": {genN: {collections, total_ms,
    max_ms}} (this process's, during the warm queries), "floor": {...} (bare
    request/reply of grouped_reply_bytes), "floor_triples": {...} (of reply_bytes),
    "undecoded": {...} (the worker's grouped reply, not decoded), "warm_to_value",
    "warm_to_value_client_cpu", "warm_freeing": {...} (the warm query split: until the
    state is in hand, and freeing it)}.
    """
    if restarts < 1 or samples < 1:
        raise ValueError("restarts and samples must be at least 1")
    tag = uuid.uuid4().hex[:10]
    env = worker_env(
        url, workdir / f"query-{tag}", f"q{tag}", streams_storage="memory", log_level="warning"
    )
    config = load_config(None, env)
    pdus = list(linear_room(ROOM_VERSION, members=entries - BOOTSTRAP_STATE, events=0, seed=7))
    room_id = pdus[1]["room_id"]
    # Keeping no states: every query below moves the whole state (but `unchanged`).
    # Connected as a client connects (its connection's settings are part of its cost).
    client = await RoomserverClient.connect(
        config, name="query-bench", timeout=60, state_cache_entries=0
    )
    nc = client.nc
    js = nc.jetstream()
    log_path = workdir / f"query-{tag}.log"
    try:
        await ensure_streams(js, config)
        for start in range(0, len(pdus), 2000):
            await client.publish_many(pdus[start : start + 2000])
        count = len(pdus)
        # The PDUs are not needed any more: a client's heap is small, and a large one
        # would make this process's garbage collections part of the figures.
        del pdus
        gc.collect()
        cold: list[float] = []
        with open(log_path, "ab") as log:
            fed = time.perf_counter()
            with _worker_process(env, workdir, log):
                await _until_answering(client)
                while (await js.stream_info(config.streams.output)).state.messages < count:
                    await asyncio.sleep(0.05)
                feed_seconds = time.perf_counter() - fed
            for _ in range(restarts):
                with _worker_process(env, workdir, log):
                    cold.append(await _cold_query(client, room_id, entries))
            with (
                _worker_process(env, workdir, log) as worker,
                _floor_process(url),
                _Collections().installed() as collections,
            ):
                await _until_answering(client)
                reply = await client.request("state", {"room_id": room_id})
                reply_bytes = len(msgpack.packb(reply, use_bin_type=True))
                # Not kept through the timed queries: 10,000 lists in this process's
                # heap would be in every full collection there.
                del reply
                subject = client.subjects.query("state")
                request = msgpack.packb({"room_id": room_id})
                grouped_bytes = len(await _undecoded_reply(nc, subject, request))
                before = await _service_stats(nc, config.streams.subject_prefix)
                warm: list[float] = []
                floor: list[float] = []
                floor_triples: list[float] = []
                client_cpu: list[float] = []
                floor_cpu: list[float] = []
                to_value: list[float] = []
                freeing: list[float] = []
                value_cpu: list[float] = []
                undecoded: list[float] = []
                with_entries: list[float] = []
                entries_cpu: list[float] = []
                read_all: list[float] = []
                read_all_cpu: list[float] = []
                uses = [
                    (with_entries, entries_cpu, _make_entries),
                    (read_all, read_all_cpu, read_every_entry),
                ]
                # What the set-up left for the collector is not the warm queries' cost.
                gc.collect()
                worker_cpu = _cpu_seconds(worker.pid)
                for i in range(samples):
                    collections.on = True
                    cpu = time.process_time()
                    began = time.perf_counter()
                    state = await client.state(room_id)
                    valued = time.perf_counter()
                    cpu_valued = time.process_time()
                    # Dropped inside the timed query, as before (a caller frees the
                    # state it had sooner or later); timed apart as well.
                    del state
                    ended = time.perf_counter()
                    warm.append(ended - began)
                    to_value.append(valued - began)
                    freeing.append(ended - valued)
                    client_cpu.append(time.process_time() - cpu)
                    value_cpu.append(cpu_valued - cpu)
                    # The same with every entry made a StateEntry (`entries`, the list
                    # callers of earlier rounds got), and then with every entry read
                    # from the columns as a caller that wants them all would.
                    for figures, cpus, use in uses:
                        cpu = time.process_time()
                        began = time.perf_counter()
                        state = await client.state(room_id)
                        use(state)
                        del state
                        figures.append(time.perf_counter() - began)
                        cpus.append(time.process_time() - cpu)
                    collections.on = False
                    # The worker's own reply again, not decoded: the query's share that
                    # is the worker and NATS (the warm queries still follow the floors,
                    # as before).
                    undecoded.append(await _undecoded_request(nc, subject, request))
                    # The floor in the same moment: one bare request/reply of each size,
                    # in turns first (the worker may still be busy after its reply).
                    sizes = [(floor, grouped_bytes), (floor_triples, reply_bytes)]
                    for figures, size in sizes[:: 1 if i % 2 else -1]:
                        cpu = time.process_time()
                        figures.append(await _floor_request(nc, size))
                        if figures is floor:
                            floor_cpu.append(time.process_time() - cpu)
                worker_cpu = _cpu_seconds(worker.pid) - worker_cpu
                after = await _service_stats(nc, config.streams.subject_prefix)
                filtered = await _timed(
                    samples, lambda: client.state(room_id, keys=[("m.room.power_levels", "")])
                )
                keeping = RoomserverClient(nc, config, timeout=60)
                await keeping.state(room_id)
                unchanged = await _timed(samples, lambda: keeping.state(room_id))
                state = await keeping.state(room_id)
                if len(state.entries) != entries:
                    raise RuntimeError(f"the kept state has {len(state.entries)} entries")
    finally:
        for stream in (config.streams.input, config.streams.output, config.streams.deadletter):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await nc.close()
    service_ns = (after["processing_time"] - before["processing_time"]) / max(
        1, after["num_requests"] - before["num_requests"]
    )
    return {
        "entries": entries,
        "reply_bytes": reply_bytes,
        "grouped_reply_bytes": grouped_bytes,
        "feed_seconds": round(feed_seconds, 2),
        "cold": _summary(cold),
        "warm": _summary(warm),
        "filtered": _summary(filtered),
        "unchanged": _summary(unchanged),
        "service_warm_avg_ms": round(service_ns / 1e6, 3),
        # CPU per warm query: this process's during the query; the worker's over the
        # warm loop (it answers nothing else then: the warm queries and as many
        # undecoded ones, the same request), in clock ticks of 10 ms.
        "warm_cpu_ms": {
            "client": round(sum(client_cpu) / samples * 1000, 3),
            "worker": round(worker_cpu / (samples * (1 + len(uses)) + len(undecoded)) * 1000, 3),
        },
        # This process's CPU per bare request/reply of the warm reply's bytes: what
        # moving them costs the client (nats-py), so that the warm query's CPU beyond
        # it is the decode and the rest of the client's own work.
        "floor_client_cpu_ms": round(sum(floor_cpu) / samples * 1000, 3),
        # This process's CPU in each warm query: its own tail, without the waits.
        "warm_client_cpu": _summary(client_cpu),
        # This process's garbage collections during the warm queries.
        "warm_client_gc": collections.summary(),
        "floor": _summary(floor),
        "floor_triples": _summary(floor_triples),
        # Where a warm query's time goes (issue 11's tail): the worker's reply through
        # NATS, not decoded (`undecoded`: as the client asks, by nats-py's request);
        # the query until the client has the state (`to_value`, and this process's CPU
        # in it), and freeing the state it returned (`freeing`), both parts of `warm`.
        "undecoded": _summary(undecoded),
        "warm_to_value": _summary(to_value),
        "warm_to_value_client_cpu": _summary(value_cpu),
        "warm_freeing": _summary(freeing),
        # The warm query with the whole state used (round eight: `state()` keeps the
        # grouped form's arrays and makes no object per entry until asked): every
        # entry made a StateEntry (`state.entries`), and every entry's three fields
        # read from the columns (`by_type`); each with this process's CPU.
        "warm_entries": _summary(with_entries),
        "warm_entries_client_cpu": _summary(entries_cpu),
        "warm_read_all": _summary(read_all),
        "warm_read_all_client_cpu": _summary(read_all_cpu),
    }


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "roomserver-bench"


def built_room(members: int, *, cache: bool = True) -> tuple[Path, str]:
    """A storage directory holding a linear room of `members` joins (plus its
    bootstrap), built through the pipeline in this process; and the room ID.

    Cached under ~/.cache/roomserver-bench by member count and a hash of the storage
    schema (a changed schema builds afresh); without `cache`, built in a fresh
    temporary directory each time (the caller removes it).
    """
    schema = hashlib.sha256(Path(storage_schema.__file__).read_bytes()).hexdigest()[:12]
    pdus = _joined_room(members)
    first = next(pdus)
    room_id = str(first["room_id"])
    target = _cache_dir() / f"joined-{members}-v{ROOM_VERSION}-{schema}"
    if cache and _cached_room(target) == room_id:
        return target, room_id
    if cache:
        _cache_dir().mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="big-room-", dir=_cache_dir() if cache else None))
    previous = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, *previous[1:])
    db = Database(building)
    try:
        pipeline = Pipeline(db, Subjects())
        subject = Subjects().input(room_id)
        batch: list[InboundMessage] = []
        for seq, pdu in enumerate([first, *pdus], start=1):
            body = msgpack.packb({"event": pdu}, use_bin_type=True)
            batch.append(InboundMessage(subject, body, seq))
            if len(batch) == 512:
                _process(pipeline, batch)
        _process(pipeline, batch)
    finally:
        db.close()
        gc.set_threshold(*previous)
    (building / "room_id").write_text(room_id)
    if not cache:
        return building, room_id
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    return target, room_id


def _cached_room(target: Path) -> str | None:
    """The room ID a cached build holds (None when there is no finished build)."""
    marker = target / "room_id"
    return marker.read_text() if marker.exists() else None


def _joined_room(members: int) -> Iterator[dict[str, Any]]:
    """PDUs of a public room's bootstrap and then `members` joins, one after another.

    Each join is built against the bootstrap's state alone: all a new member's join
    needs for its auth events (create, power levels, join rules). The builder would
    otherwise copy the room's whole state, growing, for every join: quadratic, hours
    for 100,000 members.
    """
    builder = RoomBuilder(ROOM_VERSION, "@creator:example.org", start_ts=1_700_000_000_000)
    yield from (dict(event.pdu) for event in builder.bootstrap(join_rule="public"))
    base = builder.current_state
    for i in range(members):
        yield dict(builder.join(f"@user{i}:example.org", state=base).pdu)


def _process(pipeline: Pipeline, batch: list[InboundMessage]) -> None:
    """One batch through the pipeline; its outbox rows are dropped (no one reads
    them: the worker must not publish 100,000 outputs when it starts)."""
    if not batch:
        return
    results = pipeline.process_batch(batch)
    if any(r is not Disposition.ACK for r in results):
        raise RuntimeError(f"the pipeline refused a join: {results}")
    pipeline.db.outbox.delete_through(2**62)
    batch.clear()


async def bench_big_state(
    url: str, workdir: Path, *, members: int = 100_000, samples: int = 10, cache: bool = True
) -> dict[str, Any]:
    """The whole state of a room of `members` joins, through the client (chunked when
    over max_payload) and through `roomserver state`.

    Returns {"members", "entries", "reply_bytes", "chunks", "build_seconds" (0 when
    cached), "cold_ms", "warm": {p50_ms, p99_ms, samples}, "cli_seconds", "cache_mb"}.
    """
    began = time.perf_counter()
    built, room_id = await asyncio.to_thread(built_room, members, cache=cache)
    build_seconds = time.perf_counter() - began
    tag = uuid.uuid4().hex[:10]
    storage = workdir / f"big-{tag}"
    shutil.copytree(built, storage)
    if not cache:
        shutil.rmtree(built, ignore_errors=True)
    env = worker_env(
        url,
        storage,
        f"b{tag}",
        streams_storage="memory",
        log_level="warning",
        storage_cache_mb=str(BIG_STATE_CACHE_MB),
    )
    config = load_config(None, env)
    client = await RoomserverClient.connect(config, name="big-state-bench", timeout=60)
    nc = client.nc
    js = nc.jetstream()
    try:
        await ensure_streams(js, config)
        with (
            open(workdir / f"big-{tag}.log", "ab") as log,
            _worker_process(env, workdir, log),
        ):
            await _until_answering(client)
            start = time.perf_counter()
            state = await client.state(room_id)
            cold = time.perf_counter() - start
            entries = len(state.entries)
            if entries != members + BOOTSTRAP_STATE:
                raise RuntimeError(f"the big room's state has {entries} entries")
            del state
            reply = await client.request("state", {"room_id": room_id})
            reply_bytes = len(msgpack.packb(reply, use_bin_type=True))
            del reply
            warm: list[float] = []
            for _ in range(samples):
                start = time.perf_counter()
                # With every entry made a StateEntry, as `state()` returned them
                # before round eight (it now keeps the grouped form's arrays).
                _make_entries(await client.state(room_id))
                warm.append(time.perf_counter() - start)
            start = time.perf_counter()
            printed = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "worker.cli", "state", room_id],
                env={**os.environ, **env},
                cwd=workdir,
                capture_output=True,
                check=True,
            )
            cli_seconds = time.perf_counter() - start
            if len(printed.stdout.splitlines()) != entries + 2:
                raise RuntimeError("roomserver state did not print every entry")
    finally:
        for stream in (config.streams.input, config.streams.output, config.streams.deadletter):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        max_payload = nc.max_payload
        await nc.close()
        shutil.rmtree(storage, ignore_errors=True)
    return {
        "members": members,
        "entries": entries,
        "reply_bytes": reply_bytes,
        "chunks": -(-reply_bytes // chunk_size(max_payload)),
        "build_seconds": round(build_seconds, 2),
        "cold_ms": round(cold * 1000, 1),
        "warm": _summary(warm),
        "cli_seconds": round(cli_seconds, 2),
        "cache_mb": BIG_STATE_CACHE_MB,
    }


async def _main(
    entries: int, samples: int, restarts: int, big_members: int, cache: bool
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="query-bench-") as tmp:
        async with EmbeddedNatsServer(Path(tmp) / "nats", port=0) as server:
            result = await bench_queries(
                server.url, Path(tmp), entries=entries, samples=samples, restarts=restarts
            )
            if big_members:
                result["big_state"] = await bench_big_state(
                    server.url, Path(tmp), members=big_members, cache=cache
                )
            return result


def big_state_line(big: dict[str, Any]) -> str:
    """One line for a report: the big room's whole state."""
    return (
        f"whole state, {big['members']:,}-member room ({big['entries']:,} entries, "
        f"{big['reply_bytes']:,} bytes in {big['chunks']} chunks): cold {big['cold_ms']:.0f} ms, "
        f"warm p50 {big['warm']['p50_ms']:.0f} ms, p99 {big['warm']['p99_ms']:.0f} ms; "
        f"roomserver state {big['cli_seconds']:.2f} s; storage.cache_mb {big['cache_mb']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=10, help="cold samples")
    parser.add_argument(
        "--big-members", type=int, default=100_000, help="members of the big room (0: skip)"
    )
    parser.add_argument("--no-cache", action="store_true", help="build the big room afresh")
    parser.add_argument("--floor-responder", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_responder:
        asyncio.run(_floor_responder(args.floor_responder))
        return
    result = asyncio.run(
        _main(args.entries, args.samples, args.restarts, args.big_members, not args.no_cache)
    )
    print(f"state query, {result['entries']} entries, reply {result['reply_bytes']} bytes")
    names = (
        *("cold", "warm", "warm_to_value", "warm_freeing", "warm_entries", "warm_read_all"),
        *("undecoded", "filtered"),
    )
    for name in (*names, "unchanged", "floor", "floor_triples"):
        figures = result[name]
        print(
            f"  {name:<13} p50 {figures['p50_ms']:8.3f} ms   p99 {figures['p99_ms']:8.3f} ms"
            f"   ({figures['samples']} samples)"
        )
    print(f"  service   avg {result['service_warm_avg_ms']:8.3f} ms   (warm, inside the worker)")
    cpu = result["warm_cpu_ms"]
    print(
        f"  CPU per warm query: client {cpu['client']:.2f} ms, worker {cpu['worker']:.2f} ms;"
        f" client per floor request {result['floor_client_cpu_ms']:.2f} ms"
    )
    for name in ("warm_to_value", "warm_entries", "warm_read_all"):
        used = result[f"{name}_client_cpu"]
        print(f"  client CPU, {name}: p50 {used['p50_ms']:.2f} ms, p99 {used['p99_ms']:.2f} ms")
    own = result["warm_client_cpu"]
    print(f"  client CPU in a warm query: p50 {own['p50_ms']:.2f} ms, p99 {own['p99_ms']:.2f} ms")
    for generation, figures in result["warm_client_gc"].items():
        print(
            f"  client {generation} collections in the warm queries: {figures['collections']}, "
            f"total {figures['total_ms']:.1f} ms, longest {figures['max_ms']:.2f} ms"
        )
    if "big_state" in result:
        print(big_state_line(result["big_state"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
