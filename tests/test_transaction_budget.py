"""A transaction's budget (worker.runner.fairness.Scheduler.budget / give_way): larger
when it takes every input in hand, since nothing else then waits for its commit, and
back to the base budget, or PATIENCE, as soon as inputs of other rooms come in."""

from __future__ import annotations

from nats.aio.msg import Msg

from tests.harness.hand import CLIENT, in_hand
from worker.runner.fairness import (
    MIN_OFFERED,
    PATIENCE,
    InHand,
    Running,
    Scheduler,
    fits_in_budget,
    next_offered,
)

BASE = 0.02
ALONE = 0.1


def _messages(*rooms: str) -> list[Msg]:
    return [Msg(CLIENT, subject=f"rs.input.{room}") for room in rooms]


def _budget(scheduler: Scheduler, hand: list[InHand]) -> tuple[list[InHand], float]:
    """What the input loop does: order, turn, budget."""
    taken, costlier = scheduler.turn(scheduler.order(hand, now=0.0))
    rooms = len({item.subject for item in hand})
    return taken, scheduler.budget(len(taken), len(hand), rooms, costlier, BASE, ALONE)


def test_the_whole_hand_of_one_room_has_the_larger_budget() -> None:
    """A linear room alone: every input in hand is its; no one waits for its commit."""
    scheduler = Scheduler()
    hand = in_hand(("linear", 1), ("linear", 2), ("linear", 3))
    assert _budget(scheduler, hand) == (hand, ALONE)
    # Rooms of one group, all in hand: the base budget, so that after it the next
    # transaction puts the room that had less of the thread first
    # (tests/e2e/test_isolation.py).
    hand = in_hand(("a", 1), ("b", 1), ("a", 2))
    assert _budget(scheduler, hand) == (hand, BASE)


def test_a_turn_that_leaves_inputs_waiting_keeps_the_base_budget() -> None:
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    hand = in_hand(("big", 1), ("a", 1), ("big", 2))
    taken, budget = _budget(scheduler, hand)
    assert ([i.message.data for i in taken], budget) == ([b"1"], BASE)
    # big's turn while a's inputs wait: PATIENCE, as before.
    hand = in_hand(("big", 1), ("a", 2))
    assert _budget(scheduler, hand)[1] == PATIENCE
    # A ceiling below the base budget never shortens it.
    assert scheduler.budget(3, 3, 1, False, BASE, BASE / 2) == BASE


def _running(scheduler: Scheduler, hand: list[InHand], started: float) -> Running:
    taken, budget = _budget(scheduler, hand)
    return Running(taken, budget, BASE, started, lambda: 1)


def test_its_own_rooms_inputs_fetched_meanwhile_do_not_cut_a_grown_budget() -> None:
    scheduler = Scheduler()
    running = _running(scheduler, in_hand(("linear", 1), ("linear", 2)), started=5.0)
    assert scheduler.give_way(_messages("linear", "linear"), running, now=5.001) is None


def test_another_rooms_input_brings_a_grown_budget_back_to_the_base() -> None:
    """It waits no longer than behind a transaction with the base budget."""
    scheduler = Scheduler()
    running = _running(scheduler, in_hand(("a", 1), ("a", 2)), started=5.0)
    assert running.budget == ALONE
    assert scheduler.give_way(_messages("a", "b"), running, now=5.001) == 5.0 + BASE
    # Past the base budget already: after the input under way.
    assert scheduler.give_way(_messages("b"), running, now=5.5) == 5.5


def test_a_cheaper_rooms_input_interrupts_a_grown_budget_after_patience() -> None:
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    running = _running(scheduler, in_hand(("big", 1), ("big", 2)), started=5.0)
    assert running.budget == ALONE
    assert scheduler.give_way(_messages("small"), running, now=5.001) == 5.001 + PATIENCE


def test_a_base_budget_is_cut_only_by_cheaper_inputs() -> None:
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    hand = in_hand(("a", 1), ("big", 1))
    running = _running(scheduler, hand, started=5.0)
    assert running.budget == BASE
    assert scheduler.give_way(_messages("b"), running, now=5.001) is None


def test_the_rooms_in_hand_give_the_same_order_as_walking_the_hand() -> None:
    """The input loop passes the rooms it counts; the order is the same."""
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    hand = in_hand(("big", 1), ("a", 1), ("big", 2), ("new", 1), ("a", 2))
    walked = scheduler.order(hand, now=0.0)
    assert not scheduler.fetch_order
    assert scheduler.order(hand, now=0.0, rooms={i.subject for i in hand}) == walked
    alone = in_hand(("a", 1), ("a", 2))
    assert scheduler.order(alone, now=0.0, rooms={"rs.input.a"}) == alone
    assert scheduler.fetch_order


def test_a_costlier_turn_that_gave_way_is_offered_what_it_reached() -> None:
    """A costlier room's turn while cheap inputs wait has PATIENCE, by its budget or by
    giving way to the cheap inputs a fetch brings (nearly always, as they keep coming):
    the next one is offered twice what it did, not every input of the room in hand
    (each offered input is parsed and sent to the pipeline's process up front)."""
    assert next_offered(6, costlier=True, gave_way=True, most=256) == MIN_OFFERED
    assert next_offered(40, costlier=True, gave_way=True, most=256) == 80
    assert next_offered(200, costlier=True, gave_way=False, most=256) == 256
    # Any other transaction that gave way says nothing of what fits in its budget.
    assert next_offered(6, costlier=False, gave_way=True, most=256) is None
    assert next_offered(6, costlier=False, gave_way=False, most=256) == MIN_OFFERED


def test_a_cheap_turn_is_offered_what_fits_in_its_budget() -> None:
    """The first group's turn while costlier inputs wait takes the cheap inputs that
    came in since the last one; after a longer wait than usual they are more than twice
    what the last one did. Offered only twice that, the rest would wait for another
    costlier turn: it is offered what fits in its budget at the last one's pace."""
    # 14 inputs in 2 ms of a 20 ms budget: 140 fit (twice 14 would have left more
    # than half of a burst of 60 waiting).
    assert fits_in_budget(14, 0.002, BASE, most=256) == 140
    assert next_offered(14, costlier=False, gave_way=False, most=256) == 28
    # A turn that spent its budget: what it did.
    assert fits_in_budget(100, BASE, BASE, most=256) == 100
    # Within MIN_OFFERED and consumer.batch_size.
    assert fits_in_budget(1, BASE, BASE, most=256) == MIN_OFFERED
    assert fits_in_budget(200, 0.001, BASE, most=256) == 256
    # Nothing measured, or no budget: no bound but the batch size.
    assert fits_in_budget(0, 0.0, BASE, most=256) == 256
    assert fits_in_budget(10, 0.001, None, most=256) == 256


def test_the_patience_is_the_configured_one() -> None:
    """consumer.batch_patience (the input loop's scheduler is built with it) is a
    costlier turn's budget while cheaper inputs wait, and how long after cheaper inputs
    come a transaction busy with a costlier room gives way."""
    scheduler = Scheduler(patience=0.004)
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    hand = in_hand(("small", 1), ("big", 1))
    scheduler.turn(scheduler.order(hand, now=0.0))  # the small room's turn
    taken, budget = _budget(scheduler, hand)
    assert [item.subject for item in taken] == ["rs.input.big"]
    assert budget == 0.004
    running = _running(scheduler, in_hand(("big", 1), ("big", 2)), started=5.0)
    assert scheduler.give_way(_messages("small"), running, now=5.001) == 5.001 + 0.004


def _names(hand: list[InHand]) -> list[tuple[str, bytes]]:
    return [(item.subject.removeprefix("rs.input."), item.message.data) for item in hand]


def test_a_costlier_turn_goes_on_with_the_cheaper_rooms_inputs_in_hand() -> None:
    """Once a costlier room's transaction is done, it goes on with the inputs in hand of
    rooms in a cheaper group, so that they share its commit (Scheduler.follow_ups):
    cheapest first, each room's in fetch order; never one of a room the transaction
    was offered inputs of (those it did not reach stay in hand, and a room's inputs are
    processed in order), nor of a room in its own group. The next turn is then the
    costlier rooms' again: the cheap inputs were served."""
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    scheduler.shares.record("rs.input.big2", 0.300, now=0.0)
    scheduler.shares.record("rs.input.mid", 0.003, now=0.0)
    scheduler.shares.record("rs.input.offered", 0.0, now=0.0)
    hand = in_hand(
        ("big", 1), ("mid", 1), ("a", 1), ("big", 2), ("offered", 1), ("a", 2), ("big2", 1)
    )
    offered = [hand[0], hand[3], hand[4]]
    running = Running(offered, PATIENCE, BASE, 0.0, lambda: 1)
    follow = scheduler.follow_ups(hand, running, done=1, now=0.0)
    assert _names(follow) == [("a", b"1"), ("a", b"2"), ("mid", b"1")]
    # The costlier rooms' turn next, though cheap inputs are in hand.
    taken, costlier = scheduler.turn(scheduler.order(hand, now=0.0))
    assert costlier
    assert {item.subject for item in taken} == {"rs.input.big", "rs.input.big2"}


def test_a_cheap_rooms_turn_goes_on_with_nothing() -> None:
    """A transaction of the first group has no cheaper inputs to go on with."""
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    hand = in_hand(("small", 1), ("big", 1), ("other", 1))
    running = Running(hand[:1], BASE, BASE, 0.0, lambda: 1)
    assert scheduler.follow_ups(hand, running, done=1, now=0.0) == []
