"""One room with something of everything a query can report, fed to a real worker.

The main line is built with explicit prev events, so events that the worker refuses
(the rejected name change, the soft-failed message, the outlier) stay off it, and the
builder's state after the head is exactly what the worker's current state must be.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from tests.harness.e2e import input_for, publish_inputs, running_worker
from worker.app import Worker
from worker.config import Config
from worker.matrix.builder import RoomBuilder
from worker.matrix.events import Event

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:example.org"
EVE = "@eve:example.org"
VERSION = "10"


@dataclass
class Story:
    builder: RoomBuilder
    #: Inputs in publishing order.
    inputs: list[dict[str, Any]] = field(default_factory=list)
    #: Named events of interest.
    named: dict[str, Event] = field(default_factory=dict)
    head: str = ""

    @property
    def room_id(self) -> str:
        return self.builder.room_id

    def main(self, name: str, make: Callable[..., Event], *args: Any, **kwargs: Any) -> Event:
        """An event on the main line (built on the head; becomes the head)."""
        event = make(*args, prev_events=[self.head], **kwargs) if self.head else make(*args)
        self.head = event.event_id
        return self._add(name, event)

    def side(self, name: str, event: Event, **fields: Any) -> Event:
        """An event off the main line (refused by the worker, or an outlier)."""
        return self._add(name, event, **fields)

    def _add(self, name: str, event: Event, **fields: Any) -> Event:
        self.named[name] = event
        self.inputs.append(input_for(event.pdu, **fields))
        return event

    def id(self, name: str) -> str:
        return self.named[name].event_id

    def current_state(self) -> dict[tuple[str, str], str]:
        return self.builder.state_after(self.head)

    def auth_chain(self, *names: str) -> set[str]:
        """The auth chain as the builder knows it (auth events, recursively)."""
        chain: set[str] = set()
        todo = [a for n in names for a in self.named[n].auth_event_ids]
        while todo:
            event_id = todo.pop()
            if event_id not in chain:
                chain.add(event_id)
                todo.extend(self.builder.event(event_id).auth_event_ids)
        return chain


def build_story() -> Story:
    b = RoomBuilder(VERSION, ALICE)
    s = Story(b)
    s.main("create", b.create)
    s.main("join_alice", b.join, ALICE)
    s.main("power", b.power_levels, ALICE)
    s.main("join_rules", b.join_rules, ALICE, "public")
    s.main("join_bob", b.join, BOB)
    s.main("join_carol", b.join, CAROL)
    s.main("join_dave", b.join, DAVE)
    s.main("topic", b.state_event, ALICE, "m.room.topic", "", {"topic": "first"})
    before_ban = s.head
    # Bob has power 0; state events need 50: rejected against its own auth events.
    s.side(
        "bob_names_room",
        b.state_event(BOB, "m.room.name", "", {"name": "bob's"}, prev_events=[s.head]),
    )
    s.main("ban_dave", b.ban, ALICE, DAVE)
    s.main("carol_leaves", b.leave, CAROL)
    s.main("invite_eve", b.invite, ALICE, EVE)
    s.main("bob_says", b.message, BOB, "hello")
    # Dave speaks on a branch from before his ban: fine there, not in the current state.
    s.side("dave_says", b.message(DAVE, "still here?", prev_events=[before_ban]))
    # A topic change known only as an outlier (stored without state).
    s.side(
        "outlier_topic",
        b.state_event(ALICE, "m.room.topic", "", {"topic": "side"}, prev_events=[before_ban]),
        kind="outlier",
    )
    return s


async def wait_processed(worker: Worker, count: int) -> None:
    counters = worker.pipeline.counters
    await worker.wait_until(lambda: counters.processed + counters.dead_lettered >= count)


@contextlib.asynccontextmanager
async def served_story(config: Config, js: JetStreamContext) -> AsyncIterator[tuple[Worker, Story]]:
    """The worker, running, with the story's events processed."""
    story = build_story()
    async with running_worker(config) as worker:
        await publish_inputs(js, config, story.inputs, room_version=VERSION)
        await wait_processed(worker, len(story.inputs))
        yield worker, story
