"""The C heap's settings (glibc's malloc) for each of a worker's two processes.

Python's own allocator serves objects up to 512 bytes; everything larger (the tables of
the caches' dicts, long strings and bytes, SQLite's page cache, a reply's buffers) comes
from malloc. mallopt(3) sets a threshold for the whole process, and setting either of
the two used here ends glibc's own adjustment of both. The two processes want opposite
things, so each has its own setting:

- The event loop's process (the query service) keeps freed memory for the next large
  reply (`keep_freed_memory`). Every whole-state reply makes a few short-lived buffers
  as big as the reply (the encoded reply, and nats-py's two copies of it with the
  message's protocol line and headers). By default glibc returns the top of its heap to
  the kernel as soon as more than twice its mmap threshold lies free there; with two
  700 kB buffers freed at once it did so after every reply, and the next reply touched
  every page anew: ~470 page faults per 10,000-entry state query, more than half of the
  worker's CPU time for it (2.3 ms of it, against 1.1 ms without; docs/queries.md).
  Blocks under `QUERY_MMAP_THRESHOLD` come from the heap, and up to
  `QUERY_TRIM_THRESHOLD` free at its top is kept: what the worker's RSS may keep beyond
  its live data.
- The pipeline's process gives freed memory back (`fix_mmap_threshold`, `HeapTrimmer`):
  it holds the caches, whose tables are freed and made again as they turn over, and in
  the memory benchmark the heap's free chunks went from 6 to 10 MiB, all resident, while
  the memory in use did not grow. Two of glibc's habits caused it. Its "dynamic mmap
  threshold": once a large block (a cache's dict table of a few MiB) that had its own
  mapping is freed, glibc raises the size above which blocks get their own mapping to
  that block's size, and the next tables come from the heap, where they leave holes
  when freed; a fixed `PIPELINE_MMAP_THRESHOLD` turns that off. And free chunks inside
  the heap go back to the system only by `malloc_trim`, never by `free` (which only
  shortens the heap's top); `HeapTrimmer` calls it now and then, between requests (a
  few milliseconds over a heap of this size).

Other C libraries (musl, macOS) are left as they are: every function here then does
nothing and says so by returning False.
"""

from __future__ import annotations

import ctypes
import platform
import time
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: mallopt(3) parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
#: The query side: blocks from the heap up to 4 MiB, a few times the largest reply one
#: NATS message carries by default (max_payload, 1 MiB; a bigger reply is sent in chunks
#: of it).
QUERY_MMAP_THRESHOLD: Final = 4 << 20
#: The query side: free memory kept at the top of the heap, room for the few
#: reply-sized buffers of several replies in flight, and no more.
QUERY_TRIM_THRESHOLD: Final = 16 << 20
#: The pipeline's side: blocks from this size up get a mapping of their own (glibc's
#: starting value, kept).
PIPELINE_MMAP_THRESHOLD: Final = 128 * 1024
#: Seconds between two trims, at most.
TRIM_INTERVAL: Final = 10.0


def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc with both functions used here."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: Final = _glibc()


def keep_freed_memory() -> bool:
    """The query side's thresholds (see the module docstring); whether they were set."""
    if _LIBC is None:
        return False
    done = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, QUERY_MMAP_THRESHOLD)) and bool(
        _LIBC.mallopt(M_TRIM_THRESHOLD, QUERY_TRIM_THRESHOLD)
    )
    log.debug("heap thresholds set", set=done, mmap=QUERY_MMAP_THRESHOLD, trim=QUERY_TRIM_THRESHOLD)
    return done


def fix_mmap_threshold() -> bool:
    """The pipeline's side: large blocks in mappings of their own for the life of the
    process (see the module docstring); whether it was set."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, PIPELINE_MMAP_THRESHOLD))


def trim() -> bool:
    """Give the heap's free pages back to the system; whether any were."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


class HeapTrimmer:
    """Calls `trim` at most every `interval` seconds, when asked between requests."""

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self._next = time.monotonic() + interval

    def maybe_trim(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            trim()
            self._next = now + self.interval
