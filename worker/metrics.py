"""What the worker shows its operators: Prometheus metrics and health endpoints.

One tiny HTTP server on the worker's own event loop serves `/metrics`, `/livez` and
`/readyz` (`/healthz` is the same as `/readyz`). Liveness is answered by the event loop
itself, so any answer proves the loop turns; readiness is the worker's checks (NATS
connected and answering pings, the consumer running, the database open), which a
supervisor uses to route traffic or raise an alarm, never to restart the process.
prometheus_client's own servers run in a thread and know nothing of health,
and a web framework would be a large dependency for two fixed pages; reading the
registry and the worker's state from the loop thread also needs no locking.

Pipeline counters are read at scrape time from `Pipeline.counters` rather than pushed
from the hot path, so counting costs the pipeline nothing beyond its own `+= 1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Final, Protocol

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.pipeline import Counters
from worker.storage.database import Database

log = structlog.get_logger(__name__)

#: Seconds; a batch is one SQLite transaction of up to consumer.batch_size inputs.
_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_READY_PATHS: Final = ("/readyz", "/healthz")
_LIVE_PATH: Final = "/livez"
#: A request line and headers beyond this are refused (the endpoint is for scrapers).
_MAX_REQUEST_BYTES: Final = 8192
_REQUEST_TIMEOUT: Final = 5.0

#: Pipeline counter field → (metric name without `_total`, help).
_PIPELINE_COUNTERS: Final = (
    (
        "processed",
        "roomserver_inputs_processed",
        "Inputs processed to a stored result (accepted, rejected, soft-failed, held or duplicate)",
    ),
    ("rejected", "roomserver_events_rejected", "Events stored as rejected"),
    ("soft_failed", "roomserver_events_soft_failed", "Events stored as soft-failed"),
    ("dead_lettered", "roomserver_inputs_dead_lettered", "Inputs sent to the dead letter stream"),
    ("duplicates", "roomserver_inputs_duplicate", "Inputs recognised as already processed"),
    ("parked", "roomserver_inputs_parked", "Inputs kept whole for a parked room"),
)


class _PipelineCollector(Collector):
    """Reads the pipeline's counters (plain ints, updated in the database thread)."""

    def __init__(
        self,
        counters: Callable[[], Counters | None],
        held: Callable[[], int | None],
        parked: Callable[[], int],
    ) -> None:
        self._counters = counters
        self._held = held
        self._parked = parked

    def collect(self) -> Iterator[Metric]:
        counters = self._counters()
        for field, name, text in _PIPELINE_COUNTERS:
            family = CounterMetricFamily(name, text)
            family.add_metric([], getattr(counters, field) if counters is not None else 0)
            yield family
        by_code = CounterMetricFamily(
            "roomserver_inputs_dead_lettered_by_code",
            "Inputs sent to the dead letter stream, by the dead letter's code",
            labels=["code"],
        )
        # A copy made in one step: the database thread may add a code meanwhile.
        codes = dict(counters.dead_letter_codes) if counters is not None else {}
        for code, count in sorted(codes.items()):
            by_code.add_metric([code], count)
        yield by_code
        held = self._held()
        gauge = GaugeMetricFamily(
            "roomserver_held_events", "Events waiting for their prev events to arrive"
        )
        gauge.add_metric([], held or 0)
        yield gauge
        parked = GaugeMetricFamily(
            "roomserver_parked_rooms",
            "Rooms stopped by an unexpected error; their inputs wait for a retry",
        )
        parked.add_metric([], self._parked())
        yield parked


class _StateCollector(Collector):
    """Gauges computed at scrape time from the worker's health checks."""

    def __init__(self, health: Callable[[], Mapping[str, bool]]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        checks = self._health()
        ready = GaugeMetricFamily(
            "roomserver_ready",
            "1 when NATS is connected and answering, the consumer runs and the DB is open",
        )
        ready.add_metric([], int(all(checks.values())))
        yield ready
        check = GaugeMetricFamily(
            "roomserver_health_check", "Each readiness check", labels=["check"]
        )
        for name, ok in checks.items():
            check.add_metric([name], int(ok))
        yield check


class WorkerMetrics:
    """The worker's registry: its own, so several workers in one process never clash."""

    def __init__(
        self,
        *,
        counters: Callable[[], Counters | None],
        held: Callable[[], int | None],
        parked: Callable[[], int],
        health: Callable[[], Mapping[str, bool]],
    ) -> None:
        self.health = health
        self.parked = parked
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        #: The pipeline's process while there is one (`PipelineProcess` sets and clears
        #: it): the pipeline does most of the CPU work and holds most of the memory, so
        #: its CPU seconds, RSS and descriptors are shown too, as
        #: `roomserver_pipeline_process_*` beside the worker's own `process_*`.
        self.pipeline_pid: int | None = None
        self.registry.register(_PipelineProcessCollector(self._pipeline_pid))
        self.registry.register(_PipelineCollector(counters, held, parked))
        self.registry.register(_StateCollector(health))
        # Each metric in this worker's own registry.
        histogram = partial(Histogram, registry=self.registry)
        gauge = partial(Gauge, registry=self.registry)
        counter = partial(Counter, registry=self.registry)
        self.batch_seconds = histogram(
            "roomserver_batch_seconds",
            "Time to process one fetched batch in its transaction, commit included",
            buckets=_LATENCY_BUCKETS,
        )
        self.batch_messages = histogram(
            "roomserver_batch_messages",
            "Input messages per transaction (a budgeted one may take part of a fetch)",
            buckets=_BATCH_SIZE_BUCKETS,
        )
        self.commit_seconds = histogram(
            "roomserver_commit_seconds",
            "Time of the SQLite COMMIT of a batch (its sync to disk follows, beside the next)",
            buckets=_LATENCY_BUCKETS,
        )
        self.publish_seconds = histogram(
            "roomserver_outbox_publish_seconds",
            "Time to publish one chunk of the outbox and get JetStream's acks",
            buckets=_LATENCY_BUCKETS,
        )
        self.consumer_lag = gauge(
            "roomserver_consumer_lag",
            "Input messages in the stream not yet delivered to the worker",
        )
        self.outbox_depth = gauge(
            "roomserver_outbox_depth",
            "Outputs committed but not yet acknowledged by JetStream",
        )
        self.transient_retries = counter(
            "roomserver_transient_retries",
            "Batches retried after a transient fault (database busy or locked)",
        )
        self.publish_retries = counter(
            "roomserver_outbox_publish_retries",
            "Outbox publishes retried because NATS did not acknowledge them",
        )
        self.consumer_rewinds = counter(
            "roomserver_consumer_rewinds",
            "Times the input consumer was rewound to its ack floor (start-up, reconnection)",
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _pipeline_pid(self) -> int | str:
        # Without a pipeline process, a /proc entry that cannot exist: the collector
        # then finds nothing to show.
        return self.pipeline_pid if self.pipeline_pid is not None else "no-pipeline-process"


class _PipelineProcessCollector(Collector):
    """CPU seconds, RSS and open descriptors of the pipeline's process, read from its
    /proc entry at scrape time (prometheus_client's `ProcessCollector` on its pid,
    without the figures an operator does not watch: virtual size, start time, the
    descriptor limit)."""

    SHOWN: Final = frozenset(
        f"roomserver_pipeline_process_{name}"
        for name in ("cpu_seconds", "resident_memory_bytes", "open_fds")
    )

    def __init__(self, pid: Callable[[], int | str]) -> None:
        self._process = ProcessCollector("roomserver_pipeline", pid=pid, registry=None)

    def collect(self) -> Iterator[Metric]:
        return (family for family in self._process.collect() if family.name in self.SHOWN)


class Observer(Protocol):
    """Where a duration goes: a Histogram, or a list kept for another process."""

    def observe(self, amount: float) -> None: ...


class TimedDatabase(Database):
    """A Database that reports how long each COMMIT takes.

    The COMMIT is the fsync that makes a batch durable, the one cost a faster disk
    changes; timing it here, around the parent's transaction, needs no hook in the
    storage layer and costs two clock reads per batch.
    """

    commit_histogram: Observer | None = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        started = 0.0
        with super().transaction():
            yield
            started = time.perf_counter()
        if self.commit_histogram is not None:
            self.commit_histogram.observe(time.perf_counter() - started)


class MetricsServer:
    """`GET /metrics` (Prometheus text format), `GET /livez` (200 while the event loop
    answers) and `GET /readyz` or `/healthz` (200 ready, 503 not, with the checks; the
    body says `degraded` while rooms are parked)."""

    def __init__(self, metrics: WorkerMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics server is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._requested_port, limit=_MAX_REQUEST_BYTES
        )
        log.info("metrics and health endpoint listening", host=self._host, port=self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body, head = await asyncio.wait_for(
                self._respond(reader), _REQUEST_TIMEOUT
            )
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(header.encode("ascii") + (b"" if head else body))
            await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a client that hangs up or sends garbage gets no answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes, bool]:
        request_line = await reader.readuntil(b"\n")
        while (await reader.readuntil(b"\n")).strip():
            pass  # headers: nothing in them changes the answer
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n", False
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET or HEAD\n", False
        head = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, self._metrics.render(), head
        if path == _LIVE_PATH:
            return "200 OK", "application/json", b'{"alive": true}\n', head
        if path in _READY_PATHS:
            checks = dict(self._metrics.health())
            ready = all(checks.values())
            parked = self._metrics.parked()
            # Parked rooms do not stop the others: still ready (200), but degraded.
            state = "unavailable" if not ready else "degraded" if parked else "ok"
            answer = {"ready": ready, "status": state, "parked_rooms": parked, "checks": checks}
            body = json.dumps(answer).encode() + b"\n"
            status = "200 OK" if ready else "503 Service Unavailable"
            return status, "application/json", body, head
        return "404 Not Found", "text/plain", b"/metrics, /livez, /readyz or /healthz\n", head
