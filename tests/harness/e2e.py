"""Running the real worker against the test's nats-server, and talking to it.

Waiting is always for a condition (a message arriving, an event being set) with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from worker.app import Worker
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.subjects import Subjects
from worker.config import Config
from worker.matrix.hashes import compute_event_id
from worker.matrix.room_versions import get_room_version


@contextlib.asynccontextmanager
async def running_worker(config: Config, *, separate_process: bool = True) -> AsyncIterator[Worker]:
    """The worker running in this event loop until the block ends (its pipeline in a
    process of its own, or with `separate_process=False` in this one's database
    thread, for tests that read the pipeline's objects)."""
    worker = Worker(config, separate_process=separate_process)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises the start-up failure
    if ready not in done:
        raise TimeoutError("the worker did not become ready within 30 s")
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def input_for(pdu: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    return {"event": dict(pdu), **fields}


async def publish_inputs(
    js: JetStreamContext,
    config: Config,
    inputs: Iterable[Mapping[str, Any]],
    *,
    room_version: str,
    room_id: str | None = None,
) -> int:
    """Publish input maps to their rooms' input subjects, with event IDs as msg IDs."""
    subjects = Subjects(config.streams.subject_prefix)
    version = get_room_version(room_version)
    outgoing: list[Outgoing] = []
    for item in inputs:
        pdu = item["event"]
        event_id = compute_event_id(pdu, version)
        rid = room_id or pdu.get("room_id") or "!" + event_id[1:]
        outgoing.append(
            Outgoing(subjects.input(rid), msgpack.packb(dict(item), use_bin_type=True), event_id)
        )
    await Publisher(js, config).publish_many(outgoing)
    return len(outgoing)


async def publish_raw(js: JetStreamContext, subject: str, payload: bytes) -> None:
    await js.publish(subject, payload)


class StreamReader:
    """Reads a stream from its start with an ephemeral ordered pull consumer."""

    def __init__(self, js: JetStreamContext, stream: str, subject: str) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self._sub: JetStreamContext.PullSubscription | None = None

    async def take(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Exactly `count` messages (raises TimeoutError if fewer arrive in time)."""
        if self._sub is None:
            self._sub = await self.js.pull_subscribe(
                self.subject,
                stream=self.stream,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
        got: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"got {len(got)} of {count} messages from {self.stream}")
            try:
                msgs = await self._sub.fetch(min(count - len(got), 1000), timeout=min(remaining, 2))
            except Exception:  # nats raises its own TimeoutError on an empty fetch
                continue
            for msg in msgs:
                body = msgpack.unpackb(msg.data, raw=False)
                body["_msg_id"] = (msg.headers or {}).get("Nats-Msg-Id")
                got.append(body)
                await msg.ack()
        return got

    async def nothing_more(self, wait: float = 1.0) -> bool:
        """True if no further message arrives within `wait` seconds (a bounded check
        that something did NOT happen, used after a positive wait has synchronised)."""
        assert self._sub is not None
        try:
            msgs = await self._sub.fetch(1, timeout=wait)
        except Exception:
            return True
        return not msgs


def outputs_reader(js: JetStreamContext, config: Config) -> StreamReader:
    return StreamReader(js, config.streams.output, f"{config.streams.subject_prefix}.output.>")


def deadletter_reader(js: JetStreamContext, config: Config) -> StreamReader:
    return StreamReader(
        js, config.streams.deadletter, f"{config.streams.subject_prefix}.deadletter.>"
    )


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def environment(config: Config) -> dict[str, str]:
    """The ROOMSERVER_* variables that give the CLI the test's configuration."""
    streams = config.streams
    return {
        "ROOMSERVER_STORAGE_PATH": config.storage.path,
        "ROOMSERVER_NATS_SERVERS": ",".join(config.nats.servers),
        "ROOMSERVER_STREAMS_SUBJECT_PREFIX": streams.subject_prefix,
        "ROOMSERVER_STREAMS_INPUT": streams.input,
        "ROOMSERVER_STREAMS_OUTPUT": streams.output,
        "ROOMSERVER_STREAMS_DEADLETTER": streams.deadletter,
        "ROOMSERVER_STREAMS_STORAGE": streams.storage,
        "ROOMSERVER_CONSUMER_DURABLE": config.consumer.durable,
    }


async def cli(config: Config, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("ROOMSERVER_")
    } | environment(config)
    full_env |= env or {}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        *args,
        cwd=cwd,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
