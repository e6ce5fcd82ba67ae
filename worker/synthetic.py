"""Synthetic rooms for the demo, the tests and the benchmark.

One generator serves all three so that what the benchmark measures is what the tests
check: a linear room where members join, then talk, rename the room, change the topic
and change their profiles.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from worker.matrix.builder import RoomBuilder

#: Relative weights of the events after the joins.
MIX = (("message", 80), ("topic", 4), ("name", 2), ("profile", 14))


def linear_room(
    room_version: str = "10",
    *,
    members: int = 50,
    events: int = 200,
    seed: int = 1,
    server: str = "example.org",
    keep_history: bool = False,
) -> Iterator[dict[str, Any]]:
    """PDUs of one linear room: bootstrap, `members` joins, then `events` mixed events."""
    rng = random.Random(seed)
    creator = f"@creator{seed}:{server}"
    builder = RoomBuilder(
        room_version,
        creator,
        start_ts=1_700_000_000_000 + seed * 10_000_000,
        keep_history=keep_history,
    )
    for event in builder.bootstrap(join_rule="public"):
        yield dict(event.pdu)
    users = [creator]
    for i in range(members):
        user = f"@user{i}:{server}"
        users.append(user)
        yield dict(builder.join(user).pdu)
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]
    for i in range(events):
        kind = rng.choices(kinds, weights)[0]
        if kind == "message":
            sender = rng.choice(users)
            event = builder.message(sender, f"message {i}")
        elif kind == "topic":
            event = builder.state_event(creator, "m.room.topic", "", {"topic": f"topic {i}"})
        elif kind == "name":
            event = builder.state_event(creator, "m.room.name", "", {"name": f"room {i}"})
        else:
            user = rng.choice(users)
            event = builder.join(user, content={"displayname": f"{user} #{i}"})
        yield dict(event.pdu)
