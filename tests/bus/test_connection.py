"""Connecting: failover across servers, authentication, reconnection with backoff."""

from __future__ import annotations

import asyncio
import random
import shutil
import ssl
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import nats.errors
import pytest
from nats.aio.client import Server

from tests.harness.procs import free_port
from worker.bus.connection import (
    RECONNECT_MAX_DELAY,
    _choose_server,
    connect,
    reconnect_delay,
    tls_context,
)
from worker.bus.server import EmbeddedNatsServer
from worker.config import ConfigError, NatsConfig


def test_reconnect_delay_backs_off_with_jitter() -> None:
    rng = random.Random(7)
    assert reconnect_delay(0, rng) == 0.0
    previous_ceiling = 0.0
    for attempts in range(1, 12):
        ceiling = min(RECONNECT_MAX_DELAY, 0.25 * 2 ** (attempts - 1))
        for _ in range(20):
            delay = reconnect_delay(attempts, rng)
            assert ceiling / 2 <= delay <= ceiling
        assert ceiling >= previous_ceiling
        previous_ceiling = ceiling
    assert reconnect_delay(10_000, rng) <= RECONNECT_MAX_DELAY


def test_reconnect_prefers_the_server_tried_least() -> None:
    servers = [
        Server(urlparse("nats://a:1"), reconnects=3),
        Server(urlparse("nats://b:1"), reconnects=1),
        Server(urlparse("nats://c:1"), reconnects=2),
    ]
    chosen, delay = _choose_server(servers, {})
    assert chosen is servers[1]
    assert 0 < delay <= 0.25


async def test_connects_past_a_dead_server(nats_server: EmbeddedNatsServer) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    nc = await connect(NatsConfig(servers=(dead, nats_server.url)))
    try:
        assert nc.is_connected
        assert nc.connected_url is not None
        assert nc.connected_url.port == nats_server.port
    finally:
        await nc.close()


async def test_servers_argument_overrides_config(nats_server: EmbeddedNatsServer) -> None:
    nc = await connect(NatsConfig(), [nats_server.url])
    try:
        assert nc.is_connected
    finally:
        await nc.close()
    with pytest.raises(ValueError):
        await connect(NatsConfig())


async def test_token_and_password_reach_the_server(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path / "t", port=0, token="s3cret") as server:
        nc = await connect(NatsConfig(token="s3cret"), [server.url])
        assert nc.is_connected
        await nc.close()
    async with EmbeddedNatsServer(tmp_path / "u", port=0, user="w", password="pw") as server:
        nc = await connect(NatsConfig(user="w", password="pw"), [server.url])
        assert nc.is_connected
        await nc.close()


async def test_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path, port=0)
    await server.start()
    port = server.port
    nc = await connect(NatsConfig(), [server.url])
    try:
        js = nc.jetstream()
        await js.add_stream(name="R", subjects=["r.>"])
        await server.stop()
        restarted = EmbeddedNatsServer(tmp_path, port=port)
        await restarted.start()
        try:
            # The request waits in the client's buffer until the reconnection completes;
            # JetStream may still be recovering its streams then and answer "no
            # responders", so the publish is retried until a deadline.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                try:
                    ack = await js.publish("r.x", b"after restart", timeout=2)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    if loop.time() > deadline:
                        raise
            assert ack.stream == "R"
            assert nc.stats["reconnects"] >= 1
        finally:
            # Closed before the server goes: nats-py's close() can fail with a stray
            # CancelledError while it is reconnecting to a server that has just left.
            await nc.close()
            await restarted.stop()
    finally:
        await nc.close()


def test_no_tls_context_without_tls_settings() -> None:
    assert tls_context(NatsConfig(servers=("nats://a:1",))) is None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")
def test_tls_context_loads_ca_and_client_certificate(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=roomserver-test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    config = NatsConfig(
        servers=("tls://a:1",), tls_ca=str(cert), tls_cert=str(cert), tls_key=str(key)
    )
    context = tls_context(config)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert any(c.get("subject") for c in context.get_ca_certs())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")
def test_a_key_of_another_certificate_is_a_configuration_fault(tmp_path: Path) -> None:
    for name in ("one", "two"):
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", f"/CN={name}", "-keyout", str(tmp_path / f"{name}.key")),
                *("-out", str(tmp_path / f"{name}.pem")),
            ],
            check=True,
            capture_output=True,
        )
    cert, key = tmp_path / "one.pem", tmp_path / "two.key"
    config = NatsConfig(servers=("tls://a:1",), tls_cert=str(cert), tls_key=str(key))
    with pytest.raises(ConfigError) as info:
        tls_context(config)
    assert str(info.value) == (
        f"nats.tls_cert {cert} with nats.tls_key {key} is not a usable certificate and key "
        "(KEY_VALUES_MISMATCH)"
    )
