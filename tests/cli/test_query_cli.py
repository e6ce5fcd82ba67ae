"""The query commands end to end: `python -m worker.cli ...` as its own process, its
configuration from the environment as an operator would set it, against the running
worker (or, for `stats` and `graph`, the database file it wrote)."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from tests.harness.e2e import cli, input_for, publish_inputs
from tests.query.scenario import ALICE, BOB, CAROL, DAVE, EVE, VERSION, served_story, wait_processed
from worker.cli import EXIT_FAILURE, EXIT_NOT_FOUND
from worker.config import Config


async def test_state_command(config: Config, js: JetStreamContext, tmp_path: Path) -> None:
    async with served_story(config, js) as (_, story):
        room = story.room_id
        result = await cli(config, tmp_path, "state", room)
        assert result.code == 0, result.err
        lines = result.out.splitlines()
        assert lines[0] == f"state of {room} now: {len(story.current_state())} entries"
        assert lines[1].split() == ["TYPE", "STATE", "KEY", "EVENT", "ID"]
        rows = [line.split() for line in lines[2:]]
        assert {(r[0], "" if len(r) == 2 else r[1]): r[-1] for r in rows} == (story.current_state())
        assert [r[0] for r in rows] == sorted(r[0] for r in rows)

        as_json = (await cli(config, tmp_path, "state", room, "--json")).json()
        assert as_json["room_id"] == room
        assert {(t, s): e for t, s, e in as_json["state"]} == story.current_state()

        topic = story.id("topic")
        before = (await cli(config, tmp_path, "state", room, "--at", topic, "--json")).json()
        after = (
            await cli(config, tmp_path, "state", room, "--at", topic, "--after", "--json")
        ).json()
        assert (before["at"], after["at"]) == ("before", "after")
        assert ["m.room.topic", "", topic] in after["state"]
        assert all(entry[0] != "m.room.topic" for entry in before["state"])
        text = await cli(config, tmp_path, "state", room, "--at", topic, "--after")
        assert text.out.splitlines()[0].startswith(f"state of {room} after {topic}:")

        members = await cli(config, tmp_path, "state", room, "--type", "m.room.member", "--json")
        assert sorted(e[1] for e in members.json()["state"]) == sorted(
            [ALICE, BOB, CAROL, DAVE, EVE]
        )
        picked = await cli(
            config,
            tmp_path,
            "state",
            room,
            "--key",
            "m.room.member",
            BOB,
            "--key",
            "m.room.topic",
            "",
            "--json",
        )
        assert sorted(picked.json()["state"]) == sorted(
            [["m.room.member", BOB, story.id("join_bob")], ["m.room.topic", "", topic]]
        )

        unknown = await cli(config, tmp_path, "state", "!nope:example.org")
        assert unknown.code == EXIT_NOT_FOUND
        assert "room !nope:example.org is not known" in unknown.err
        assert "(unknown_room)" in unknown.err and unknown.out == ""
        unknown_json = await cli(config, tmp_path, "state", "!nope:example.org", "--json")
        assert unknown_json.code == EXIT_NOT_FOUND
        assert unknown_json.json()["error"] == "unknown_room"
        outlier = await cli(config, tmp_path, "state", room, "--at", story.id("outlier_topic"))
        assert outlier.code == EXIT_FAILURE and "(no_state)" in outlier.err
        misuse = await cli(config, tmp_path, "state", room, "--after")
        assert misuse.code == 2 and "--after needs --at" in misuse.err


async def test_event_rooms_members_held_commands(
    config: Config, js: JetStreamContext, tmp_path: Path
) -> None:
    async with served_story(config, js) as (worker, story):
        room = story.room_id
        rejected = story.id("bob_names_room")
        shown = await cli(config, tmp_path, "event", rejected, story.id("dave_says"))
        assert shown.code == 0, shown.err
        blocks = [_fields(block) for block in shown.out.split("\n\n")]
        assert len(blocks) == 2
        assert blocks[0]["event ID"] == rejected
        assert blocks[0]["room"] == room
        assert (blocks[0]["type"], blocks[0]["state key"]) == ("m.room.name", '""')
        assert (blocks[0]["sender"], blocks[0]["status"]) == (BOB, "rejected")
        assert blocks[0]["reason"].startswith("against its auth events: @bob:example.org")
        assert blocks[0]["sent"].endswith(" UTC")
        assert (blocks[1]["status"], blocks[1]["state key"]) == ("soft_failed", "-")
        assert blocks[1]["reason"].startswith("against the state current")
        with_pdu = await cli(config, tmp_path, "event", story.id("bob_says"), "--pdu")
        assert '"body": "hello"' in with_pdu.out
        missing = await cli(config, tmp_path, "event", story.id("create"), "$gone:example.org")
        assert missing.code == EXIT_NOT_FOUND
        assert "event $gone:example.org is not stored" in missing.err
        assert _fields(missing.out)["status"] == "accepted"
        missing_json = await cli(config, tmp_path, "event", "$gone:example.org", "--json")
        assert missing_json.code == EXIT_NOT_FOUND
        assert missing_json.json() == {"events": [], "missing": ["$gone:example.org"]}

        rooms = await cli(config, tmp_path, "rooms")
        assert rooms.code == 0
        assert rooms.out.splitlines()[1].split() == [room, VERSION, str(len(story.inputs))]
        assert (await cli(config, tmp_path, "rooms", "--json")).json() == {
            "rooms": [{"room_id": room, "room_version": VERSION, "events": len(story.inputs)}]
        }

        members = await cli(config, tmp_path, "members", room)
        assert members.out.splitlines() == [f"2 with membership join in {room}", ALICE, BOB]
        banned = await cli(config, tmp_path, "members", room, "--membership", "ban", "--json")
        assert banned.json()["members"] == [DAVE]
        carol = await cli(config, tmp_path, "members", room, "--user", CAROL)
        assert carol.out.splitlines()[1].split() == [CAROL, "leave", story.id("carol_leaves")]
        earlier = await cli(
            config, tmp_path, "members", room, "--at", story.id("carol_leaves"), "--json"
        )
        assert earlier.json()["members"] == [ALICE, BOB, CAROL]
        nobody = await cli(config, tmp_path, "members", room, "--user", "@x:example.org")
        assert nobody.out.splitlines()[1].split() == ["@x:example.org", "-", "-"]

        assert (await cli(config, tmp_path, "held", room)).out.strip() == "no held events"
        lost = story.builder.message(ALICE, "lost", prev_events=[story.head])
        waiting = story.builder.message(BOB, "waiting", prev_events=[lost.event_id])
        await publish_inputs(js, config, [input_for(waiting.pdu)], room_version=VERSION)
        await wait_processed(worker, len(story.inputs) + 1)
        held = await cli(config, tmp_path, "held")
        row = held.out.splitlines()[1].split()
        assert row[:2] == [waiting.event_id, room] and row[-1] == lost.event_id
        held_json = (await cli(config, tmp_path, "held", room, "--json")).json()
        assert held_json["held"][0]["waiting_for"] == [lost.event_id]


def _fields(block: str) -> dict[str, str]:
    """`key  value` lines (keys may hold one space; two or more separate the value)."""
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in block.splitlines())


async def test_unreachable_worker_or_nats(config: Config, tmp_path: Path) -> None:
    nobody = await cli(config, tmp_path, "rooms", "--timeout", "2")
    assert nobody.code == 3
    assert "no worker answers" in nobody.err
    no_nats = await cli(
        config,
        tmp_path,
        "rooms",
        "--timeout",
        "0.5",
        env={"ROOMSERVER_NATS_SERVERS": "nats://127.0.0.1:9"},
    )
    assert no_nats.code == 3
    assert "cannot reach NATS at nats://127.0.0.1:9" in no_nats.err


async def test_stats_reads_the_database(
    config: Config, js: JetStreamContext, tmp_path: Path
) -> None:
    missing = await cli(config, tmp_path, "stats")
    assert missing.code == EXIT_NOT_FOUND and "there is no database" in missing.err
    async with served_story(config, js) as (_, story):
        live = (await cli(config, tmp_path, "stats", "--json")).json()
    stopped = await cli(config, tmp_path, "stats", "--json")
    # The same counts with the worker stopped (the file shrinks: the WAL is merged in).
    # Published outputs leave the outbox with the next transaction, or when the worker
    # is idle or stops, so only the stopped worker's outbox is surely empty.
    assert stopped.json()["outbox"] == 0
    assert {**stopped.json(), "file_bytes": 0, "outbox": 0} == {
        **live,
        "file_bytes": 0,
        "outbox": 0,
    }
    assert {k: live[k] for k in ("rooms", "events", "rejected", "soft_failed", "outliers")} == {
        "rooms": 1,
        "events": len(story.inputs),
        "rejected": 1,
        "soft_failed": 1,
        "outliers": 1,
    }
    assert live["held"] == 0
    assert live["snapshots"] > 0 and live["blocks"] > 0
    assert live["block_bytes"] == 24 * live["block_entries"]
    assert live["file_bytes"] >= live["block_bytes"]
    table = await cli(config, tmp_path, "stats")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].startswith("storage ") and lines[0].endswith("roomserver.db")
    assert re.search(rf"^events +{len(story.inputs)}$", table.out, re.MULTILINE)
    assert re.search(r"^  rejected +1$", table.out, re.MULTILINE)


def _fake_dot(directory: Path) -> Path:
    """A stand-in for Graphviz's `dot`: writes what it was asked for, so the test can
    check the invocation without Graphviz installed."""
    script = directory / "dot"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "args = sys.argv[1:]\n"
        "assert args[0] == '-Tsvg' and args[1] == '-o'\n"
        "source = open(args[3], encoding='utf-8').read()\n"
        "open(args[2], 'w').write('<svg><!-- ' + str(len(source)) + ' --></svg>')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_graph_command(config: Config, js: JetStreamContext, tmp_path: Path) -> None:
    async with served_story(config, js) as (_, story):
        room = story.room_id
        out = tmp_path / "room.dot"
        result = await cli(config, tmp_path, "graph", room, "--out", str(out), "--no-svg")
        assert result.code == 0, result.err
        assert result.out.strip() == f"{len(story.inputs)} events: wrote {out}"
        dot = out.read_text(encoding="utf-8")
        assert dot.startswith(f'digraph "{room}" {{') and dot.rstrip().endswith("}")
        for name, event in story.named.items():
            assert f'"{event.event_id}" [' in dot, name
            for prev in event.prev_event_ids:
                assert f'"{event.event_id}" -> "{prev}";' in dot
        node = {
            name: next(line for line in dot.splitlines() if line.startswith(f'  "{e.event_id}" ['))
            for name, e in story.named.items()
        }
        assert 'fillcolor="#f4cccc"' in node["bob_names_room"]
        assert (
            "rejected" in node["bob_names_room"]
            and "against its auth events" in (node["bob_names_room"])
        )
        assert "soft_failed" in node["dave_says"] and "dashed" in node["dave_says"]
        assert "no state (outlier)" in node["outlier_topic"]
        assert "peripheries=2" in node["bob_says"]
        assert sum("peripheries=2" in line for line in node.values()) == 1
        assert "before S0 (empty)" in node["create"] and "after S" in node["create"]
        assert "before S" in node["topic"] and "(" in node["topic"].split("before S")[1]
        assert "current state S" in dot
        assert not (tmp_path / "room.svg").exists()

        # With `dot` on PATH, an SVG is written beside the DOT file.
        tools = tmp_path / "bin"
        tools.mkdir()
        _fake_dot(tools)
        path_env = {"PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"}
        drawn = await cli(config, tmp_path, "graph", room, "--limit", "3", env=path_env)
        assert drawn.code == 0, drawn.err
        default = tmp_path / (room.replace("!", "").replace(":", "_") + ".dot")
        assert drawn.out.strip() == (
            f"3 events (the newest; {len(story.inputs) - 3} older not drawn): "
            f"wrote {default.name}, {default.with_suffix('.svg').name}"
        )
        assert default.with_suffix(".svg").read_text().startswith("<svg>")
        limited = default.read_text(encoding="utf-8")
        assert "older, not shown" in limited

        to_stdout = await cli(config, tmp_path, "graph", room, "--out", "-")
        assert to_stdout.out == dot
        unknown = await cli(config, tmp_path, "graph", "!nope:example.org", "--out", "-")
        assert unknown.code == EXIT_NOT_FOUND and "(unknown_room)" in unknown.err


@pytest.mark.parametrize("command", ["state", "members", "graph"])
async def test_commands_need_a_room(config: Config, tmp_path: Path, command: str) -> None:
    result = await cli(config, tmp_path, command)
    assert result.code == 2 and "required: room" in result.err
