"""The pipeline process's C heap gives back what it frees (worker.heap), checked in a
child process whose heap this test alone shapes."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from worker.heap import fix_mmap_threshold, trim

def anon_kib():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("RssAnon:"))

assert fix_mmap_threshold()
# 120 MB of 600-byte strings (above Python's small-object limit: from malloc), then
# every other run of 64 freed (38 KB each): holes inside the heap, which free() alone
# never gives back (it only shortens the heap's top, and the last run is kept).
held = [bytes(600) for _ in range(200_000)]
for start in range(0, len(held), 128):
    held[start : start + 64] = [None] * 64
before = anon_kib()
assert trim()
print(before, anon_kib())
"""


def test_trim_gives_the_heaps_holes_back() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True
    )
    before, after = map(int, result.stdout.split())
    # Half of the 120 MB was freed, in holes of nine pages: the pages wholly inside
    # them (eight of nine) go back to the system.
    assert before - after > 40_000, (before, after)
