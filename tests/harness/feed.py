"""The deterministic multi-room feed the fault tests disturb.

Several linear rooms of different room versions, plus one room with a fork and merge,
a rejected event, a soft-failed event and a redaction, plus a few inputs that must be
dead-lettered, all interleaved round-robin so that every batch mixes rooms. The same
arguments always give the same bytes, so an undisturbed run and a disturbed one can be
compared output by output.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import msgpack

from worker.bus.publisher import Outgoing
from worker.bus.subjects import Subjects
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event
from worker.matrix.pdu import parse_pdu
from worker.matrix.room_versions import get_room_version
from worker.synthetic import linear_room

#: (room version, seed) of each linear room.
LINEAR_ROOMS: tuple[tuple[str, int], ...] = (
    ("10", 1),
    ("11", 2),
    ("12", 3),
    ("9", 4),
    ("3", 5),
    ("1", 6),
)


@dataclass(frozen=True, slots=True)
class Feed:
    messages: list[Outgoing]
    #: Event IDs of every PDU in the feed (bad inputs excluded).
    event_ids: frozenset[str]
    room_ids: frozenset[str]
    bad_inputs: int


def build_feed(
    subjects: Subjects, *, members: int = 8, events: int = 150, linear: int = len(LINEAR_ROOMS)
) -> Feed:
    rooms = [_linear_events(version, seed, members, events) for version, seed in LINEAR_ROOMS]
    rooms = rooms[:linear]
    rooms.append(_eventful_room())
    messages = [
        Outgoing(
            subjects.input(event.room_id),
            msgpack.packb({"event": dict(event.pdu)}, use_bin_type=True),
            event.event_id,
        )
        for row in itertools.zip_longest(*rooms)
        for event in row
        if event is not None
    ]
    bad = list(_bad_inputs(subjects, rooms[-1][0].room_id))
    # Spread the bad inputs through the feed, so they land in batches of good ones.
    step = len(messages) // (len(bad) + 1)
    for i, outgoing in enumerate(bad, start=1):
        messages.insert(i * step, outgoing)
    return Feed(
        messages,
        frozenset(e.event_id for room in rooms for e in room),
        frozenset(room[0].room_id for room in rooms),
        len(bad),
    )


def _linear_events(version: str, seed: int, members: int, events: int) -> list[Event]:
    room_version = get_room_version(version)
    return [
        parse_pdu(pdu, room_version)
        for pdu in linear_room(version, members=members, events=events, seed=seed)
    ]


def _eventful_room() -> list[Event]:
    """Fork and merge, a rejected, a soft-failed and a redacted event."""
    alice, bob, carol = "@alice:a.example", "@bob:b.example", "@carol:c.example"
    room = RoomBuilder("10", alice, start_ts=1_800_000_000_000)
    out = list(room.bootstrap())
    out.append(room.join(bob))
    out.append(room.join(carol))
    base = room.message(alice, "before the fork")
    out.append(base)
    left = room.state_event(
        alice, "m.room.topic", "", {"topic": "left"}, prev_events=[base.event_id]
    )
    right = room.state_event(
        alice, "m.room.name", "", {"name": "right"}, prev_events=[base.event_id]
    )
    out += [left, right]
    out.append(room.message(bob, "merge", prev_events=[left.event_id, right.event_id]))
    victim = room.message(carol, "to be redacted")
    out.append(victim)
    out.append(room.redaction(alice, victim.event_id, reason="test"))
    # A stranger who never joined: rejected against its own auth events.
    out.append(room.message("@mallory:evil.example", "let me in"))
    before_ban = room.extremities
    state_before_ban = room.current_state
    out.append(room.ban(alice, carol))
    # Carol writes on the state before her ban: allowed there, not in the current state.
    out.append(room.message(carol, "too late", prev_events=before_ban, state=state_before_ban))
    out.append(room.message(alice, "after the ban"))
    for i in range(20):
        out.append(room.message(bob if i % 2 else alice, f"tail {i}"))
    return out


def _bad_inputs(subjects: Subjects, room_id: str) -> Iterator[Outgoing]:
    yield Outgoing(subjects.input(room_id), b"\xc1 not msgpack")
    yield Outgoing(subjects.input(room_id), msgpack.packb({"event": "not a map"}))
    yield Outgoing(subjects.input("!nowhere:example.org"), msgpack.packb({"event": {}}))


def unique(items: Sequence[str]) -> bool:
    return len(set(items)) == len(items)
