"""`make oracle-sweep`: many random forked rooms through the pipeline and through Synapse.

    python -m tests.oracle.sweep [--rooms 2000] [--jobs 2] [--versions 1,2,...,12] [--seed 0]

Rooms are spread round-robin over the room versions; room i has seed `seed + i`. Each
room runs in a worker process on its own SQLite file in a temporary directory. Prints the
totals (rooms, events, agreeing outcomes / states / extremities / current states, the
documented difference counted) and every failing room with its version and seed; the
first mismatches of each are printed, and re-running one room is

    python -m tests.oracle.sweep --rooms 1 --versions <v> --seed <seed> --verbose

Exits 1 if any room disagrees.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tests.oracle.differential import RoomResult, run_room
from worker.config import LogConfig
from worker.logs import configure_logging

ALL_VERSIONS = [str(v) for v in range(1, 13)]


def _quiet() -> None:
    configure_logging(LogConfig(level="critical"))
    logging.getLogger("synapse").setLevel(logging.CRITICAL)


def _one(job: tuple[str, int, str]) -> RoomResult:
    version, seed, directory = job
    return run_room(version, seed, Path(directory), keep=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--versions", default=",".join(ALL_VERSIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every mismatch")
    parser.add_argument(
        "--tmp",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the rooms' SQLite files go (default: /dev/shm when there is one, so "
        "that commits do not wait for a disk)",
    )
    args = parser.parse_args(argv)
    versions = args.versions.split(",")
    started = time.monotonic()
    totals: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    failures = []
    with tempfile.TemporaryDirectory(prefix="oracle-sweep-", dir=args.tmp) as directory:
        jobs = [(versions[i % len(versions)], args.seed + i, directory) for i in range(args.rooms)]
        with ProcessPoolExecutor(args.jobs, initializer=_quiet) as pool:
            for done, r in enumerate(pool.map(_one, jobs, chunksize=4), 1):
                totals["rooms"] += 1
                for name in (
                    "events",
                    "batches",
                    "outcomes",
                    "before",
                    "after",
                    "extremities",
                    "current",
                    "prunable",
                    "dead_letters",
                ):
                    totals[name] += getattr(r, name)
                outcomes.update(r.by_outcome)
                if not r.agrees:
                    failures.append(r)
                    totals[f"failed v{r.room_version}"] += 1
                if done % 200 == 0:
                    print(
                        f"  {done}/{args.rooms} rooms, {len(failures)} failing",
                        file=sys.stderr,
                        flush=True,
                    )
    elapsed = time.monotonic() - started
    events, batches = totals["events"], totals["batches"]
    print(f"rooms: {totals['rooms']} (versions {','.join(versions)}) in {elapsed:.0f} s")
    print(f"events: {events} ({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))})")
    print(f"outcomes agreeing: {totals['outcomes']}/{events}")
    print(f"states before agreeing: {totals['before']}/{events}")
    print(f"states after agreeing: {totals['after']}/{events}")
    print(f"forward extremities agreeing: {totals['extremities']}/{batches} batches")
    print(f"current states agreeing: {totals['current']}/{batches} batches")
    print(f"dead letters: {totals['dead_letters']}")
    print(
        "documented difference (not compared): Synapse would have pruned extremities "
        f"after {totals['prunable']} events (_prune_extremities)"
    )
    print(f"rooms failing: {len(failures)}")
    for r in failures:
        print(f"  FAIL room version {r.room_version} seed {r.seed}: {len(r.mismatches)} mismatches")
        for line in r.mismatches if args.verbose else r.mismatches[:2]:
            print("    " + line.replace("\n", "\n    "))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
