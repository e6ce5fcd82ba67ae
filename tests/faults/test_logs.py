"""What the worker writes to its log at info level and above: IDs, never events."""

from __future__ import annotations

import json

from tests.harness.feed import Feed
from tests.harness.sites import RunResult

#: Keys only a whole PDU (or its content) would bring into a log line.
PDU_KEYS = ('"content"', '"signatures"', '"hashes"', '"prev_events"', '"auth_events"')


def test_log_lines_carry_ids_and_never_whole_events(reference: RunResult, feed: Feed) -> None:
    lines = reference.log_lines
    assert lines, "the reference run logged nothing"
    assert all(line.get("level") != "debug" for line in lines)
    for line in lines:
        text = json.dumps(line)
        assert not any(key in text for key in PDU_KEYS), text
        # Message bodies of the feed ("message 12", "let me in", "tail 3") stay out too.
        assert "let me in" not in text and "message 1" not in text, text
    not_accepted = [line for line in lines if line["event"] == "event not accepted"]
    assert len(not_accepted) == 2  # the stranger's message and the banned user's
    for line in not_accepted:
        assert line["room_id"] in feed.room_ids
        assert line["event_id"] in feed.event_ids
    dead = [line for line in lines if line["event"] == "dead letter"]
    assert len(dead) == feed.bad_inputs
    assert all("stream_sequence" in line and "code" in line for line in dead)
