"""The /metrics and /healthz endpoint of a running worker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable

import pytest
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from tests.harness.procs import free_port, http_get, metric_value
from worker.bus.subjects import Subjects
from worker.config import Config, ConfigError, MetricsConfig, load_config
from worker.synthetic import linear_room


async def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def scrape_until(port: int, condition: Callable[[bytes], bool]) -> bytes:
    """The first /metrics page that satisfies ``condition`` (polled, with a deadline)."""
    deadline = time.monotonic() + 10
    while True:
        status, text = await http_get(port, "/metrics")
        assert status == 200
        if condition(text):
            return text
        assert time.monotonic() < deadline, text.decode()
        await asyncio.sleep(0.01)


def labelled_value(exposition: bytes, sample: str, **labels: str) -> float:
    for family in text_string_to_metric_families(exposition.decode()):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return float(found.value)
    raise AssertionError(f"{sample}{labels} is not in the metrics")


def _vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib * 1024


async def test_metrics_and_health(config: Config, js: JetStreamContext) -> None:
    port = free_port()
    config = dataclasses.replace(config, metrics=MetricsConfig(listen_port=port))
    pdus = list(linear_room("10", members=3, events=20, seed=2))
    reader = outputs_reader(js, config)
    async with running_worker(config) as worker:
        status, body = await http_get(port, "/healthz")
        assert status == 200
        assert json.loads(body) == {
            "ready": True,
            "status": "ok",
            "parked_rooms": 0,
            "checks": {
                "nats_connected": True,
                "nats_answering": True,
                "consumer_running": True,
                "database_open": True,
            },
        }
        assert await http_get(port, "/readyz") == (status, body)
        assert await http_get(port, "/livez") == (200, b'{"alive": true}\n')
        await publish_inputs(js, config, [input_for(p) for p in pdus], room_version="10")
        room_id = pdus[0]["room_id"]
        await js.publish(Subjects(config.streams.subject_prefix).input(room_id), b"\xc1")
        await reader.take(len(pdus))
        # Counters move when a batch commits, the outbox gauge once it is published.
        text = await scrape_until(
            port,
            lambda text: (
                metric_value(text, "roomserver_inputs_dead_lettered_total") == 1
                and metric_value(text, "roomserver_outbox_depth") == 0
            ),
        )
        assert metric_value(text, "roomserver_inputs_processed_total") == len(pdus)
        assert metric_value(text, "roomserver_inputs_dead_lettered_total") == 1
        assert (
            labelled_value(
                text, "roomserver_inputs_dead_lettered_by_code_total", code="bad_msgpack"
            )
            == 1
        )
        assert metric_value(text, "roomserver_events_rejected_total") == 0
        assert metric_value(text, "roomserver_events_soft_failed_total") == 0
        assert metric_value(text, "roomserver_inputs_duplicate_total") == 0
        assert metric_value(text, "roomserver_held_events") == 0
        assert metric_value(text, "roomserver_parked_rooms") == 0
        assert metric_value(text, "roomserver_inputs_parked_total") == 0
        assert metric_value(text, "roomserver_batch_seconds_count") >= 1
        assert metric_value(text, "roomserver_batch_messages_sum") == len(pdus) + 1
        assert metric_value(text, "roomserver_commit_seconds_count") >= 1
        assert metric_value(text, "roomserver_outbox_publish_seconds_count") >= 1
        assert metric_value(text, "roomserver_outbox_depth") == 0
        assert metric_value(text, "roomserver_consumer_lag") == 0
        assert metric_value(text, "roomserver_consumer_rewinds_total") == 1
        assert metric_value(text, "roomserver_ready") == 1
        assert metric_value(text, "process_resident_memory_bytes") > 0
        # The pipeline's process (a child of this test process) has its own: what its
        # /proc entry says (a Python process with the pipeline loaded: tens of MiB).
        pid = worker.metrics.pipeline_pid
        assert pid is not None and pid != os.getpid()
        prefix = "roomserver_pipeline_process_"
        rss = metric_value(text, prefix + "resident_memory_bytes")
        assert rss > 20 * 2**20
        assert abs(rss - _vm_rss(pid)) < 8 * 2**20
        assert metric_value(text, prefix + "cpu_seconds_total") > 0
        assert metric_value(text, prefix + "open_fds") > 0

        assert (await http_get(port, "/nothing"))[0] == 404
        assert (await http_get(port, "/metrics?name[]=x"))[0] == 200
        assert await raw_request(port, b"POST /metrics HTTP/1.1\r\n\r\n") == (405, b"GET or HEAD\n")
        status_line, body = await raw_request(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert (status_line, body) == (200, b"")
        assert (await raw_request(port, b"nonsense\r\n\r\n"))[0] == 400
    # Stopped: the port is closed with the worker, the pipeline's process is gone.
    assert await http_get(port, "/healthz") == (0, b"")
    assert worker.metrics.pipeline_pid is None
    assert prefix + "resident_memory_bytes" not in worker.metrics.render().decode()


async def test_a_taken_port_does_not_stop_the_worker(config: Config, js: JetStreamContext) -> None:
    port = free_port()
    first = dataclasses.replace(config, metrics=MetricsConfig(listen_port=port))
    async with running_worker(first):
        second = dataclasses.replace(
            first,
            consumer=dataclasses.replace(first.consumer, durable=first.consumer.durable + "b"),
            storage=dataclasses.replace(first.storage, path=first.storage.path + "-b"),
        )
        async with running_worker(second) as worker:
            assert worker.metrics_server is None
            assert worker.health() == {
                "nats_connected": True,
                "nats_answering": True,
                "consumer_running": True,
                "database_open": True,
            }


def test_metrics_configuration() -> None:
    assert load_config(None, {}).metrics == MetricsConfig("127.0.0.1", 9464)
    env = {"ROOMSERVER_METRICS_LISTEN_HOST": "0.0.0.0", "ROOMSERVER_METRICS_LISTEN_PORT": "0"}
    config = load_config(None, env)
    assert config.metrics == MetricsConfig("0.0.0.0", 0)
    assert not config.metrics.enabled
    with pytest.raises(ConfigError, match=r"metrics\.listen_port"):
        load_config(None, {"ROOMSERVER_METRICS_LISTEN_PORT": "70000"})
    with pytest.raises(ConfigError, match=r"metrics\.listen_host"):
        load_config(None, {"ROOMSERVER_METRICS_LISTEN_HOST": ""})
