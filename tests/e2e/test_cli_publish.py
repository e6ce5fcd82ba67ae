"""The README's path: `roomserver generate` a room, `roomserver publish` it to a running
worker, one `new_room_event` per event."""

from __future__ import annotations

from pathlib import Path

from nats.js import JetStreamContext

from tests.harness.e2e import cli, outputs_reader, running_worker
from worker.config import Config


async def test_generate_and_publish_through_the_cli(
    config: Config, js: JetStreamContext, tmp_path: Path
) -> None:
    room = tmp_path / "room.jsonl"
    result = await cli(
        config,
        tmp_path,
        "generate",
        "--room-version",
        "12",
        "--members",
        "8",
        "--events",
        "40",
        "--out",
        str(room),
    )
    assert result.code == 0, result.err
    lines = room.read_text().splitlines()
    assert len(lines) == 4 + 8 + 40
    reader = outputs_reader(js, config)
    async with running_worker(config):
        result = await cli(config, tmp_path, "publish", "--no-progress", str(room))
        assert result.code == 0, result.err
        assert f"published {len(lines)}," in result.out
        outputs = await reader.take(len(lines))
        # Publishing again is dropped by JetStream (msg IDs are the event IDs).
        result = await cli(config, tmp_path, "publish", "--no-progress", str(room))
        assert result.code == 0, result.err
        assert f"duplicates dropped by NATS {len(lines)}" in result.out
        assert await reader.nothing_more(0.5)
    assert [o["type"] for o in outputs] == ["new_room_event"] * len(lines)
    state_events = sum(1 for o in outputs if o["adds_state_event_ids"])
    assert state_events >= 4 + 8
