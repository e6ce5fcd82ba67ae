"""The path of one input, top to bottom:

    decode → validate → authorize → compute state → store → publish (via the outbox)

`Pipeline.process_batch` runs in the database thread: a fetched batch is one SQLite
transaction, each input inside it a savepoint, and every output an input owes is
written to the outbox in that same transaction. After the commit the caller acks the
inputs and publishes the outbox, so a crash at any point neither loses nor duplicates
an effect: uncommitted work is redelivered, committed work is recognised as a
duplicate, and unpublished outputs are still in the outbox at start-up.

Which module owns what is in docs/architecture.md; this package re-exports the names
the rest of the worker uses.
"""

from worker.pipeline.batch import Counters, Disposition, InboundMessage
from worker.pipeline.outbox import OutboxRow
from worker.pipeline.parking import RETRY_CHUNK, RetryStep
from worker.pipeline.process import Pipeline

__all__ = [
    "RETRY_CHUNK",
    "Counters",
    "Disposition",
    "InboundMessage",
    "OutboxRow",
    "Pipeline",
    "RetryStep",
]
