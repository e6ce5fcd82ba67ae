"""What a new user meets: `roomserver` run as its own process against a real
nats-server. Where it connects (-s, NATS_URL, the configuration, an IPv6 listen
address) and who answered; --version and the top-level help; one line and a
documented exit status for every fault, never a traceback; `publish --timeout`;
`graph --out DIR` and a missing `dot`; numbers as numbers in --json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from tests.harness.e2e import Result, cli
from tests.harness.procs import free_port
from tests.query.scenario import served_story
from worker.bus.connection import connect
from worker.bus.server import EmbeddedNatsServer
from worker.bus.streams import ensure_streams
from worker.cli import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE_FAULT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from worker.config import Config
from worker.storage.database import DB_FILENAME


def one_line(result: Result, code: int, text: str) -> None:
    """The fault is one line on stderr naming it, with its exit status."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("roomserver: "), result.err
    assert text in lines[0], result.err


def dead_url() -> str:
    return f"nats://127.0.0.1:{free_port()}"


async def test_server_precedence_and_who_answered(
    config: Config, js: JetStreamContext, tmp_path: Path
) -> None:
    """-s beats NATS_URL, which beats the configuration (as the `nats` CLI decides);
    every answer names the worker (its query service ID, storage and host) and the
    NATS server it came through."""
    real = config.nats.servers[0]
    async with served_story(config, js) as (worker, story):
        assert worker.queries is not None
        service_id = worker.queries.service_id
        storage = Path(config.storage.path) / DB_FILENAME
        footer = f"answered by worker {service_id} (storage {storage}, host "
        configured_dead = {"ROOMSERVER_NATS_SERVERS": dead_url()}

        by_option = await cli(config, tmp_path, "rooms", "-s", real, env=configured_dead)
        assert by_option.code == EXIT_OK, by_option.err
        assert story.room_id in by_option.out
        assert by_option.err.startswith(footer), by_option.err
        assert by_option.err.rstrip().endswith(f" via {real}")

        by_env = await cli(config, tmp_path, "rooms", env={**configured_dead, "NATS_URL": real})
        assert by_env.code == EXIT_OK, by_env.err
        assert f" via {real}" in by_env.err

        option_wins = await cli(
            config, tmp_path, "rooms", "--timeout", "1", "-s", dead_url(), env={"NATS_URL": real}
        )
        one_line(option_wins, EXIT_UNREACHABLE, "cannot reach NATS at nats://127.0.0.1:")

        # The worker that answers an error is named too (a wrong address shows).
        unknown = await cli(config, tmp_path, "state", "!nope:example.org")
        assert unknown.code == EXIT_NOT_FOUND
        assert unknown.err.splitlines()[0].endswith("(unknown_room)")
        assert unknown.err.splitlines()[1].startswith(footer), unknown.err
        # --json is for scripts: the JSON alone, also on stderr.
        as_json = await cli(config, tmp_path, "rooms", "--json")
        assert as_json.code == EXIT_OK and as_json.err == ""
        assert as_json.json()["rooms"][0]["room_id"] == story.room_id


async def test_publish_to_an_ipv6_embedded_server(tmp_path: Path) -> None:
    """No servers configured: publish connects to the embedded server's listen address,
    here IPv6 loopback (the URL needs brackets), as the query commands do."""
    async with EmbeddedNatsServer(tmp_path / "nats", host="::1", port=0) as server:
        env = {
            "ROOMSERVER_NATS_SERVERS": "",
            "ROOMSERVER_NATS_LISTEN_HOST": "::1",
            "ROOMSERVER_NATS_LISTEN_PORT": str(server.port),
        }
        config = Config()
        nc = await connect(config.nats, [server.url])
        try:
            await ensure_streams(nc.jetstream(), config)
        finally:
            await nc.close()
        room = tmp_path / "room.jsonl"
        generated = await cli(
            config, tmp_path, "generate", "--members", "2", "--events", "3", "--out", str(room)
        )
        assert generated.code == EXIT_OK, generated.err
        published = await cli(config, tmp_path, "publish", "--no-progress", str(room), env=env)
        assert published.code == EXIT_OK, published.err
        assert published.out.startswith("published 9,"), published.out
        assert f"via nats://[::1]:{server.port}" in published.err
        rooms = await cli(config, tmp_path, "rooms", "--timeout", "2", env=env)
        # No worker runs here: NATS answered, no query service did.
        assert rooms.code == EXIT_UNREACHABLE and "no worker answers" in rooms.err
        assert rooms.err.rstrip().endswith(f"via nats://[::1]:{server.port}")


async def test_version_and_help(config: Config, tmp_path: Path) -> None:
    version = await cli(config, tmp_path, "--version")
    assert version.code == EXIT_OK
    assert version.out.startswith("roomserver ") and version.out.split()[1][0].isdigit()
    shown = await cli(config, tmp_path, "--help")
    assert shown.code == EXIT_OK
    assert "Matrix roomserver" in shown.out
    for part in ("common commands:", "example:", "roomserver publish room.jsonl", "NATS_URL"):
        assert part in shown.out, part
    assert "exit statuses: 0 ok" in shown.out


@pytest.mark.timing
async def test_faults_are_one_line_with_their_exit_status(config: Config, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    one_line(
        await cli(config, tmp_path, "publish", str(missing)),
        EXIT_NOT_FOUND,
        f"cannot read {missing}",
    )
    bad_version = await cli(config, tmp_path, "generate", "--room-version", "99")
    assert bad_version.code == EXIT_USAGE and "Traceback" not in bad_version.err
    assert "unknown room version '99'" in bad_version.err
    bad_publish = await cli(config, tmp_path, "publish", "--room-version", "99", "-")
    assert bad_publish.code == EXIT_USAGE and "unknown room version" in bad_publish.err

    # NATS down: publish gives up after --timeout (the default is 10 s).
    room = tmp_path / "room.jsonl"
    await cli(config, tmp_path, "generate", "--members", "1", "--events", "1", "--out", str(room))
    started = time.monotonic()
    down = await cli(config, tmp_path, "publish", "--timeout", "1", "-s", dead_url(), str(room))
    assert time.monotonic() - started < 15
    one_line(down, EXIT_UNREACHABLE, "within 1 s (unavailable)")

    # The same fault, the same status, for stats, verify, graph and parked.
    for command in (["stats"], ["verify"], ["graph", "!r:x", "--out", "-"], ["parked"]):
        one_line(await cli(config, tmp_path, *command), EXIT_NOT_FOUND, "no_database")
    storage = Path(config.storage.path)
    storage.mkdir(parents=True)
    (storage / DB_FILENAME).write_bytes(b"this is not an SQLite database" * 200)
    for command in (["stats"], ["verify"]):
        one_line(
            await cli(config, tmp_path, *command),
            EXIT_STORAGE_FAULT,
            "cannot read the database under",
        )


async def test_graph_into_a_directory_without_dot(
    config: Config, js: JetStreamContext, tmp_path: Path
) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    async with served_story(config, js) as (_, story):
        out = tmp_path / "graphs"
        drawn = await cli(
            config, tmp_path, "graph", story.room_id, "--out", f"{out}/", env={"PATH": str(empty)}
        )
        assert drawn.code == EXIT_OK, drawn.err
        written = list(out.iterdir())
        assert [p.suffix for p in written] == [".dot"]
        assert f"wrote {written[0]}" in drawn.out
        assert "Graphviz `dot` is not on PATH: SVG skipped" in drawn.err


async def test_json_has_numbers(config: Config, js: JetStreamContext, tmp_path: Path) -> None:
    async with served_story(config, js) as (_, story):
        pass
    checked = await cli(config, tmp_path, "verify", "--json")
    assert checked.code == EXIT_OK, checked.out
    report = json.loads(checked.out)
    assert report["faults"] == []
    assert report["summary"]["rooms"] == 1
    assert report["summary"]["events"] == len(story.inputs)
    assert all(isinstance(v, int) for v in report["summary"].values())
    stats = (await cli(config, tmp_path, "stats", "--json")).json()
    assert all(isinstance(v, int) for v in stats.values())
    assert stats["events"] == report["summary"]["events"]
