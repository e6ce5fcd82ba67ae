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

import gc
import sys
import sysconfig
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
