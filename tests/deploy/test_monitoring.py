"""The files in deploy/ against the worker they deploy.

Every metric the Grafana dashboard and the Prometheus alerts use must be one the worker
really exports: the names are checked against a /metrics scrape of a running worker
(real nats-server, real SQLite), and every worker metric must appear on the dashboard.
Where Prometheus' own tools are installed, the configuration and the alert rules are
checked and unit-tested with them, and every dashboard expression is evaluated by a real
Prometheus that has scraped the worker.
"""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.js import JetStreamContext

from tests.harness.e2e import input_for, outputs_reader, publish_inputs, running_worker
from tests.harness.procs import NatsProcess, free_port, http_get
from worker.bus.subjects import Subjects
from worker.cli import EXIT_CONFIG
from worker.config import Config, MetricsConfig
from worker.synthetic import linear_room

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "roomserver.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
#: Added by the parked-rooms work; allowed before the worker exports it.
PENDING = {"roomserver_parked_rooms"}
#: Prometheus' own series, not the worker's.
PROMETHEUS_OWN = {"up"}
METRIC_RE = re.compile(r"\b(?:roomserver|process)_[a-z_]+\b|\bup\b(?=\s*\{)")


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def dashboard_exprs() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    return found


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def names_in(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC_RE.findall(expr)}


def exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """(every series name a query may use, the worker's own family names)."""
    names: set[str] = set()
    families: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            families.add(name)
            names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names, families


def test_yaml_files_parse() -> None:
    for path in [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]:
        assert load_yaml(path) is not None, path
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"nats", "worker", "prometheus", "grafana"}
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    # nats-server 2.14 or later: the worker rewinds its consumer (docs/operations.md).
    image = services["nats"]["image"]
    version = tuple(int(p) for p in re.match(r"nats:(\d+)\.(\d+)", image).groups())  # type: ignore[union-attr]
    assert version >= (2, 14), image
    assert "8222/healthz" in " ".join(services["nats"]["healthcheck"]["test"])
    worker = services["worker"]
    assert worker["environment"]["ROOMSERVER_METRICS_LISTEN_HOST"] == "0.0.0.0"
    assert worker["depends_on"]["nats"]["condition"] == "service_healthy"
    datasource = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/roomserver.yml")
    mounted = {v.split(":")[1] for v in services["grafana"]["volumes"] if ":" in v}
    assert provider["providers"][0]["options"]["path"] in mounted


def test_systemd_unit_does_not_restart_configuration_faults() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read(DEPLOY / "roomserver.service")
    assert unit["Service"]["RestartPreventExitStatus"].split() == [str(EXIT_CONFIG)]
    assert unit["Service"]["Restart"] == "on-failure"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


async def scrape_worker(config: Config, js: JetStreamContext, port: int) -> str:
    """A /metrics page of a worker that has processed good and bad inputs."""
    pdus = list(linear_room("10", members=2, events=5, seed=3))
    reader = outputs_reader(js, config)
    await publish_inputs(js, config, [input_for(p) for p in pdus], room_version="10")
    await js.publish(Subjects(config.streams.subject_prefix).input(pdus[0]["room_id"]), b"\xc1")
    await reader.take(len(pdus))
    deadline = time.monotonic() + 10
    while True:
        status, body = await http_get(port, "/metrics")
        assert status == 200
        if b'roomserver_inputs_dead_lettered_by_code_total{code="bad_msgpack"} 1.0' in body:
            return body.decode()
        assert time.monotonic() < deadline, body.decode()
        await asyncio.sleep(0.01)


async def test_dashboard_and_alerts_use_only_exported_metrics(
    config: Config, js: JetStreamContext, metrics_port: int
) -> None:
    config = dataclasses.replace(config, metrics=MetricsConfig(listen_port=metrics_port))
    async with running_worker(config):
        exposition = await scrape_worker(config, js, metrics_port)
        # The image's and compose's health checks pass against a ready worker.
        for code in healthcheck_codes():
            assert await run_healthcheck(code, metrics_port) == 0
    for code in healthcheck_codes():
        assert await run_healthcheck(code, metrics_port) != 0
    exported, families = exported_names(exposition)
    dashboard = names_in(dashboard_exprs())
    alerts = names_in(alert_exprs())
    assert dashboard and alerts
    allowed = exported | PENDING | PROMETHEUS_OWN
    assert dashboard - allowed == set()
    assert alerts - allowed == set()
    # Every metric of the worker's own is on the dashboard (a counter's family is named
    # with _total, a histogram's by its _bucket series).
    own = {f for f in families if f.startswith("roomserver_") and not f.endswith("_created")}
    shown = {
        n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in dashboard
    }
    assert own - shown == set()


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "roomserver"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]


PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_checks_config_and_unit_tests_alerts() -> None:
    assert PROMTOOL is not None
    prometheus_dir = DEPLOY / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]):
        result = subprocess.run(
            [PROMTOOL, *args], cwd=prometheus_dir, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def grafana_to_promql(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace('"$instance"', '".*"')
    )


@pytest.fixture
def prometheus(tmp_path: Path, metrics_port: int) -> Iterator[int]:
    """A real Prometheus scraping the worker's port every second."""
    assert PROMETHEUS is not None
    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: roomserver\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def wait_until_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    """Poll Prometheus's readiness endpoint until it answers 200: before that, it
    refuses connections or answers queries with 503 "Service Unavailable"."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert process.poll() is None, f"prometheus exited with {process.returncode}"
        assert time.monotonic() < deadline, "prometheus did not become ready within 60 s"
        time.sleep(0.1)


def query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            result: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        result = json.load(exc)
    return result


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
async def test_dashboard_queries_run_on_a_real_prometheus(
    config: Config, js: JetStreamContext, metrics_port: int, prometheus: int
) -> None:
    config = dataclasses.replace(config, metrics=MetricsConfig(listen_port=metrics_port))
    async with running_worker(config):
        await scrape_worker(config, js, metrics_port)
        # Wait (polling, with a deadline) until Prometheus has scraped the worker twice.
        deadline = time.monotonic() + 60
        while True:
            answer = await asyncio.to_thread(
                query, prometheus, "count_over_time(roomserver_ready[1m])"
            )
            samples = answer.get("data", {}).get("result", [])
            if samples and float(samples[0]["value"][1]) >= 2:
                break
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.2)
        empty = []
        for expr in dashboard_exprs() + alert_exprs():
            answer = await asyncio.to_thread(query, prometheus, grafana_to_promql(expr))
            assert answer["status"] == "success", (expr, answer)
            if not answer["data"]["result"] and not names_in([expr]) & PENDING:
                empty.append(expr)
    # Alert expressions are empty while nothing is wrong; dashboard queries have data.
    assert set(empty) <= set(alert_exprs()), empty


def healthcheck_codes() -> list[str]:
    """The Python code of the worker's health check in compose.yaml and the Dockerfile."""
    test = load_yaml(DEPLOY / "compose.yaml")["services"]["worker"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(r"HEALTHCHECK .*?CMD (\[.*\])", dockerfile)
    assert match is not None
    image = json.loads(match.group(1))
    assert image[:2] == ["python", "-c"]
    for code in (test[3], image[2]):
        assert "/readyz" in code
    return [test[3], image[2]]


async def run_healthcheck(code: str, port: int) -> int:
    env = {**os.environ, "ROOMSERVER_METRICS_LISTEN_PORT": str(port)}
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], env=env, capture_output=True, timeout=30
    )
    return result.returncode


@pytest.mark.skipif(shutil.which("wget") is None, reason="wget is not installed")
async def test_nats_healthcheck_command(tmp_path: Path) -> None:
    """compose's NATS health check, run against a real nats-server's monitoring port."""
    test = load_yaml(DEPLOY / "compose.yaml")["services"]["nats"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    monitoring = free_port()
    command = [arg.replace(":8222/", f":{monitoring}/") for arg in test[1:]]
    server = NatsProcess(tmp_path / "nats", extra_args=["--http_port", str(monitoring)])
    await server.start()
    try:
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(subprocess.run, command, capture_output=True)).returncode:
            assert time.monotonic() < deadline, "nats /healthz never answered 200"
            await asyncio.sleep(0.05)
    finally:
        await server.stop()
    assert (await asyncio.to_thread(subprocess.run, command, capture_output=True)).returncode != 0
