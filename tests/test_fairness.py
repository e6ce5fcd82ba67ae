"""The order in which a transaction takes the inputs in hand (worker.runner.fairness):
rooms that had little of the thread lately first, a room's inputs always in stream
order, a busy room slowed but never starved."""

from __future__ import annotations

from tests.harness.hand import in_hand
from worker.runner.fairness import (
    FORGOTTEN_SHARE,
    HALF_LIFE,
    InHand,
    RoomShares,
    Scheduler,
    share_class,
)


def _names(items: list[InHand]) -> list[str]:
    return [f"{i.subject.rsplit('.', 1)[1]}{i.message.data.decode()}" for i in items]


def test_share_classes_double() -> None:
    assert share_class(0.0) == share_class(0.0005) == share_class(0.001) == 0
    assert share_class(0.0019) == 1
    assert share_class(0.0021) == 2
    assert share_class(0.5) > share_class(0.05) > share_class(0.005)


def test_busy_room_after_the_others_each_rooms_inputs_in_order() -> None:
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    scheduler.shares.record("rs.input.a", 0.0004, now=0.0)
    hand = in_hand(("big", 1), ("a", 1), ("big", 2), ("new", 1), ("a", 2))
    # a and the unseen room share the smallest class: they keep their fetch order.
    assert _names(scheduler.order(hand, now=0.0)) == ["a1", "new1", "a2", "big1", "big2"]


def test_shares_decay_so_a_waiting_room_is_not_starved() -> None:
    shares = RoomShares()
    shares.record("rs.input.big", 0.400, now=0.0)
    assert shares.get("rs.input.big", now=HALF_LIFE) == 0.200
    scheduler = Scheduler(shares)
    hand = in_hand(("big", 1), ("a", 1))
    assert _names(scheduler.order(hand, now=0.0)) == ["a1", "big1"]
    # After nine half-lives 400 ms are under a millisecond: big is back in the first
    # class, and fetch order decides.
    assert _names(scheduler.order(hand, now=9 * HALF_LIFE)) == ["big1", "a1"]


def test_recorded_laps_add_up_and_the_oldest_rooms_are_forgotten() -> None:
    scheduler = Scheduler()
    done = in_hand(("r", 1), ("r", 2), ("s", 1))
    scheduler.record(done, [0.010, 0.020, 0.001], now=5.0)
    assert abs(scheduler.shares.get("rs.input.r", now=5.0) - 0.030) < 1e-12
    assert scheduler.shares.get("rs.input.s", now=5.0) == 0.001

    shares = RoomShares(capacity=2)
    for room in ("x", "y", "z"):
        shares.record(f"rs.input.{room}", 0.005, now=0.0)
    assert shares.get("rs.input.x", now=0.0) == 0.0
    assert shares.get("rs.input.z", now=0.0) == 0.005


def test_rooms_whose_share_decayed_to_nothing_are_forgotten() -> None:
    """A worker that has seen 10,000 rooms remembers the shares of the rooms served
    lately, not of every room (issue 11: memory that stays flat)."""
    shares = RoomShares()
    # A busy room's share (1 s) is under FORGOTTEN_SHARE after 20 half-lives.
    shares.record("rs.input.busy", 1.0, now=0.0)
    for i in range(1_000):
        shares.record(f"rs.input.r{i}", 0.003, now=i * HALF_LIFE / 10)
    assert shares.get("rs.input.busy", now=100 * HALF_LIFE) == 0.0
    # Each room's share decays under FORGOTTEN_SHARE in 11.6 half-lives (116 records).
    assert 110 <= len(shares) <= 120
    last = 999 * HALF_LIFE / 10
    assert shares.get("rs.input.r999", now=last) == 0.003
    assert share_class(shares.get("rs.input.r900", now=last)) == 0
    assert shares.get("rs.input.r800", now=last) == 0.0
    assert 0.003 * 0.5**12 < FORGOTTEN_SHARE < 0.003 * 0.5**11


def test_first_group_counts_the_leading_inputs_of_the_cheap_rooms() -> None:
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    # b's share is four times a's: another class, the same group.
    scheduler.shares.record("rs.input.a", 0.002, now=0.0)
    scheduler.shares.record("rs.input.b", 0.008, now=0.0)
    hand = in_hand(("big", 1), ("b", 1), ("a", 1), ("big", 2), ("new", 1))
    ordered = scheduler.order(hand, now=0.0)
    assert _names(ordered) == ["new1", "a1", "b1", "big1", "big2"]
    # new (class 0), a (1) and b (3) are within three classes of the first; big is not.
    assert scheduler.first_group(ordered) == 3
    assert scheduler.first_group(ordered[3:]) == 2
    assert scheduler.first_group([]) == 0


def test_a_transaction_takes_one_group_and_the_groups_take_turns() -> None:
    """Cheap rooms' outputs are published when their transaction commits: a costlier
    room's input taken after them in the same transaction would hold them back. So a
    transaction takes one group; while both wait, the groups alternate, and the costlier
    group's transaction is told cheap inputs wait (its budget is then PATIENCE)."""
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    hand = in_hand(("big", 1), ("a", 1), ("big", 2), ("b", 1))

    taken, waiting = scheduler.turn(scheduler.order(hand, now=0.0))
    assert (_names(taken), waiting) == (["a1", "b1"], False)

    # a and b are done; a2 and a3 came in meanwhile: big's turn.
    cheap = in_hand(("a", 2), ("a", 3))
    hand = [*in_hand(("big", 1), ("big", 2)), *cheap]
    taken, waiting = scheduler.turn(scheduler.order(hand, now=0.0))
    assert (_names(taken), waiting) == (["big1", "big2"], True)

    # big1 is done: the cheap rooms again, then big.
    hand = [*in_hand(("big", 2)), *cheap]
    assert _names(scheduler.turn(scheduler.order(hand, now=0.0))[0]) == ["a2", "a3"]
    assert _names(scheduler.turn(scheduler.order(hand[:1], now=0.0))[0]) == ["big2"]


def test_one_group_in_hand_is_taken_whole() -> None:
    scheduler = Scheduler()
    scheduler.shares.record("rs.input.big", 0.400, now=0.0)
    hand = in_hand(("a", 1), ("new", 1), ("a", 2))
    for _ in range(2):
        taken, waiting = scheduler.turn(scheduler.order(hand, now=0.0))
        assert (_names(taken), waiting) == (["a1", "new1", "a2"], False)
    alone = in_hand(("big", 1), ("big", 2))
    assert scheduler.turn(scheduler.order(alone, now=0.0)) == (alone, False)
    assert scheduler.turn([]) == ([], False)
