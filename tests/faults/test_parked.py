"""A bug never silently forks a room: the room is parked, nothing of it is lost, and a
retry (a restart, or `roomserver retry`) ends exactly like an undisturbed run.

The fault is injected in the real worker process by tests/faults/inject.py: storing
the state after one event of one room raises RuntimeError, as a bug would.
"""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from pathlib import Path

import msgpack
import pytest

from tests.harness.feed import Feed
from tests.harness.procs import (
    StoredMessage,
    WorkerProcess,
    free_port,
    http_get,
    metric_value,
)
from tests.harness.sites import RunResult, Site, site
from worker.bus.subjects import Subjects

pytestmark = pytest.mark.faults

INJECT = "tests.faults.inject"


def failing_input(feed: Feed) -> tuple[str, str]:
    """(room ID, event ID): an event in the middle of the first linear room."""
    subjects = Subjects()
    first = feed.messages[0].subject
    events = [m.msg_id for m in feed.messages if m.subject == first and m.msg_id]
    assert len(events) > 100
    return subjects.room_of_input(first), str(events[len(events) // 2])


def per_room(messages: list[StoredMessage]) -> dict[str, list[tuple[str | None, bytes]]]:
    rooms: dict[str, list[tuple[str | None, bytes]]] = defaultdict(list)
    for m in messages:
        rooms[m.subject].append((m.msg_id, m.data))
    return dict(rooms)


def same_as_reference(result: RunResult, reference: RunResult) -> None:
    """Every room ends as in the undisturbed run: events with statuses, reasons, JSON and
    states; current state, extremities, last sent event; redactions; and each room's
    outputs in the same order, byte for byte. (Across rooms the order differs: the
    parked room's later outputs come after the retry.)"""
    assert result.dump.events == reference.dump.events
    assert result.dump.rooms == reference.dump.rooms
    assert result.dump.redactions == reference.dump.redactions
    assert (result.dump.outbox, result.dump.held) == (0, 0)
    assert per_room(result.outputs) == per_room(reference.outputs)
    assert [(m.subject, m.data) for m in result.dead_letters] == [
        (m.subject, m.data) for m in reference.dead_letters
    ]


async def park_one_room(test_site: Site, feed: Feed, fail_file: Path) -> WorkerProcess:
    """Run the feed with the fault in place until every input is acknowledged; check
    that exactly the one room is parked and nothing is dead-lettered for it."""
    room_id, event_id = failing_input(feed)
    fail_file.write_text(event_id)
    port = free_port()
    worker = test_site.worker(INJECT, test_fail_file=str(fail_file), metrics_listen_port=str(port))
    await test_site.publish(feed)
    await worker.until(test_site.settled, "every input acknowledged", 60)

    parked_lines = [
        line for line in worker.lines if str(line.get("event", "")).startswith("room parked")
    ]
    assert len(parked_lines) == 1, worker.log_tail()
    line = parked_lines[0]
    assert (line["room_id"], line["event_id"], line["level"]) == (room_id, event_id, "error")
    # The traceback is in the log line (structured, in JSON format).
    assert "injected fault" in json.dumps(line["exception"])

    code, out = test_site.cli("parked", "--json")
    assert code == 0, out
    [parked] = json.loads(out)["parked"]
    assert (parked["room_id"], parked["event_id"]) == (room_id, event_id)
    assert parked["error"] == f"RuntimeError: injected fault on {event_id}"
    assert "Traceback" in parked["traceback"]
    room_inputs = [m for m in feed.messages if m.subject == Subjects().input(room_id)]
    failed_at = [m.msg_id for m in room_inputs].index(event_id)
    # The failed input and every later one of the room, kept whole.
    assert parked["waiting_inputs"] == len(room_inputs) - failed_at

    status, body = await http_get(port, "/healthz")
    assert status == 200
    health = json.loads(body)
    assert (health["status"], health["parked_rooms"]) == ("degraded", 1)
    _, metrics = await http_get(port, "/metrics")
    assert metric_value(metrics, "roomserver_parked_rooms") == 1

    # No other room is touched, nothing is dead-lettered for the bug, and nothing of
    # the parked room after the failed input is stored.
    result = await test_site.result()
    assert len(result.dead_letters) == feed.bad_inputs
    codes = {msgpack.unpackb(m.data)["error"] for m in result.dead_letters}
    assert "internal_error" not in codes
    later = {m.msg_id for m in room_inputs[failed_at:]}
    assert not later & set(result.dump.events)
    return worker


async def test_bug_parks_the_room_and_a_restart_retries_it(
    feed: Feed, reference: RunResult, tmp_path: Path
) -> None:
    async with site(tmp_path) as test_site:
        fail_file = tmp_path / "fail"
        worker = await park_one_room(test_site, feed, fail_file)
        assert await worker.stop(signal.SIGTERM) == 0

        # "The upgrade": the same worker without the fault, started again.
        fail_file.unlink()
        restarted = test_site.worker(INJECT, test_fail_file=str(fail_file))
        try:
            await restarted.until_logged("parked room retried; it runs again")
            await restarted.until(test_site.settled, "every input acknowledged")
            assert await restarted.stop(signal.SIGTERM) == 0
        finally:
            restarted.ensure_dead()
        same_as_reference(await test_site.result(), reference)
        code, out = test_site.cli("parked")
        assert (code, out.strip()) == (0, "no parked rooms")


async def test_roomserver_retry_without_a_restart(
    feed: Feed, reference: RunResult, tmp_path: Path
) -> None:
    room_id, event_id = failing_input(feed)
    async with site(tmp_path) as test_site:
        fail_file = tmp_path / "fail"
        worker = await park_one_room(test_site, feed, fail_file)
        try:
            # Still broken: the retry fails again and the room stays parked, with the
            # new failure counted.
            code, out = test_site.cli("retry", room_id)
            assert code == 1, out
            assert f"{room_id}: still parked after 0 inputs: RuntimeError" in out
            _, listed = test_site.cli("parked", "--json")
            [parked] = json.loads(listed)["parked"]
            assert (parked["event_id"], parked["failures"]) == (event_id, 2)

            # Fixed (here: the fault removed from the running process): retried.
            fail_file.unlink()
            code, out = test_site.cli("retry", room_id)
            assert code == 0, out
            assert "the room runs again" in out
            code, out = test_site.cli("retry", room_id)
            assert code == 1 and "is not parked (not_parked)" in out, out
            await worker.until(test_site.settled, "every input acknowledged")
            assert await worker.stop(signal.SIGTERM) == 0
        finally:
            worker.ensure_dead()
        same_as_reference(await test_site.result(), reference)
