"""The order in which a transaction takes the inputs in hand (worker.runner.fairness):
cheap rooms first, a room's inputs always in stream order, no room starved."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from worker.runner.fairness import UNMEASURED, InHand, Scheduler, cost_class

CLIENT = NATS()


def _in_hand(*items: tuple[str, int, float]) -> list[InHand]:
    """(room, number, fetched at) → inputs in hand; the number names the input."""
    return [
        InHand(Msg(CLIENT, subject=f"rs.input.{room}", data=str(n).encode()), fetched_at=at)
        for room, n, at in items
    ]


def _names(items: list[InHand]) -> list[str]:
    return [f"{i.subject.rsplit('.', 1)[1]}{i.message.data.decode()}" for i in items]


def test_cost_classes_double() -> None:
    assert cost_class(None) == UNMEASURED
    assert cost_class(0.0001) == cost_class(0.0005) == 0
    assert cost_class(0.0009) == 1
    assert cost_class(0.0011) == 2
    assert cost_class(0.05) > cost_class(0.02) > cost_class(0.002)


def test_cheap_rooms_first_and_each_rooms_inputs_in_order() -> None:
    scheduler = Scheduler(max_defer=1.0)
    scheduler.costs.record("rs.input.big", 0.040)
    scheduler.costs.record("rs.input.a", 0.0004)
    scheduler.costs.record("rs.input.b", 0.0003)
    hand = _in_hand(("big", 1, 0.0), ("a", 1, 0.0), ("big", 2, 0.0), ("b", 1, 0.0), ("a", 2, 0.0))
    # a and b share the cheapest class, so they keep their fetch order between them.
    assert _names(scheduler.order(hand, now=0.1)) == ["a1", "b1", "a2", "big1", "big2"]


def test_unmeasured_rooms_go_first() -> None:
    scheduler = Scheduler(max_defer=1.0)
    scheduler.costs.record("rs.input.a", 0.0001)
    hand = _in_hand(("a", 1, 0.0), ("new", 1, 0.0), ("a", 2, 0.0), ("new", 2, 0.0))
    assert _names(scheduler.order(hand, now=0.0)) == ["new1", "new2", "a1", "a2"]


def test_a_room_passed_over_too_long_goes_first_oldest_first() -> None:
    scheduler = Scheduler(max_defer=1.0)
    scheduler.costs.record("rs.input.big", 0.040)
    scheduler.costs.record("rs.input.huge", 0.080)
    scheduler.costs.record("rs.input.a", 0.0004)
    hand = _in_hand(
        ("huge", 1, 0.5), ("big", 1, 1.0), ("a", 1, 2.0), ("big", 2, 2.0), ("new", 1, 2.0)
    )
    # At 2.2 s huge and big have waited past max_defer: they go first, the longer
    # waiting first, and big's younger input stays right behind its older one.
    assert _names(scheduler.order(hand, now=2.2)) == ["huge1", "big1", "big2", "new1", "a1"]


def test_costs_follow_a_room_that_changes_and_forget_the_oldest_rooms() -> None:
    scheduler = Scheduler(max_defer=1.0)
    done = _in_hand(("r", 1, 0.0))
    scheduler.record(done, [0.040])
    assert cost_class(scheduler.costs.get("rs.input.r")) == cost_class(0.040)
    for _ in range(20):
        scheduler.record(done, [0.0002])
    assert cost_class(scheduler.costs.get("rs.input.r")) == 0

    scheduler.costs = type(scheduler.costs)(capacity=2)
    for room in ("x", "y", "z"):
        scheduler.costs.record(f"rs.input.{room}", 0.001)
    assert scheduler.costs.get("rs.input.x") is None
    assert scheduler.costs.get("rs.input.z") == 0.001
