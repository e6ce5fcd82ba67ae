"""What the benchmarks share: inputs prepared for publishing, the environment that
points a worker at a benchmark's own streams (so scenarios in one nats-server never see
each other's messages), publishing, the bare relay, and the worker as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from worker.bus.connection import connect
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Config, load_config
from worker.matrix.hashes import compute_event_id
from worker.matrix.room_versions import get_room_version

#: The worker's fetch batch in every scenario, and the relay's.
BATCH = 256

#: (room ID, msgpack input body, event ID) of one prepared input.
Prepared = tuple[str, bytes, str]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (`fraction` in (0, 1]): the smallest value
    that at least `fraction` of them do not exceed, so always one of the values (the
    p99 of 100 values is the 99th smallest, of 1,000 the 990th); NaN if there are none.
    One rule for every benchmark, so that their figures compare."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def prepare_inputs(pdus: Sequence[dict[str, Any]], version: str) -> list[Prepared]:
    """Each PDU as the input message a homeserver would publish for it."""
    room_version = get_room_version(version)
    out = []
    for pdu in pdus:
        event_id = compute_event_id(pdu, room_version)
        room_id = pdu.get("room_id") or "!" + event_id[1:]
        out.append((room_id, msgpack.packb({"event": pdu}, use_bin_type=True), event_id))
    return out


def worker_env(url: str, storage: Path, prefix: str, **extra: str) -> dict[str, str]:
    """ROOMSERVER_* variables for a worker on `url` with streams named after `prefix`.

    No metrics endpoint: several workers (or restarts) must not fight over its port.
    `extra` adds or overrides variables (keys without the ROOMSERVER_ prefix).
    """
    env = {
        "ROOMSERVER_STORAGE_PATH": str(storage),
        "ROOMSERVER_NATS_SERVERS": url,
        "ROOMSERVER_STREAMS_SUBJECT_PREFIX": prefix.lower(),
        "ROOMSERVER_STREAMS_INPUT": f"{prefix.upper()}_INPUT",
        "ROOMSERVER_STREAMS_OUTPUT": f"{prefix.upper()}_OUTPUT",
        "ROOMSERVER_STREAMS_DEADLETTER": f"{prefix.upper()}_DEADLETTER",
        "ROOMSERVER_CONSUMER_DURABLE": prefix.lower(),
        "ROOMSERVER_LOG_FORMAT": "json",
        "ROOMSERVER_METRICS_LISTEN_PORT": "0",
    }
    env.update({f"ROOMSERVER_{key.upper()}": value for key, value in extra.items()})
    return env


async def _publish_all(publisher: Publisher, items: Sequence[Outgoing]) -> None:
    for start in range(0, len(items), 2000):
        await publisher.publish_many(items[start : start + 2000])


async def publish_inputs(config: Config, items: Sequence[Prepared], nc: NATS | None = None) -> NATS:
    """Connect as the worker will (unless `nc` is given), create its streams and publish
    `items` to their rooms' input subjects; returns the connection (for watching the
    streams, or publishing more)."""
    nc = nc if nc is not None else await connect(config.nats)
    js = nc.jetstream()
    await ensure_streams(js, config)
    subjects = Subjects(config.streams.subject_prefix)
    await _publish_all(
        Publisher(js, config),
        [Outgoing(subjects.input(room), body, eid) for room, body, eid in items],
    )
    return nc


async def _ensure(js: JetStreamContext, name: str, subject: str) -> None:
    await js.add_stream(
        api.StreamConfig(name=name, subjects=[subject], storage=api.StorageType.FILE)
    )


async def bench_relay(url: str, items: Sequence[Prepared], tag: str) -> dict[str, Any]:
    """The yardstick: fetch, republish to the output stream, ack; nothing else."""
    config = load_config(None, {"ROOMSERVER_NATS_SERVERS": url})
    nc = await connect(config.nats)
    js = nc.jetstream()
    await _ensure(js, f"R{tag}_IN", f"r{tag}.input.>")
    await _ensure(js, f"R{tag}_OUT", f"r{tag}.output.>")
    publisher = Publisher(js, config)
    subjects = Subjects(f"r{tag}")
    await _publish_all(
        publisher, [Outgoing(subjects.input(room), body, eid) for room, body, eid in items]
    )
    sub = await js.pull_subscribe(f"r{tag}.input.>", durable=f"r{tag}", stream=f"R{tag}_IN")
    moved = 0
    start = time.perf_counter()
    while moved < len(items):
        try:
            msgs = await sub.fetch(BATCH, timeout=1)
        except Exception:
            continue
        # nats-py's own pipelined publish (not the worker's Publisher): the yardstick is
        # plain nats-py.
        futures = [
            await js.publish_async(f"r{tag}.output." + m.subject.rsplit(".", 1)[1], m.data)
            for m in msgs
        ]
        await asyncio.gather(*futures)
        for m in msgs:
            await m.ack()
        moved += len(msgs)
    elapsed = time.perf_counter() - start
    await nc.close()
    return {"events": moved, "seconds": elapsed, "events_per_s": moved / elapsed}


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (the worker, its pipeline process and the
    multiprocessing resource tracker), from /proc/PID/task/*/children."""
    pids = [pid]
    for current in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    pids.extend(int(child) for child in fh.read().split())
    return pids


def status_kib(pid: int, *fields: str) -> list[int]:
    """Fields of /proc/PID/status in KiB (0 for a process gone or a field missing)."""
    values = dict.fromkeys(fields, 0)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name = line.split(":", 1)[0]
            if name in values:
                values[name] = int(line.split()[1])
    return [values[name] for name in fields]


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process and its descendants, in KiB, from
    /proc/PID/status (the peak is the sum of each one's peak: an upper bound)."""
    current = peak = 0
    for member in process_tree(pid):
        rss, hwm = status_kib(member, "VmRSS", "VmHWM")
        current += rss
        peak += hwm
    return current, peak


class WorkerProcess:
    """`roomserver run` as its own process (so its RSS is its own), with the moment it
    said it was ready (its consumer exists: Python's start-up is not counted against
    it) and the tail of its log."""

    def __init__(self, env: dict[str, str]) -> None:
        self.spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run"],
            env={**os.environ, **env},
            stderr=subprocess.PIPE,
        )
        self.ready_at: float | None = None
        self._log: list[str] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            if self.ready_at is None and "worker ready" in line:
                self.ready_at = time.perf_counter()
            self._log.append(line)
            del self._log[:-50]

    @property
    def started(self) -> float:
        """When the clock starts: readiness, or the spawn if it never said so."""
        return self.ready_at if self.ready_at is not None else self.spawned

    def rss_kib(self) -> tuple[int, int]:
        return rss_kib(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the worker exited early ({self.proc.returncode}): {self.log_tail()[-1000:]}"
            )

    def log_tail(self) -> str:
        return "".join(self._log)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
