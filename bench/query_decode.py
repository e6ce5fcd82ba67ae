"""Instructions the client spends on a whole 10,000-entry state: decoding the worker's
grouped reply into a `State` and freeing it, and what using the state adds.

`python -m bench.query_decode [--entries N] [--use value|entries|iterate|as_map]
[--calls K]` runs it under callgrind twice (one call, then 1 + K calls) and prints the
instructions per call, the difference over K: deterministic, unlike the wall and CPU
times of `bench.query_bench` on a shared machine. The reply is the one a worker sends
for a room like `bench.query_bench`'s (create, the creator's join, power levels, join
rules, then joins; event IDs of room version 10's 44 characters), decoded by
`worker.client.replies.read_reply` as the client's `state()` does. What each `--use`
counts besides decoding and freeing:

- `value`: nothing: the state as `state()` returns it;
- `entries`: `state.entries`, every entry a StateEntry in a list;
- `iterate`: every entry visited as a StateEntry (`iter_entries()`, where there is one)
  with its three fields read;
- `read_all`: every entry's three fields read from the columns (`by_type`), no
  StateEntry made (with an older client: from `entries`);
- `as_map`: `state.as_map()`, (type, state key) → event ID.

Run with `PYTHONPATH` at another checkout to count that code's client the same way.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from worker.client.replies import read_reply
from worker.query.schema import GROUPED_FIELD, TAG_FIELD, State

USES = ("value", "entries", "iterate", "read_all", "as_map")


def _event_id(seed: str) -> str:
    """An event ID shaped as room versions 4+ make them: `$` and 43 base64 characters."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def grouped_reply(entries: int) -> bytes:
    """The worker's grouped reply for a room's whole current state of `entries`."""
    members = [f"@user{i}:example.org" for i in range(entries - 4)]
    groups = {
        "m.room.create": [[""], [_event_id("create")]],
        "m.room.member": [
            ["@creator:example.org", *members],
            [_event_id(f"join {i}") for i in range(entries - 3)],
        ],
        "m.room.power_levels": [[""], [_event_id("power")]],
        "m.room.join_rules": [[""], [_event_id("join rules")]],
    }
    reply = {"room_id": "!room:example.org", GROUPED_FIELD: groups, TAG_FIELD: "t.1"}
    packed: bytes = msgpack.packb(reply, use_bin_type=True)
    return packed


def _iterate(state: State) -> None:
    """Visit every entry as a StateEntry, its three fields read."""
    iterate = getattr(state, "iter_entries", None)
    for entry in iterate() if iterate is not None else state.entries:
        entry.type, entry.state_key, entry.event_id  # noqa: B018


def read_every_entry(state: State) -> None:
    """Read every entry's three fields from the grouped form's columns (where the
    client keeps them; from `entries` with a client of before round eight)."""
    by_type = getattr(state, "by_type", None)
    if by_type is None:
        _iterate(state)
        return
    for type_, (state_keys, event_ids) in by_type.items():
        for state_key, event_id in zip(state_keys, event_ids, strict=True):
            type_, state_key, event_id  # noqa: B018


def _user(use: str) -> Callable[[State], Any]:
    return {
        "value": lambda state: None,
        "entries": lambda state: len(state.entries),
        "iterate": _iterate,
        "read_all": read_every_entry,
        "as_map": lambda state: state.as_map(),
    }[use]


def run(entries: int, use: str, calls: int) -> None:
    """Decode the reply, use the state and free it, `calls` times."""
    data = grouped_reply(entries)
    user = _user(use)
    gc.collect()
    for _ in range(calls):
        state = read_reply("state", data, State.from_wire, tuples=True)
        used = user(state)
        del state, used


def _instructions(entries: int, use: str, calls: int, out: Path) -> int:
    """Instructions callgrind counts for a run of `calls` calls (start-up included)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.query_decode",
        "--run",
        "--entries",
        str(entries),
        "--use",
        use,
        "--calls",
        str(calls),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind said no total: {done.stderr[-500:]}")
    return int(found.group(1))


def instructions_per_call(entries: int, use: str, calls: int) -> int:
    """Instructions per decode, use and free: (1 + calls runs − 1 run) / calls."""
    with tempfile.TemporaryDirectory(prefix="query-decode-") as tmp:
        one = _instructions(entries, use, 1, Path(tmp) / "one.out")
        more = _instructions(entries, use, 1 + calls, Path(tmp) / "more.out")
    return (more - one) // calls


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--use", choices=USES, action="append", help="default: each")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    uses = args.use or list(USES)
    if args.run:
        run(args.entries, uses[0], args.calls)
        return
    for use in uses:
        count = instructions_per_call(args.entries, use, args.calls)
        print(f"{use:<8} {count / 1e6:6.2f} M instructions per decode+use+free")


if __name__ == "__main__":
    main()
