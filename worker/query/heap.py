"""Keep the C heap's freed memory for the next large reply, instead of giving it back
to the kernel after each one.

Every whole-state reply makes a few short-lived buffers as big as the reply (the
encoded reply, and nats-py's two copies of it with the message's protocol line and
headers). glibc's allocator returns the top of its heap to the kernel as soon as more
than twice its mmap threshold lies free there; with two 700 kB buffers freed at once
it does so after every reply, and the next reply touches every page anew: ~470 page
faults per 10,000-entry state query, more than half of the worker's CPU time for it
(2.3 ms of it, against 1.1 ms without; the warm query's figures in docs/queries.md).

mallopt(3) sets both thresholds for the process (setting either ends glibc's
dynamic adjustment of them, so both are set): blocks under MMAP_THRESHOLD come
from the heap, and up to TRIM_THRESHOLD of free memory at its top is kept. That is
memory the worker has just used and will use again at the next large reply; what it
may keep beyond its live data is bounded by TRIM_THRESHOLD. Other C libraries (musl,
macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: mallopt(3) parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
#: Blocks from the heap: up to 4 MiB, a few times the largest reply one NATS message
#: carries by default (max_payload, 1 MiB; a bigger reply is sent in chunks of it).
MMAP_THRESHOLD: Final = 4 << 20
#: Free memory kept at the top of the heap: room for the few reply-sized buffers of
#: several replies in flight, and no more (what the worker's RSS may keep beyond its
#: live data).
TRIM_THRESHOLD: Final = 16 << 20


def keep_freed_memory() -> bool:
    """Set the allocator's thresholds (glibc only); whether they were set."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("heap thresholds set", set=done, mmap=MMAP_THRESHOLD, trim=TRIM_THRESHOLD)
    return done
