"""Inputs in hand for the scheduler's unit tests (worker.runner.fairness): real nats-py
messages, never sent, named by room and number."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from worker.pipeline import InboundMessage
from worker.runner.fairness import InHand

#: The client the messages belong to (never connected: nothing is acked).
CLIENT = NATS()


def in_hand(*items: tuple[str, int]) -> list[InHand]:
    """(room, number) → inputs in hand, in fetch order; the number names the input."""
    hand = []
    for room, n in items:
        message = Msg(CLIENT, subject=f"rs.input.{room}", data=str(n).encode())
        hand.append(InHand(message, InboundMessage(message.subject, message.data, n), 0.0, 0.0))
    return hand
