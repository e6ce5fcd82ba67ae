"""Keeping a long-running process's C heap from growing by its holes (glibc's malloc).

Python's own allocator serves objects up to 512 bytes; everything larger (the tables of
the caches' dicts, long strings and bytes, SQLite's page cache) comes from malloc. Two
of glibc's habits let the pipeline's process grow with the run while what it holds
stays within the cache budget (measured in the memory benchmark: the heap's free
chunks went from 6 to 10 MiB, all of it resident, while the memory in use did not
grow):

- the "dynamic mmap threshold": once a large block (a cache's dict table of a few MiB)
  that had its own mapping is freed, glibc raises the size above which blocks get
  their own mapping to that block's size, and the trim threshold to twice it; the
  next tables then come from the heap, and when they are freed in turn they leave
  holes that stay resident. A fixed threshold (`MMAP_THRESHOLD`) turns that off: a
  large block is mapped on its own and given back whole when freed;
- free chunks inside the heap are given back to the system only by `malloc_trim`,
  never by `free` (which only shortens the heap's top). `HeapTrimmer` calls it now
  and then, between requests: it takes a few milliseconds over a heap of this size.

On a C library without these functions (musl) both do nothing.
"""

from __future__ import annotations

import ctypes
import time
from typing import Final

#: mallopt's parameter numbers (malloc.h).
_M_MMAP_THRESHOLD: Final = -3
#: Blocks from this size up get a mapping of their own (glibc's starting value, kept).
MMAP_THRESHOLD: Final = 128 * 1024
#: Seconds between two trims at most once each.
TRIM_INTERVAL: Final = 10.0


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both or neither
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: Final = _libc()


def fix_mmap_threshold() -> bool:
    """Keep large blocks in mappings of their own for the life of the process (see
    the module docstring); False where the C library has no `mallopt`."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


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
