"""A dead letter an operator can act on: listed with its code and room, and replayed
(the original input, to its original subject) once the publisher's fault is fixed."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import msgpack
import pytest

from tests.harness.procs import read_stream, stream_count
from tests.harness.sites import Site, site
from worker.bus.publisher import Outgoing, Publisher
from worker.bus.streams import ensure_streams
from worker.bus.subjects import Subjects
from worker.matrix.hashes import compute_event_id
from worker.matrix.room_versions import get_room_version
from worker.synthetic import linear_room

pytestmark = pytest.mark.faults


async def test_dead_letter_replayed_after_the_publisher_fixes_its_fault(tmp_path: Path) -> None:
    pdus = list(linear_room("10", members=2, events=3, seed=11))
    version = get_room_version("10")
    room_id = pdus[0]["room_id"]
    create, join = pdus[0], pdus[1]
    join_id = compute_event_id(join, version)
    subjects = Subjects()

    def outgoing(pdu: dict[str, object]) -> Outgoing:
        body = msgpack.packb({"event": pdu}, use_bin_type=True)
        return Outgoing(subjects.input(room_id), body, compute_event_id(pdu, version))

    async with site(tmp_path) as test_site:
        js, streams = test_site.js, test_site.config.streams
        await ensure_streams(js, test_site.config)
        publisher = Publisher(js, test_site.config)
        worker = test_site.worker()
        try:
            # The publisher's fault: the creator's join before the room's create event.
            await publisher.publish_many([outgoing(join)])
            await worker.until(
                lambda: _count(test_site, streams.deadletter, 1), "the dead letter", 30
            )
            code, out = test_site.cli("deadletters", "--json")
            assert code == 0, out
            [dead] = json.loads(out)["dead_letters"]
            assert (dead["code"], dead["room_id"]) == ("unknown_room", room_id)
            assert dead["subject"] == subjects.input(room_id)

            # Fixed: the create event, then the replay of the join.
            await publisher.publish_many([outgoing(create)])
            code, out = test_site.cli("replay", "--code", "unknown_room")
            assert code == 0, out
            assert f"dead letter {dead['sequence']} (unknown_room, room {room_id}): replayed " in (
                out
            )
            await worker.until(
                lambda: _count(test_site, streams.output, 2), "the join's output", 30
            )
            outputs = await read_stream(js, streams.output, f"{subjects.prefix}.output.>")
            bodies = [msgpack.unpackb(m.data) for m in outputs]
            assert [(b["type"], b["event_id"]) for b in bodies][-1] == ("new_room_event", join_id)

            # Replaying the same dead letter again is dropped by JetStream.
            code, out = test_site.cli("replay", str(dead["sequence"]))
            assert code == 0, out
            assert "already replayed" in out
            code, out = test_site.cli("replay", "999")
            assert code == 6 and "no dead letter 999 matches" in out, out  # not found
            await worker.until(test_site.settled, "every input acknowledged")
            assert await stream_count(js, streams.deadletter) == 1
            assert await worker.stop(signal.SIGTERM) == 0
        finally:
            worker.ensure_dead()


async def _count(test_site: Site, stream: str, at_least: int) -> bool:
    return await stream_count(test_site.js, stream) >= at_least
