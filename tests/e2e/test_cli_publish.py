"""The README's path: `roomserver generate` a room, `roomserver publish` it to a running
worker, one `new_room_event` per event."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from nats.js import JetStreamContext

from tests.e2e.harness import outputs_reader, running_worker
from worker.config import Config


def _env(config: Config) -> dict[str, str]:
    streams = config.streams
    return {
        **os.environ,
        "ROOMSERVER_NATS_SERVERS": ",".join(config.nats.servers),
        "ROOMSERVER_STREAMS_SUBJECT_PREFIX": streams.subject_prefix,
        "ROOMSERVER_STREAMS_INPUT": streams.input,
        "ROOMSERVER_STREAMS_OUTPUT": streams.output,
        "ROOMSERVER_STREAMS_DEADLETTER": streams.deadletter,
        "ROOMSERVER_STREAMS_STORAGE": streams.storage,
    }


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_generate_and_publish_through_the_cli(
    config: Config, js: JetStreamContext, tmp_path: Path
) -> None:
    env = _env(config)
    room = tmp_path / "room.jsonl"
    code, _, err = await _run(
        "generate",
        "--room-version",
        "12",
        "--members",
        "8",
        "--events",
        "40",
        "--out",
        str(room),
        env=env,
    )
    assert code == 0, err
    lines = room.read_text().splitlines()
    assert len(lines) == 4 + 8 + 40
    reader = outputs_reader(js, config)
    async with running_worker(config):
        code, out, err = await _run("publish", "--no-progress", str(room), env=env)
        assert code == 0, err
        assert f"published {len(lines)}," in out
        outputs = await reader.take(len(lines))
        # Publishing again is dropped by JetStream (msg IDs are the event IDs).
        code, out, err = await _run("publish", "--no-progress", str(room), env=env)
        assert code == 0, err
        assert f"duplicates dropped by NATS {len(lines)}" in out
        assert await reader.nothing_more(0.5)
    assert [o["type"] for o in outputs] == ["new_room_event"] * len(lines)
    state_events = sum(1 for o in outputs if o["adds_state_event_ids"])
    assert state_events >= 4 + 8
