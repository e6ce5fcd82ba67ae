"""The writer's pipeline in a process of its own.

The event loop (fetching, acking, publishing, scheduling) and the pipeline (Python work
on every event) each take most of a core at full load; in one process they share one
GIL and so one core. Here the pipeline and the writer's SQLite connection live in a
child process that answers `PipelineServer` requests over a socket pair: one pickled
`Request` in, one pickled reply out, framed by a 4-byte length. The child also sends,
on its own, the syncer's reports (worker.runner.syncer: a batch's commit is durable),
between replies or during a request, and a batch's ask for inputs to go on with
(worker.runner.pipeline_server.Follow), which the worker answers at once with a message
of its own; the worker reads everything the child sends in one task, which hands
replies to their requests, reports to `durable` and answers asks. The
interrupt and the inputs done so far are shared memory (`SharedFlags` on a memfd both
map).

The child is a fresh interpreter (`python -c`, not a fork of a process that may run
threads), started as soon as the storage lock is held, so that its imports overlap the
worker's connection to NATS. It is not a `multiprocessing.Process`: that would add a
resource-tracker process (13 MB) and join the child at the interpreter's exit. It is
handed, as inherited descriptors:
- its end of the socket pair: when the worker dies, however it dies, the child reads
  end-of-file, finishes the request in hand and exits;
- a copy of the storage lock's descriptor: the kernel keeps a `flock` while any copy is
  open, so the directory stays locked until the child has exited too, and a restarted
  worker never writes beside an orphan that is still committing;
- the shared flags' memfd.
It ignores SIGINT and SIGTERM (the worker stops it once it has finished its batch) and
logs with the worker's configuration to the same standard error. If it dies, or a
request fails with anything but a transient database fault, the worker stops with that
error; transient faults are retried as before.

Fault-injection tests patch worker functions in the worker's main module before the
CLI starts (tests/faults/inject.py); the child runs that module again as a child of
`multiprocessing` would (`multiprocessing.spawn.prepare`: as `__mp_main__`), so
patches applied at its top level apply in the child too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import mmap
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing import spawn
from pathlib import Path
from typing import IO, Any, Final

import structlog

from worker.child_process import wait_or_kill
from worker.collector import can_promote_unscanned, promote_unscanned
from worker.config import LogConfig
from worker.heap import HeapTrimmer, fix_mmap_threshold
from worker.logs import configure_logging
from worker.metrics import WorkerMetrics
from worker.runner.pipeline_handle import PipelineHandle
from worker.runner.pipeline_server import (
    FollowUp,
    PipelineServer,
    Reply,
    Request,
    SharedFlags,
)
from worker.runner.syncer import Notice

log = structlog.get_logger(__name__)

#: The collector's first-generation threshold. The pipeline keeps many long-lived
#: objects (cached events and states), and with the default of 700 the full collections
#: they provoke cost about a third of the throughput (measured with bench/fork_bench.py).
GC_GEN0_THRESHOLD: Final = 50_000
#: CPU seconds of requests between two young collections run between requests
#: (`CollectionPacer`): the pause each costs grows with the objects the requests left
#: in the caches meanwhile (~1.5 % of the CPU in all with a busy 10,000-member room).
YOUNG_EVERY_CPU: Final = 0.1
#: Seconds between two full collections run between requests (`CollectionPacer`).
FULL_EVERY: Final = 300.0
#: Seconds the syncer's thread waits at most for the interpreter once its sync is done
#: (Python's default, 5 ms, would delay each batch's acknowledgements by up to that
#: while the pipeline runs Python; with no other thread wanting it, a shorter interval
#: costs nothing).
SWITCH_INTERVAL: Final = 0.0005
#: A message's length, before it.
_HEADER: Final = struct.Struct("!I")
#: Seconds the child gets to exit once told to (it finishes the request in hand first).
_EXIT_TIMEOUT: Final = 30.0
#: Bytes a message may take in the socket before its sender waits for the reader (the
#: kernel's default, ~200 kB, is less than a batch's reply: 256 outputs of ~1 kB; the
#: pipeline's process then waits in `sendall` until the event loop comes to read it).
#: Capped by net.core.wmem_max (4 MiB by default).
_SOCKET_BUFFER: Final = 4 << 20
#: Bytes read from the socket at a time.
_READ_LIMIT: Final = 1 << 20
#: The shared flags' size (two C longs, rounded up to a page by the kernel).
_FLAGS_BYTES: Final = 2 * ctypes.sizeof(ctypes.c_long)
#: The child's name for `multiprocessing` (its logs and `current_process()`).
_NAME: Final = "roomserver-pipeline"
_CHILD_MAIN: Final = "from worker.runner.pipeline_process import child_main; child_main()"
#: What a message from the child is, its first item: a request's answer or error, a
#: report of the syncer, or a batch asking for inputs to go on with (answered with a
#: message of its own, `FollowUp` or None).
_ANSWER: Final = 0
_ERROR: Final = 1
_SYNCED: Final = 2
_FOLLOW: Final = 3


class PipelineProcessDied(RuntimeError):
    """The pipeline's process is gone: the worker cannot go on without it."""


class PipelineProcess(PipelineHandle):
    """The pipeline in a spawned child process (see the module docstring)."""

    def __init__(self, metrics: WorkerMetrics, log_config: LogConfig, lock_fd: int) -> None:
        flags_fd = os.memfd_create("roomserver-pipeline-flags")
        try:
            os.ftruncate(flags_fd, _FLAGS_BYTES)
            # Never closed: the flags below are views of it.
            self._flags_map = mmap.mmap(flags_fd, _FLAGS_BYTES)
            super().__init__(metrics, SharedFlags(_cells(self._flags_map)))
            ours, theirs = socket.socketpair()
            for end in (ours, theirs):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            fds = (theirs.fileno(), lock_fd, flags_fd)
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", _CHILD_MAIN, *map(str, fds)],
                    pass_fds=fds,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                # Only the child keeps its end: its exit is then our end-of-file.
                theirs.close()
        finally:
            os.close(flags_fd)
        metrics.pipeline_pid = self._process.pid
        self._socket = ours
        # What `multiprocessing` hands a spawned child (the main module to run again,
        # sys.path, the working directory), and how to log. The socket is still
        # blocking here, and the message far smaller than its buffer.
        preparation = spawn.get_preparation_data(_NAME)
        # Not needed (no multiprocessing connections), and refused by pickle.
        del preparation["authkey"]
        ours.sendall(_framed((preparation, log_config)))
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        #: The task reading what the child sends (see `_read`), once connected.
        self._reading: asyncio.Future[None] | None = None
        #: Requests sent and not answered yet, oldest first, with their answers to come.
        self._waiting: deque[tuple[Request, asyncio.Future[Reply]]] = deque()
        #: Set once the worker closes the socket: the end of the child is no news then.
        self._stopping = False
        self._dead: PipelineProcessDied | None = None

    @property
    def pid(self) -> int:
        return self._process.pid

    async def open(
        self, path: Path, subject_prefix: str, held_max_wait: float, cache_mb: int
    ) -> None:
        await super().open(path, subject_prefix, held_max_wait, cache_mb)
        log.info("pipeline process ready", pid=self.pid, storage=str(self.path))

    async def stop(self) -> None:
        """Close the database, then end the child: it exits on end-of-file."""
        try:
            if self._dead is None:
                await self.close()
        finally:
            self._stopping = True
            if self._streams is not None:
                self._streams[1].close()
            self._socket.close()
            await self._join()
            if self._reading is not None:
                self._reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reading
            self.metrics.pipeline_pid = None

    async def _exchange(self, request: Request) -> Reply:
        if self._dead is not None:
            raise self._dead
        writer = await self._connected()
        answer = asyncio.get_running_loop().create_future()
        self._waiting.append((request, answer))
        # Handed to the socket at once, before whatever else the loop has ready runs
        # (the acks of the batch before, started as it was answered): the pipeline's
        # process would wait for those first, idle.
        writer.write(_framed(request))
        with contextlib.suppress(ConnectionError):
            # If the child is gone, `_read` fails the answer with the reason.
            await writer.drain()
        # Shielded: a request sent is answered, and the answer read, even if its caller
        # gives up (the reading task takes answers in the order of `_waiting`).
        reply: Reply = await asyncio.shield(answer)
        return reply

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Everything the child sends, until it exits: answers to the requests waiting,
        in order, and the syncer's reports."""
        try:
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                kind, value = pickle.loads(await reader.readexactly(size))
                if kind == _SYNCED:
                    self._on_durable(value)
                    continue
                if kind == _FOLLOW:
                    # The batch waits for this: written at once, before anything else.
                    assert self._streams is not None
                    self._streams[1].write(_framed(self._answer(value)))
                    continue
                _, answer = self._waiting.popleft()
                if answer.done():
                    continue
                if kind == _ANSWER:
                    answer.set_result(value)
                else:
                    answer.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if self._stopping:
                return
            await self._join(timeout=5.0)
            code = self._process.returncode
            during = f"during {self._waiting[0][0].name}" if self._waiting else "between requests"
            self._dead = PipelineProcessDied(
                f"the pipeline process exited (exit status {code}) {during}"
            )
            self._dead.__cause__ = exc
            log.error("the pipeline process died", exit_status=code)
            while self._waiting:
                _, answer = self._waiting.popleft()
                if not answer.done():
                    answer.set_exception(self._dead)
            self._on_durable(self._dead)

    async def _connected(self) -> asyncio.StreamWriter:
        """The socket's writer; the first call also starts reading what the child sends."""
        if self._streams is None:
            self._streams = await asyncio.open_unix_connection(sock=self._socket, limit=_READ_LIMIT)
            self._reading = asyncio.ensure_future(self._read(self._streams[0]))
        return self._streams[1]

    async def _join(self, timeout: float = _EXIT_TIMEOUT) -> None:
        """Wait for the child to exit; kill it if it does not within `timeout`."""
        process = self._process
        if await wait_or_kill(process, timeout):
            log.error("the pipeline process did not exit; killed it", pid=process.pid)


def _cells(buffer: mmap.mmap) -> ctypes.Array[ctypes.c_long]:
    return (ctypes.c_long * 2).from_buffer(buffer)


# -- in the child ---------------------------------------------------------------------


def child_main() -> None:
    """The child's entry (`python -c`): arguments are the descriptors of its socket, of
    the storage lock and of the shared flags."""
    # First of all: a Ctrl-C meant for the worker must not end this process mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock_fd, lock_fd, flags_fd = (int(arg) for arg in sys.argv[1:4])
    sock = socket.socket(fileno=sock_fd)
    incoming = sock.makefile("rb")
    start = _receive(incoming)
    if start is None:
        return
    preparation, log_config = start
    # The worker's main module runs again here (as `__mp_main__`, as in a child of
    # `multiprocessing`): patches a fault test applies at its top level apply here too.
    spawn.prepare(preparation)
    configure_logging(log_config)
    prepare_collector()
    fix_mmap_threshold()
    sys.setswitchinterval(SWITCH_INTERVAL)
    flags_map = mmap.mmap(flags_fd, _FLAGS_BYTES)
    os.close(flags_fd)
    serve(sock, incoming, SharedFlags(_cells(flags_map)))
    # Kept open until here: the storage directory stays locked while this process lives.
    os.close(lock_fd)


def prepare_collector() -> None:
    """Set the collector up for the pipeline (its first-generation threshold)."""
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


class CollectionPacer:
    """Run the collector's young collections between requests, small and often,
    rather than letting one fall inside a transaction, long and rare.

    The pipeline's caches take in new objects all the time (events, their rows and
    dicts, states) and evict as many: each eviction lowers the collector's count as
    much as an allocation raises it, so the count stays far below its threshold while
    the youngest generation grows to 150,000 objects and more, all live cache entries;
    the collection that finally comes visits them whole, 100–150 ms of CPU inside a
    forked room's transaction, while small rooms wait (measured with
    bench/child_gc.py). Here, after every `YOUNG_EVERY_CPU` seconds of CPU, the
    young generation is collected after the reply is sent (a few ms: what it holds
    then is what the last requests cached), and what survives is moved into the
    oldest generation without being traversed again (`worker.collector`), uncounted towards a
    full collection, so no middle or full collection over the caches follows. Cycles
    that become garbage only after surviving a young collection are left for a full
    collection, run between requests every `FULL_EVERY` seconds."""

    def __init__(
        self, young_every_cpu: float = YOUNG_EVERY_CPU, full_every: float = FULL_EVERY
    ) -> None:
        self.young_every_cpu = young_every_cpu
        self.full_every = full_every
        self._young_at = time.process_time()
        self._full_at = time.monotonic()

    def after_request(self) -> None:
        """Collect what is due (called between requests, the reply sent)."""
        cpu = time.process_time()
        if cpu - self._young_at < self.young_every_cpu or not gc.isenabled():
            return
        self._young_at = cpu
        now = time.monotonic()
        if now - self._full_at >= self.full_every:
            self._full_at = now
            gc.collect()
            return
        gc.collect(0)
        if can_promote_unscanned():
            promote_unscanned()


class _Sender:
    """Sends to the worker from the request loop and from the syncer's thread, one
    whole message at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, kind: int, value: Any) -> None:
        message = _framed((kind, value))
        with self._lock:
            self._sock.sendall(message)

    def report(self, notice: Notice) -> None:
        """The syncer's report (in its thread); lost if the worker is gone."""
        with contextlib.suppress(OSError):
            self.send(_SYNCED, _portable(notice) if isinstance(notice, Exception) else notice)


def serve(sock: socket.socket, incoming: IO[bytes], flags: SharedFlags) -> None:
    """Answer requests until end-of-file, then close the database."""
    sender = _Sender(sock)

    def ask(done: int) -> FollowUp | None:
        """Ask the worker for inputs to follow the batch under way; its answer is the
        next message it sends (it sends no request while one is under way)."""
        try:
            sender.send(_FOLLOW, done)
        except OSError:
            return None  # the worker is gone: the batch commits, its answer is lost
        answer: FollowUp | None = _receive(incoming)
        return answer

    server = PipelineServer(flags, sender.report, ask)
    # Between requests, after the answer is sent: the worker is not kept waiting.
    trimmer = HeapTrimmer()
    collections = CollectionPacer()
    try:
        while (request := _receive(incoming)) is not None:
            kind: int
            value: Reply | Exception
            try:
                kind, value = _ANSWER, server.handle(request)
            except Exception as exc:
                kind, value = _ERROR, _portable(exc)
            try:
                sender.send(kind, value)
            except OSError:
                break  # the worker is gone
            collections.after_request()
            trimmer.maybe_trim()
    finally:
        server.close()


def _receive(incoming: IO[bytes]) -> Any:
    """The next message, or None at end-of-file (the worker stopped or died)."""
    header = incoming.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = incoming.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


def _framed(message: Any) -> bytes:
    """`message` pickled, after its length: the one framing of every message between
    the worker and its pipeline process (`_receive` and `_round_trip` read it)."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _portable(exc: Exception) -> Exception:
    """`exc` as the worker will raise it: with the child's traceback as a note, and as
    a RuntimeError naming it if it does not survive pickling (sqlite3 errors do, their
    result codes included, so transient faults are still told apart)."""
    exc.add_note("in the pipeline process:\n" + "".join(traceback.format_exception(exc)))
    try:
        pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        plain = RuntimeError(f"{type(exc).__name__}: {exc}")
        plain.__notes__ = exc.__notes__
        return plain
    return exc
