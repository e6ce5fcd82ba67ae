"""Which of the inputs in hand the next transaction takes first: no room waits for another.

The input loop holds fetched inputs in hand. A transaction takes them in the order given
here and commits once `consumer.batch_budget` seconds of work are spent
(worker.pipeline.batch.Stopwatch); what it did not reach waits for the next one. So that
one busy, expensive room (a large forked room resolves state for every event) does not
hold up the others fetched with it, the thread is shared out by the time each room has
had lately, as a processor-sharing scheduler does:

- each room (its input subject) has its recent share: the seconds its inputs took,
  halved every `HALF_LIFE` seconds;
- the shares fall into classes a power of two wide, everything under `SMALLEST_SHARE`
  (rooms not seen lately included) in the first; classes go smallest first;
- within a class the inputs keep the order they were fetched in, and a room's inputs
  always do, since they all share the room's class: a room's inputs are processed in
  stream order.

A room that takes a large part of the thread goes after the rooms that take little. The
outputs of a transaction are published when it commits, so inputs of the cheap rooms
would still wait for a costlier room's taken after them in the same transaction; a
transaction therefore takes the inputs of one group only (`Scheduler.turn`): the first
group (rooms within GROUP_SPAN classes of the cheapest in hand), or the rest, in turns
while both wait. A turn of the costlier rooms while cheaper inputs wait has the
patience (consumer.batch_patience, PATIENCE by default) for its budget, and one that a
fetch brings cheaper inputs to gives way that much later (commits after the input under
way: the input loop's interrupt).

The cheap inputs do not then wait for the costlier turn's commit and for one of their
own: when the costlier turn is done (its budget spent, or given way), the same
transaction goes on with them (`Scheduler.follow_ups`: worker.pipeline.process.FollowUps)
and they share its commit; the next turn is the costlier rooms' again, and the cheap
inputs that came meanwhile follow it in turn. A small room's input waits for about the
patience, one input of the busy room, its own processing and one commit.

The busy room is slowed, never starved: it has a turn in every transaction while cheap
inputs keep coming, and while it waits its share decays, until it reaches the class of
the rooms served before it and its inputs go in fetch order with theirs.

Nothing here changes what an input does, only when: inputs of different rooms do not
depend on each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from worker.pipeline import InboundMessage
from worker.storage.lru import LruByWeight

#: Rooms whose share is remembered; the least recently served are forgotten first (a
#: forgotten room has no share, as if it had not been seen).
ROOM_SHARES = 10_000
#: Seconds in which a room's share halves.
HALF_LIFE = 1.0
#: Upper bound (seconds) of the smallest share class; each next class is twice as wide.
SMALLEST_SHARE = 0.001
#: A share that has decayed below this (seconds) is forgotten even while under
#: ROOM_SHARES: it is 1/1,024 of the smallest class's bound, so forgetting it changes no
#: room's class, and the shares kept are those of the rooms served in the last ~20
#: half-lives rather than the last ROOM_SHARES rooms (~350 bytes each: 3 MiB of a
#: process that saw 10,000 rooms, kept for nothing).
FORGOTTEN_SHARE = SMALLEST_SHARE / 1024
#: Classes above the first that still count as its group (see `Scheduler.first_group`).
GROUP_SPAN = 3
#: Seconds of work a costlier room's transaction does, at most, while cheaper rooms'
#: inputs wait: its budget if they wait when it starts, and how long after a fetch
#: brings some it gives way (commits after the input under way). A few of the costlier
#: room's inputs share the cost of a commit, and a cheap input waits for about this,
#: one costlier input and the commit they share (`Scheduler.follow_ups`). The default
#: of consumer.batch_patience (the `Scheduler`'s patience): less makes cheap inputs wait
#: less and the costlier room commit more often, so that it does less per second.
PATIENCE = 0.010
#: Fewest inputs offered to a transaction with a budget (`next_offered`).
MIN_OFFERED = 16


@dataclass(slots=True)
class InHand:
    """A fetched input not processed yet: the message, what the pipeline takes of it,
    when it was fetched, and when JetStream was last told it is in progress (monotonic
    seconds)."""

    message: Msg
    inbound: InboundMessage
    fetched_at: float
    touched_at: float
    #: The input's room (its subject): a plain attribute, read for every input in hand
    #: when it is ordered.
    subject: str = field(init=False)

    def __post_init__(self) -> None:
        self.subject = self.message.subject


@dataclass(slots=True)
class Running:
    """The transaction under way, as the input loop sees it."""

    #: The inputs offered to it, in the order it takes them.
    offered: list[InHand]
    #: Its budget and the base one (consumer.batch_budget), seconds.
    budget: float
    base: float
    #: When it started (monotonic seconds).
    started: float
    #: How many inputs it has done so far (read from the stopwatch's laps).
    reached: Callable[[], int]
    #: The rooms of `offered` if its budget is grown (see `Scheduler.give_way`).
    rooms: frozenset[str] = field(init=False)
    #: The inputs it was given to go on with once its own were done (`follow_ups`), and
    #: whether it asked for them (then it no longer gives way).
    follow: list[InHand] = field(default_factory=list)
    followed: bool = False

    def __post_init__(self) -> None:
        grown = self.budget > self.base
        self.rooms = frozenset(item.subject for item in self.offered) if grown else frozenset()

    def current(self) -> str:
        """The room of the input under way (the last one once all are done)."""
        return self.offered[min(self.reached(), len(self.offered) - 1)].subject


def next_offered(done: int, costlier: bool, gave_way: bool, most: int) -> int | None:
    """How many inputs to offer the next transaction of the same kind (a costlier
    group's turn while cheaper inputs wait, or any other), after one that did `done`
    inputs; None: as many as before. Twice what it did, within MIN_OFFERED and `most`
    (consumer.batch_size): the work a batch does up front for every input it is offered
    (parsing it, sending it to the pipeline's process) is then not done for many it
    will not reach.

    A transaction that gave way says nothing of how many inputs fit in its budget,
    except a costlier turn's: its time is the patience either way, by its budget or by
    giving way (and it nearly always gives way: cheaper inputs keep coming)."""
    if gave_way and not costlier:
        return None
    return min(most, max(MIN_OFFERED, 2 * done))


def fits_in_budget(done: int, spent: float, budget: float | None, most: int) -> int:
    """How many inputs the first group's turn while costlier inputs wait may be offered
    at least (besides `next_offered`), after the last such turn, which did not give
    way, did `done` inputs in `spent` seconds of its `budget`: as many as fit in that
    budget at the pace it went, within MIN_OFFERED and `most` (consumer.batch_size).

    Such a turn takes the cheap inputs that came in since the last one. After a longer
    wait than usual (a slow commit, a pipeline process short of a processor) they are
    more than twice what the last one did, and any it is not offered wait for another
    costlier turn and two more commits (at 300 small inputs a second beside the busy
    forked room of bench/isolation_bench.py, on a loaded machine, one in six did)."""
    if budget is None or spent <= 0.0:
        return most
    return min(most, max(MIN_OFFERED, math.ceil(done * budget / spent)))


def share_class(seconds: float) -> int:
    """The class of a room whose recent share is `seconds`: 0 up to SMALLEST_SHARE, then
    one more for each doubling."""
    if seconds <= SMALLEST_SHARE:
        return 0
    return math.ceil(math.log2(seconds / SMALLEST_SHARE))


class RoomShares:
    """Each room's recent share of the database thread (seconds, decaying)."""

    def __init__(self, half_life: float = HALF_LIFE, capacity: int = ROOM_SHARES) -> None:
        self._half_life = half_life
        #: subject → (seconds, as of when), least recently served first.
        self._shares: LruByWeight[str, tuple[float, float]] = LruByWeight(capacity)

    def get(self, subject: str, now: float) -> float:
        share = self._shares.view().get(subject)  # reading is not serving
        if share is None:
            return 0.0
        return self._decayed(share, now)

    def _decayed(self, share: tuple[float, float], now: float) -> float:
        """A share's seconds as of `now`, halved every half-life since it was recorded."""
        seconds, when = share
        decay: float = 0.5 ** (max(0.0, now - when) / self._half_life)
        return seconds * decay

    def __len__(self) -> int:
        return len(self._shares)

    def record(self, subject: str, seconds: float, now: float) -> None:
        """Add the time one input of the room took, and forget up to two rooms whose
        share has decayed to nothing (`FORGOTTEN_SHARE`): at most one room is added
        a record, so the rooms remembered are the ones served lately."""
        total = self.get(subject, now) + seconds
        self._shares.put(subject, (total, now))
        for _ in range(2):
            oldest = self._shares.oldest()
            if oldest is None:
                return
            room, share = oldest
            if self._decayed(share, now) >= FORGOTTEN_SHARE:
                return
            self._shares.discard(room)


class Scheduler:
    """Orders the inputs in hand for the next transaction (see the module docstring)."""

    def __init__(self, shares: RoomShares | None = None, patience: float = PATIENCE) -> None:
        self.shares = shares if shares is not None else RoomShares()
        #: Seconds of work a costlier turn does while cheaper inputs wait (PATIENCE).
        self.patience = patience
        #: Each room's class as of the last `order`.
        self._classes: dict[str, int] = {}
        #: Whether the first group was served last while costlier inputs waited: by the
        #: last `turn`, or as the follow-ups of a costlier one (`follow_ups`).
        self._cheap_turn = False
        #: Whether the last `order` kept the fetch order (one class in hand).
        self.fetch_order = True

    def cheaper(self, messages: Sequence[Msg], subject: str, now: float) -> bool:
        """Whether any of `messages` is of a room in a group cheaper than `subject`'s."""
        current = share_class(self.shares.get(subject, now))
        if current <= GROUP_SPAN:
            # No group is cheaper than the first one.
            return False
        # Each room once: a fetch brings up to consumer.batch_size inputs, of few rooms.
        rooms = {m.subject for m in messages}
        return any(share_class(self.shares.get(room, now)) + GROUP_SPAN < current for room in rooms)

    def first_group(self, ordered: Sequence[InHand]) -> int:
        """How many of `ordered` (as `order` gave it) lead it in the first group: rooms
        whose share is at most GROUP_SPAN classes above the first one's (small rooms'
        shares vary by a few times, a busy room's is hundreds of times theirs)."""
        if not ordered:
            return 0
        classes = self._classes
        last = classes[ordered[0].subject] + GROUP_SPAN
        if classes[ordered[-1].subject] <= last:
            # `ordered` goes cheapest first: all of it is in the first group.
            return len(ordered)
        for count, item in enumerate(ordered):
            if self._classes[item.subject] > last:
                return count
        return len(ordered)

    def turn(self, ordered: Sequence[InHand]) -> tuple[list[InHand], bool]:
        """The inputs of `ordered` (as `order` gave it) the next transaction takes, and
        whether cheaper inputs are left waiting (its budget is then the patience).

        One group only: the first group's inputs, or, if they were served last while
        costlier inputs waited (in their own turn or following a costlier one), the
        costlier inputs. Each room's inputs are in one group, so they keep their order;
        a costlier room gets every other turn at least, so it is never starved."""
        first = self.first_group(ordered)
        if first == len(ordered):
            self._cheap_turn = False
            return list(ordered), False
        if self._cheap_turn:
            self._cheap_turn = False
            return list(ordered[first:]), True
        self._cheap_turn = True
        return list(ordered[:first]), False

    def budget(
        self, taken: int, in_hand: int, rooms: int, costlier: bool, base: float, alone: float
    ) -> float:
        """The budget of a transaction taking `taken` of the `in_hand` inputs, which are
        of `rooms` rooms (`costlier`: `turn`'s second answer): the patience for a
        costlier turn while cheaper inputs wait; `alone` (if larger than `base`) when it
        takes every input in hand and they are all of one room, since no other room's
        input then waits for its commit, and more inputs share the cost of a commit; `base`
        otherwise (inputs of several rooms in one transaction: a commit after `base`
        lets the next transaction put the room that had less of the thread first).
        Inputs fetched while it runs cut it short (`give_way`)."""
        if costlier:
            return min(base, self.patience)
        if taken == in_hand and rooms == 1:
            return max(base, alone)
        return base

    def give_way(self, fetched: Sequence[Msg], running: Running, now: float) -> float | None:
        """When (monotonic seconds) the transaction `running` should give way, now that
        a fetch brought `fetched`; None: not before its budget is spent.

        Inputs of a cheaper group wait the patience. Inputs of other rooms of its group
        wait for what a transaction with the base budget would have done: a budget
        grown because the hand held nothing else (`budget`) does not apply once
        something else waits. Inputs of its own rooms wait for it in any case (they are
        processed in stream order)."""
        if self.cheaper(fetched, running.current(), now):
            return now + self.patience
        if running.budget > running.base and any(m.subject not in running.rooms for m in fetched):
            return max(now, running.started + running.base)
        return None

    def follow_ups(
        self, in_hand: Sequence[InHand], running: Running, done: int, now: float
    ) -> list[InHand]:
        """The inputs of `in_hand` (in fetch order) the transaction `running`, having
        done `done` of its inputs, goes on with before it commits: those of rooms in a
        group cheaper than its last input's room, in the order `order` would give, and
        none of a room any of its inputs is of (those it did not reach stay in hand, and
        a room's inputs are processed in stream order). Each room's inputs are all taken
        or none, in fetch order, so a first part of this keeps them in order too.

        Once they are taken, the next turn is the costlier rooms' again (`turn`): the
        cheap inputs were served by this one."""
        offered = running.offered
        current = share_class(
            self.shares.get(offered[max(0, min(done, len(offered)) - 1)].subject, now)
        )
        if current <= GROUP_SPAN:
            return []
        taken = {item.subject for item in offered}
        classes: dict[str, int] = {}
        cheaper = []
        for item in in_hand:
            room = item.subject
            if room in taken:
                continue
            kind = classes.get(room)
            if kind is None:
                kind = classes[room] = share_class(self.shares.get(room, now))
            if kind + GROUP_SPAN < current:
                cheaper.append(item)
        if cheaper:
            self._cheap_turn = True
        # sorted() is stable: a room's inputs keep their fetch order.
        return sorted(cheaper, key=lambda item: classes[item.subject])

    def record(self, done: Sequence[InHand], laps: Sequence[float], now: float) -> None:
        """What each processed input took, in the order they were processed."""
        for item, seconds in zip(done, laps, strict=False):
            self.shares.record(item.subject, seconds, now)

    def order(
        self, in_hand: Sequence[InHand], now: float, rooms: Iterable[str] | None = None
    ) -> list[InHand]:
        """`in_hand` (in fetch order) in the order the next transaction should take it.

        `rooms`, if given, are the rooms of the inputs in hand (the input loop keeps
        count of them as inputs come and go), so that a hand of one class, the usual
        case, is not walked input by input."""
        if rooms is None:
            rooms = {item.subject for item in in_hand}
        shares = self.shares
        self._classes = classes = {
            subject: share_class(shares.get(subject, now)) for subject in rooms
        }
        self.fetch_order = len(set(classes.values())) <= 1
        if self.fetch_order:
            return list(in_hand)
        # sorted() is stable: inputs of one class (a room's among them) keep their fetch
        # order.
        return sorted(in_hand, key=lambda item: classes[item.subject])
