"""The federation commands as an operator runs them: `python -m worker.cli ...` in its
own process, against the running worker, on the rooms of tests/query/federation_scenario
(whose answers tests/query/test_federation_queries checks against Synapse)."""

from __future__ import annotations

import re
from pathlib import Path

from nats.js import JetStreamContext

from tests.harness.e2e import cli, publish_inputs, running_worker
from tests.query.federation_scenario import ALICE, RITA, VERSION, ZED, build_rooms
from tests.query.scenario import wait_processed
from worker.config import Config


async def test_federation_commands(config: Config, js: JetStreamContext, tmp_path: Path) -> None:
    rooms = build_rooms()
    main, restricted = rooms.main.room_id, rooms.restricted.room_id
    async with running_worker(config) as worker:
        await publish_inputs(js, config, rooms.inputs, room_version=VERSION)
        await wait_processed(worker, len(rooms.inputs))

        denied = await cli(config, tmp_path, "acl", main, "evil.org:8448")
        assert denied.code == 1, denied.err
        assert denied.out.strip() == (f"evil.org:8448 is denied in {main} ({rooms.id('acl')})")
        allowed = await cli(config, tmp_path, "acl", main, "remote.org", "--json")
        assert allowed.code == 0 and allowed.json()["allowed"] is True

        mine = await cli(config, tmp_path, "user-rooms", ALICE)
        assert mine.code == 0, mine.err
        assert mine.out.splitlines()[1:] == sorted([main, restricted])
        none = await cli(config, tmp_path, "user-rooms", ZED, "--json")
        assert none.json()["room_ids"] == []

        join = await cli(
            config, tmp_path, "restricted-join", restricted, RITA, "--server-name", "example.org"
        )
        assert join.code == 0, join.err
        assert dict(line.split(None, 1) for line in join.out.splitlines())["outcome"] == "allowed"
        refused = await cli(
            config, tmp_path, "restricted-join", restricted, ZED, "--server-name", "example.org"
        )
        assert refused.code == 1
        assert "M_FORBIDDEN" in refused.out

        asked = [rooms.id("before1"), rooms.id("after1"), "$nowhere"]
        visible = await cli(config, tmp_path, "visible", main, "remote.org", *asked)
        assert visible.code == 1  # one event is not served
        rows = [re.split(r"\s{2,}", line) for line in visible.out.splitlines()[1:]]
        assert dict(rows) == {
            rooms.id("before1"): "redacted",
            rooms.id("after1"): "visible",
            "$nowhere": "not served",
        }

        back = await cli(config, tmp_path, "backfill", main, rooms.id("after2"), "--limit", "3")
        assert back.code == 0, back.err
        lines = back.out.splitlines()
        assert lines[0] == "3 event(s), newest first"
        assert [line.split()[0] for line in lines[2:]] == [
            rooms.id("after2"),
            rooms.id("after1"),
            rooms.id("join_rita"),
        ]
