"""Rewinding the worker's durable consumer to its ack floor.

A room's inputs must be processed in stream order. JetStream redelivers a message that
was delivered but never acknowledged only after `ack_wait`, and meanwhile keeps
delivering the messages after it; so a batch abandoned by a crash, or lost in flight
when the connection dropped, would come back *after* its successors. Rewinding the
consumer to one past its ack floor (nats-server 2.14+, ADR-60) makes delivery resume
at the oldest unacknowledged input instead. Everything after it that was already
committed comes round again and is recognised as a duplicate, which costs time, never
correctness.

Deleting and recreating the consumer would do the same on older servers, but on a
stream with interest retention that deletes the very messages still to be processed,
so older servers get a warning (see `worker.app`) and the ack_wait redelivery instead.
"""

from __future__ import annotations

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

log = structlog.get_logger("worker.bus.rewind")

REWIND_TIMEOUT = 5.0


async def rewind_to_ack_floor(js: JetStreamContext, stream: str, durable: str) -> int | None:
    """Make ``durable`` deliver next the oldest message it has not had acknowledged.

    Returns that message's stream sequence, or None when the consumer does not exist
    (it is then created afresh, from the start of the stream). JetStream and
    connection errors propagate: the caller retries once NATS answers again.
    """
    try:
        reset = await js.reset_consumer(stream, durable, timeout=REWIND_TIMEOUT)
    except NotFoundError:
        return None
    log.info(
        "input consumer rewound to its ack floor", stream=stream, next_sequence=reset.reset_seq
    )
    return reset.reset_seq
