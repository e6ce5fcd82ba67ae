"""Real processes for the fault tests: the worker as `python -m worker.cli run`, the
streams it reads and writes, and a dump of its database to compare runs by.

Every wait here is for a condition (a log line, a stream count, a process exit) with a
deadline; polling a stream's count with short sleeps is such a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError
from prometheus_client.parser import text_string_to_metric_families

from worker.bus.server import accepts_connections, find_nats_server_binary
from worker.storage.database import DB_FILENAME, Database
from worker.storage.schema import STATUS_NAMES
from worker.storage.state import StateStore

REPO = Path(__file__).resolve().parents[2]
POLL = 0.01


def worker_env(nats_url: str, storage: Path, **overrides: str) -> dict[str, str]:
    """Environment for a worker subprocess: everything from ROOMSERVER_* variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ROOMSERVER_") and key != "PYTHONPATH"
    }
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "ROOMSERVER_STORAGE_PATH": str(storage),
            "ROOMSERVER_NATS_SERVERS": nats_url,
            "ROOMSERVER_STREAMS_STORAGE": "file",
            "ROOMSERVER_CONSUMER_BATCH_SIZE": "25",
            "ROOMSERVER_CONSUMER_FETCH_TIMEOUT": "0.25",
            "ROOMSERVER_LOG_FORMAT": "json",
            "ROOMSERVER_LOG_LEVEL": "info",
            "ROOMSERVER_METRICS_LISTEN_PORT": "0",
        }
    )
    env.update({f"ROOMSERVER_{key.upper()}": value for key, value in overrides.items()})
    return env


class WorkerProcess:
    """One `roomserver run` child process and the JSON log lines it wrote."""

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: Path,
        module: str = "worker.cli",
        args: Sequence[str] = ("run",),
    ) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        # The working directory has no config/roomserver.toml: the environment is all.
        # `module` may be a test wrapper around the CLI (tests/faults/inject.py); `args`
        # may name one partition (`run --partition K`).
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:
            for raw in self.process.stderr:
                try:
                    line = json.loads(raw)
                except ValueError:
                    line = {"event": raw.decode("utf-8", "replace").rstrip(), "raw": True}
                self.lines.append(line if isinstance(line, dict) else {"event": str(line)})

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def logged(self, event: str) -> int:
        return sum(1 for line in list(self.lines) if line.get("event") == event)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(json.dumps(line) for line in self.lines[-n:])

    async def until(
        self, condition: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 30.0
    ) -> None:
        """Wait for ``condition``; fail with the log if the worker exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if not self.running():
                raise AssertionError(
                    f"worker exited ({self.process.returncode}) waiting for {what}:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n" + self.log_tail())
            await asyncio.sleep(POLL)

    async def until_logged(self, event: str, timeout: float = 30.0) -> None:
        await self.until(lambda: self.logged(event) > 0, f"log line {event!r}", timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to finish, flush or close anything."""
        self.process.kill()
        self.process.wait()
        self._reader.join(5)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        self.process.send_signal(sig)
        code = await asyncio.to_thread(self.process.wait, timeout)
        await asyncio.to_thread(self._reader.join, 5)
        return code

    def stderr_text(self) -> str:
        """The lines the worker wrote that are not JSON log lines (the CLI's own)."""
        return "\n".join(str(line["event"]) for line in list(self.lines) if line.get("raw"))

    async def stop_when_exited(self, timeout: float = 30.0) -> int:
        """Wait for the worker to exit by itself; its exit status."""
        code = await asyncio.to_thread(self.process.wait, timeout)
        await asyncio.to_thread(self._reader.join, 5)
        return code

    def ensure_dead(self) -> None:
        if self.running():
            self.kill()


class NatsProcess:
    """A nats-server child with JetStream on a fixed port and store directory, so that
    it can be killed, paused and started again as the same server."""

    def __init__(
        self, store_dir: Path, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log (for a failing test's message)."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def start(self, timeout: float = 20.0) -> None:
        assert self.process is None or self.process.poll() is not None
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # The server's own log, kept beside its store: when a cluster test fails, it
        # says why (a route that never connected, an election that did not end).
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [
                    find_nats_server_binary(),
                    *("--addr", "127.0.0.1", "--port", str(self.port)),
                    *("--jetstream", "--store_dir", str(self.store_dir)),
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        deadline = time.monotonic() + timeout
        while not await self._accepts_connections():
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError("nats-server did not start")
            await asyncio.sleep(POLL)

    async def _accepts_connections(self) -> bool:
        return await accepts_connections("127.0.0.1", self.port)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            await asyncio.to_thread(process.wait, 20)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def nats_cluster(base: Path, size: int = 3) -> list[NatsProcess]:
    """``size`` nats-servers routed into one JetStream cluster (not started)."""
    cluster_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports)
    return [
        NatsProcess(
            base / f"n{i}",
            extra_args=[
                *("--server_name", f"n{i}", "--cluster_name", "faults"),
                *("--cluster", f"nats://127.0.0.1:{cluster_ports[i]}", "--routes", routes),
            ],
        )
        for i in range(size)
    ]


def free_port() -> int:
    """A loopback port nothing listens on now, for a server the test starts next.

    The port is free only until someone else binds it. Under pytest-xdist (``make test``
    runs two processes) the two processes would otherwise race for the same ports: each
    takes only the ports of its own class, ``(port // 2) % workers == its index`` (the
    kernel hands ``bind`` mostly odd ports, hence the halving), so a port one process
    picked is never the next pick of the other.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if (port // 2) % workers == index % workers:
            return port


def cli(env: Mapping[str, str], cwd: Path, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `roomserver ARGS` as the operator would; (exit status, stdout + stderr)."""
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


def table_rows(storage: Path, table: str) -> int:
    """Rows of `table` in a running worker's database, read beside it (WAL allows a
    reader): what is committed, whether or not synced to disk yet."""
    path = storage / DB_FILENAME
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet
    finally:
        conn.close()


def outbox_rows(storage: Path) -> int:
    """Rows in a running worker's outbox."""
    return table_rows(storage, "outbox")


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on the worker's metrics endpoint; (0, b"") if unreachable."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, b""
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def metric_value(exposition: bytes, sample: str) -> float:
    """The value of one sample (by name, without labels) in a /metrics page."""
    for family in text_string_to_metric_families(exposition.decode()):
        for found in family.samples:
            if found.name == sample and not found.labels:
                return float(found.value)
    raise AssertionError(f"{sample} is not in the metrics")


# -- streams ------------------------------------------------------------------------------


async def stream_count(js: JetStreamContext, stream: str) -> int:
    try:
        info = await js.stream_info(stream)
    except Exception:  # not created yet, or the server is restarting
        return 0
    return int(info.state.messages)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    subject: str
    msg_id: str | None
    data: bytes


async def read_stream(js: JetStreamContext, stream: str, subject: str) -> list[StoredMessage]:
    """Every message in the stream, in stream order, as stored (duplicates included)."""
    info = await js.stream_info(stream)
    total = info.state.messages
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
        ),
    )
    got: list[StoredMessage] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < total:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(got)} of {total} messages of {stream}")
            try:
                batch = await sub.fetch(min(500, total - len(got)), timeout=2)
            except TimeoutError:
                continue
            except ServiceUnavailableError:
                # In a cluster whose server just restarted, the new consumer may have
                # no leader yet: JetStream answers 503 at once until it has one.
                await asyncio.sleep(POLL)
                continue
            for msg in batch:
                assert msg.metadata is not None
                got.append(
                    StoredMessage(
                        msg.metadata.sequence.stream,
                        msg.subject,
                        (msg.headers or {}).get("Nats-Msg-Id"),
                        msg.data,
                    )
                )
    finally:
        await sub.unsubscribe()
    return got


async def consumer_settled(js: JetStreamContext, stream: str, durable: str) -> bool:
    """Every input delivered and acknowledged (or terminated)."""
    try:
        info = await js.consumer_info(stream, durable)
        last = (await js.stream_info(stream)).state.last_seq
    except Exception:
        return False
    return (
        info.num_pending == 0
        and info.num_ack_pending == 0
        and info.ack_floor is not None
        and info.ack_floor.stream_seq == last
    )


# -- the database -------------------------------------------------------------------------

StateIds = dict[tuple[str, str], str]


@dataclass(slots=True)
class DatabaseDump:
    """A database described by Matrix IDs only, so runs with different NIDs compare."""

    events: dict[str, tuple[Any, ...]]
    rooms: dict[str, tuple[Any, ...]]
    redactions: set[tuple[str, str, int]]
    outbox: int
    held: int


def dump_database(storage: Path) -> DatabaseDump:
    assert (storage / DB_FILENAME).exists()
    db = Database(storage)
    try:
        states = StateStore(db)
        names: dict[int, str] = {}

        def as_ids(snapshot_nid: int) -> StateIds:
            nid_state = states.load(snapshot_nid)
            missing = [nid for nid in nid_state.values() if nid not in names]
            names.update(db.event_ids_of(missing))
            return {
                (db.type_name(t), db.state_key_name(k)): names[e] for (t, k), e in nid_state.items()
            }

        rooms_by_nid: dict[int, str] = {}
        rooms: dict[str, tuple[Any, ...]] = {}
        for (room_id,) in db.conn.execute("SELECT room_id FROM rooms"):
            room = db.get_room(room_id)
            assert room is not None
            rooms_by_nid[room.nid] = room_id
            extremities = db.event_ids_of(room.latest_event_nids)
            last_sent = db.event_ids_of([room.last_sent_event_nid])
            rooms[room_id] = (
                room.room_version,
                as_ids(room.snapshot_nid),
                sorted(extremities.values()),
                last_sent.get(room.last_sent_event_nid),
                room.depth,
            )
        events: dict[str, tuple[Any, ...]] = {}
        for (
            nid,
            event_id,
            room_nid,
            status,
            reason,
            before,
            after,
            redacted_by,
            js,
        ) in db.conn.execute(
            "SELECT e.nid, e.event_id, e.room_nid, e.status, e.reason, "
            "e.before_snapshot_nid, e.after_snapshot_nid, e.redacted_by, j.json "
            "FROM events e JOIN event_json j ON j.event_nid = e.nid"
        ):
            names[nid] = event_id
            events[event_id] = (
                rooms_by_nid[room_nid],
                STATUS_NAMES[status],
                reason,
                redacted_by,
                bytes(js),
                as_ids(before),
                as_ids(after),
            )
        redactions = {
            (target, names.get(nid) or db.event_ids_of([nid])[nid], may)
            for target, nid, may in db.conn.execute(
                "SELECT target_event_id, redaction_event_nid, may_redact_any FROM redactions"
            )
        }
        return DatabaseDump(events, rooms, redactions, db.outbox.depth(), db.held.count())
    finally:
        db.close()
