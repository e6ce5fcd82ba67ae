"""Moving what the young generations hold into the oldest one without traversing it.

Both the client (after decoding a large reply) and the pipeline's process (after a
young collection between requests) hold many live objects that the cyclic collector
would otherwise visit again and again: a 10,000-entry state, or the caches' events.
`gc.freeze()` moves every generation's list into the permanent generation and sets the
youngest count to zero; `gc.unfreeze()` moves the permanent generation's list into the
oldest generation. On CPython 3.11 to 3.13 with a GIL both are list splices (constant
time), and the objects moved so are not counted among those the oldest generation
gained from young collections, which is what sets off a full collection (CPython's
`long_lived_pending`): they cost no young collection now and bring the next full one
no nearer. They are still freed by reference counting when dropped, and cycles among
them by the next full collection.

Elsewhere (the free-threaded build marks every object of the heap; 3.14's incremental
collector walks the old generation to freeze it), and in a process that froze objects
of its own (before forking, say: `unfreeze` would undo that), callers do without.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import sysconfig
from collections.abc import Iterator
from typing import Final

#: Whether `gc.freeze()` and `gc.unfreeze()` are list splices (see the module docstring).
FREEZE_IS_CHEAP: Final = (
    sys.implementation.name == "cpython"
    and sys.version_info < (3, 14)
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
)


def can_promote_unscanned() -> bool:
    """Whether `promote_unscanned` is cheap here and undoes nobody's `gc.freeze()`."""
    return FREEZE_IS_CHEAP and gc.get_freeze_count() == 0


def promote_unscanned() -> None:
    """Move everything the young generations hold into the oldest generation, untraversed
    and uncounted towards a full collection (callers check `can_promote_unscanned`)."""
    gc.freeze()
    gc.unfreeze()


def _run_due_middle_collection() -> None:
    """Run now the middle-generation collection that is due, if one is (where the
    young generations cannot be left untraversed: `collector_paused`).

    The collection the collector makes when it is back on (the decode left it far
    over its youngest threshold) is of the oldest generation that is due. When that
    is the middle one, the reply's objects, alive in the caller's hands, survive it
    and move to the oldest generation, where they count towards a full collection of
    the whole heap. Run before the decode, the same collection finds only what was
    already there, and the one after the decode is of the youngest generation alone.
    """
    counts, thresholds = gc.get_count(), gc.get_threshold()
    if thresholds[1] and counts[1] >= thresholds[1]:
        gc.collect(1)


def _empty_young_generations() -> None:
    """Collect the two young generations, so that what is in them before a decode is
    either freed or promoted with the collector's own bookkeeping; afterwards they hold
    only what the decode makes. Their size is bounded by the thresholds (about 700
    and 10 × 700 objects), so this costs 0.02–0.15 ms, against 0.4–0.9 ms for the
    young collection that would otherwise traverse a 10,000-entry state."""
    gc.collect(1)


@contextlib.contextmanager
def collector_paused(paused: bool = True) -> Iterator[None]:
    """Run the block without cyclic garbage collection (when `paused` and the
    collector is on), and leave what it made out of the young generations.

    Decoding makes only acyclic objects, so nothing is missed. Without this, a
    10,000-entry state set off some 28 collections while it was decoded, and with the
    collector paused still one young collection afterwards over all of its 10,000
    entries; and when that collection was of the middle generation (one reply in
    eleven), it moved the entries into the oldest generation, counted towards a full
    collection of the whole heap (the warm state query's tail). Now the young
    generations are emptied first and what the block made is moved to the oldest
    generation untraversed and uncounted (`worker.collector`); where that is not cheap
    or would undo the caller's own `gc.freeze()`, a middle collection that is due runs
    first, so that the one after is young only (`_run_due_middle_collection`). No await may happen
    inside (other coroutines would run unpaused anyway, but they should not pay for a
    pause they did not ask for)."""
    if not paused or not gc.isenabled():
        yield
        return
    cheap = can_promote_unscanned()
    if cheap:
        _empty_young_generations()
    else:
        _run_due_middle_collection()
    gc.disable()
    try:
        yield
    finally:
        if cheap:
            promote_unscanned()
        gc.enable()
