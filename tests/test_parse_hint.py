"""Inputs parsed ahead, in the worker's event loop (worker/runner/parse_ahead.py,
worker/input/parse_hint.py): the pipeline's results are those of parsing in the
pipeline.

The yardstick is `parse_pdu` itself, the pipeline's own parser, whose results the other
tests check against the spec and Synapse: an event made from a hint must be the event
`parse_pdu` returns, every input `parse_pdu` refuses must go without a hint (so the
pipeline refuses it with the same dead-letter code), and a hint made for another room
version must not be used.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.harness.pipeline import ALICE, SUBJECTS, Harness, pack
from tests.test_bad_input import CASES
from worker.input.decode import decode_input
from worker.input.parse_hint import hinted_event, parse_ahead
from worker.matrix.builder import RoomBuilder
from worker.matrix.pdu import parse_pdu
from worker.matrix.room_versions import get_room_version
from worker.pipeline import Disposition, InboundMessage
from worker.runner.parse_ahead import ParseAhead
from worker.runner.pipeline_server import PipelineServer, Request, SharedFlags


def send_hinted(
    h: Harness, ahead: ParseAhead, data: bytes, subject: str | None = None
) -> Disposition:
    """`Harness.send_raw` with the hint the worker's event loop would send."""
    h.seq += 1
    message = InboundMessage(subject or SUBJECTS.input(h.room_id), data, h.seq)
    [hint] = ahead.hints([message])
    h.pipeline.recipe.hints = {message: hint} if hint is not None else {}
    try:
        return h.pipeline.process_batch([message])[0]
    finally:
        h.pipeline.recipe.hints = {}


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    h.outbox()
    return h


@pytest.fixture
def ahead(harness: Harness) -> ParseAhead:
    """A loop's parser that has seen the room's create event (so knows its version)."""
    ahead = ParseAhead()
    create = pack({"event": dict(harness.bootstrap[0].pdu)})
    ahead.hints([InboundMessage(SUBJECTS.input(harness.room_id), create, 0)])
    return ahead


def test_bad_input_gets_the_same_dead_letter_with_hints(
    harness: Harness, ahead: ParseAhead
) -> None:
    for name, (make, code) in sorted(CASES.items()):
        payload, subject = make(harness)
        assert send_hinted(harness, ahead, payload, subject) is Disposition.TERM, name
        [letter] = harness.dead_letters()
        assert letter["error"] == code, (name, letter["message"])
        good = harness.message("still alive")
        assert send_hinted(harness, ahead, pack({"event": dict(good.pdu)})) is Disposition.ACK
        assert [body["type"] for _, body in harness.outbox()] == ["new_room_event"], name


def test_a_hint_is_made_for_a_good_event(harness: Harness, ahead: ParseAhead) -> None:
    event = harness.message("hinted")
    data = pack({"event": dict(event.pdu)})
    message = InboundMessage(SUBJECTS.input(harness.room_id), data, 99)
    [hint] = ahead.hints([message])
    assert hint == ("10", event.event_id)
    assert send_hinted(harness, ahead, data) is Disposition.ACK
    [(_, body)] = harness.outbox()
    assert (body["type"], body["event_id"]) == ("new_room_event", event.event_id)


def test_the_pipeline_takes_a_hinted_event_as_it_is(harness: Harness) -> None:
    """The pipeline does not parse a hinted input again: the event ID is the hint's (a
    hint the loop made from another PDU shows it; the loop never sends such a one)."""
    event, other = harness.message("hinted"), harness.message("other")
    data = pack({"event": dict(event.pdu)})
    harness.seq += 1
    message = InboundMessage(SUBJECTS.input(harness.room_id), data, harness.seq)
    harness.pipeline.recipe.hints = {message: ("10", other.event_id)}
    try:
        assert harness.pipeline.process_batch([message]) == [Disposition.ACK]
    finally:
        harness.pipeline.recipe.hints = {}
    [(_, body)] = harness.outbox()
    assert body["event_id"] == other.event_id


@pytest.mark.parametrize("version", ["1", "2", "3", "4", "5", "6", "9", "10", "11", "12"])
def test_hinted_events_equal_parsed_ones_in_every_version(version: str) -> None:
    room_version = get_room_version(version)
    builder = RoomBuilder(version, ALICE)
    events = builder.bootstrap()
    events.append(builder.message(ALICE, "hello", prev_events=[events[-1].event_id]))
    for event in events:
        inp = decode_input(pack({"event": dict(event.pdu)}))
        parsed = parse_pdu(inp.event, room_version, float_free=inp.float_free)
        hint = parse_ahead(inp, room_version)
        assert hint is not None, event
        made = hinted_event(decode_input(pack({"event": dict(event.pdu)})), room_version, hint)
        assert made is not None
        assert (made.event_id, dict(made.pdu), made.redacted) == (
            parsed.event_id,
            dict(parsed.pdu),
            parsed.redacted,
        )
        assert (made.type, made.state_key, made.room_id, made.prev_event_ids) == (
            parsed.type,
            parsed.state_key,
            parsed.room_id,
            parsed.prev_event_ids,
        )


def test_no_hint_for_an_event_parsing_changes(harness: Harness, ahead: ParseAhead) -> None:
    """A content hash that does not match (the event is processed redacted) and a claimed
    `event_id` (dropped from the PDU) leave the parse to the pipeline."""
    version = get_room_version("10")
    tampered = copy.deepcopy(dict(harness.message("secret").pdu))
    tampered["content"]["body"] = "tampered"
    assert parse_ahead(decode_input(pack({"event": tampered})), version) is None
    event = harness.message("claimed")
    claimed = {**event.pdu, "event_id": event.event_id}
    assert parse_ahead(decode_input(pack({"event": claimed})), version) is None
    assert send_hinted(harness, ahead, pack({"event": tampered})) is Disposition.ACK
    [(_, body)] = harness.outbox()
    assert body["event"]["content"] == {}


def test_a_hint_for_another_room_version_is_not_used() -> None:
    builder = RoomBuilder("10", ALICE)
    event = builder.bootstrap()[0]
    inp = decode_input(pack({"event": dict(event.pdu)}))
    wrong = ("9", "$not-the-id")
    assert hinted_event(inp, get_room_version("10"), wrong) is None


def test_the_pipeline_reports_room_versions_its_inputs_lacked(tmp_path: Path) -> None:
    """A worker restarted in the middle of a room never sees its create event: the
    pipeline tells it the room's version with the first batch, and hints follow."""
    builder = RoomBuilder("10", ALICE)
    events = builder.bootstrap()
    subject = SUBJECTS.input(builder.room_id)
    server = PipelineServer(SharedFlags())
    server.handle(Request("open", (str(tmp_path / "db"), SUBJECTS.prefix, 5.0, 64), 0))
    try:
        first = [(subject, pack({"event": dict(events[0].pdu)}), 1)]
        server.handle(Request("process_batch", (first, None), 0))
        rest = [(subject, pack({"event": dict(e.pdu)}), i) for i, e in enumerate(events[1:], 2)]
        restarted = ParseAhead()
        unhinted = restarted.hints([InboundMessage(*m) for m in rest[:1]])
        assert unhinted == [None]
        result = server.handle(Request("process_batch", (rest[:1], None, unhinted), 0)).value
        assert result.versions == {subject: "10"}
        restarted.learn(result.versions)
        hints = restarted.hints([InboundMessage(*m) for m in rest[1:]])
        assert all(h is not None for h in hints)
        result = server.handle(Request("process_batch", (rest[1:], None, hints), 0)).value
        assert result.versions == {}
        assert set(result.dispositions) == {Disposition.ACK}
    finally:
        server.handle(Request("close", (), 0))
