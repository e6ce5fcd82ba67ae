"""Which of the inputs in hand the next transaction takes first: no room waits for another.

The input loop holds up to `consumer.batch_size` fetched inputs. A transaction takes them
in the order given here and commits once `consumer.batch_budget` seconds of work are
spent (worker.pipeline.batch.Stopwatch); what it did not reach waits for the next one.
So that one expensive room (a large forked room resolves state for every event) does not
hold up the cheap ones fetched with it, rooms whose inputs have been cheap go first:

- each room (its input subject) has a measured cost per input, a moving average;
- the costs fall into classes a power of two wide; classes go cheapest first, and a
  room not measured yet goes before all of them (it has shown no cost);
- within a class the inputs keep the order they were fetched in, and a room's inputs
  always do, since they all share the room's class: a room's inputs are processed in
  stream order;
- a room whose oldest input in hand has been passed over for `consumer.max_defer`
  seconds goes before every class, oldest first, so no room starves however busy the
  cheaper ones are.

Nothing here changes what an input does, only when: inputs of different rooms do not
depend on each other.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg

#: Rooms whose cost is remembered; the least recently seen are forgotten first.
ROOM_COSTS = 10_000
#: Weight of the newest measurement in a room's moving average.
SMOOTHING = 0.3
#: Upper bound (seconds) of the cheapest cost class; each next class is twice as wide.
CHEAPEST_CLASS = 0.0005
#: The class of rooms not measured yet: before every measured one.
UNMEASURED = -1


@dataclass(frozen=True, slots=True)
class InHand:
    """A fetched input not processed yet, and when it was fetched (monotonic seconds)."""

    message: Msg
    fetched_at: float

    @property
    def subject(self) -> str:
        return self.message.subject


def cost_class(seconds: float | None) -> int:
    """The class of a room that costs `seconds` per input: 0 up to CHEAPEST_CLASS, then
    one more for each doubling; UNMEASURED if the room has no measurement."""
    if seconds is None:
        return UNMEASURED
    if seconds <= CHEAPEST_CLASS:
        return 0
    return math.ceil(math.log2(seconds / CHEAPEST_CLASS))


class RoomCosts:
    """Each room's measured cost per input (seconds), for the rooms seen lately."""

    def __init__(self, capacity: int = ROOM_COSTS) -> None:
        self._capacity = capacity
        self._costs: OrderedDict[str, float] = OrderedDict()

    def get(self, subject: str) -> float | None:
        return self._costs.get(subject)

    def record(self, subject: str, seconds: float) -> None:
        """Fold one input's time into its room's average."""
        old = self._costs.pop(subject, None)
        self._costs[subject] = seconds if old is None else old + SMOOTHING * (seconds - old)
        if len(self._costs) > self._capacity:
            self._costs.popitem(last=False)


class Scheduler:
    """Orders the inputs in hand for the next transaction (see the module docstring)."""

    def __init__(self, max_defer: float) -> None:
        self.max_defer = max_defer
        self.costs = RoomCosts()

    def record(self, done: Sequence[InHand], laps: Sequence[float]) -> None:
        """What each processed input took, in the order they were processed."""
        for item, seconds in zip(done, laps, strict=False):
            self.costs.record(item.subject, seconds)

    def order(self, in_hand: Sequence[InHand], now: float) -> list[InHand]:
        """`in_hand` (in fetch order) in the order the next transaction should take it."""
        oldest: dict[str, float] = {}
        for item in in_hand:
            oldest.setdefault(item.subject, item.fetched_at)
        keys: dict[str, tuple[int, float]] = {}
        for subject, fetched_at in oldest.items():
            if now - fetched_at >= self.max_defer:
                # Overdue: before every class, the longest waiting first.
                keys[subject] = (UNMEASURED - 1, fetched_at)
            else:
                keys[subject] = (cost_class(self.costs.get(subject)), 0.0)
        # sorted() is stable: inputs with equal keys (a room's, among others) keep their
        # fetch order.
        return sorted(in_hand, key=lambda item: keys[item.subject])
