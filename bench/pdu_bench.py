"""Per-event cost of the Matrix-rules front door: `parse_pdu` (canonical JSON checks, size
limit, content hash, reference hash / event ID) on realistic events.

`python -m bench.pdu_bench [--events N] [--room-version V]`

The events are those of the linear benchmark room (joins, messages, topic, name and profile
changes), with every tenth given an `unsigned` section and every fifth a formatted message
body of about half a kilobyte, as clients send. Each event is parsed from a fresh copy of
its msgpack body, as the pipeline receives it, and only `parse_pdu` is timed, in CPU
time of this process (best of three), so that other work on the machine counts less.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgpack

from worker.matrix.builder import RoomBuilder
from worker.matrix.pdu import parse_pdu
from worker.matrix.room_versions import get_room_version
from worker.synthetic import linear_room

REPLY_TO = "$Q9Yb2vKkLm1xWvN3aT7pRs0hUcJdEfGiOqZ5yX4w8B6"
FORMATTED = (
    "<p>Meeting notes for <strong>Thursday</strong>: "
    + "see the <a href='https://example.org/notes'>notes</a>, " * 8
    + "and reply in thread ✅ 😀 日本語</p>"
)


def realistic_pdus(room_version: str, count: int) -> list[dict[str, Any]]:
    """`count` events of a linear room, a share of them with `unsigned` or a rich body."""
    members = max(10, count // 20)
    pdus = list(linear_room(room_version, members=members, events=count, seed=7))[:count]
    builder = RoomBuilder(room_version, "@rich:example.org")
    rich = [dict(event.pdu) for event in builder.bootstrap()]
    for _ in range(count // 5):
        content = {
            "msgtype": "m.text",
            "body": FORMATTED,
            "format": "org.matrix.custom.html",
            "formatted_body": FORMATTED,
            "m.relates_to": {"m.in_reply_to": {"event_id": REPLY_TO}},
        }
        rich.append(dict(builder.build("m.room.message", "@rich:example.org", content).pdu))
    for i, pdu in enumerate(pdus):
        if i % 10 == 0:
            pdu["unsigned"] = {"age_ts": 1_700_000_000_000 + i, "transaction_id": f"t{i}"}
        if i % 5 == 0 and rich:
            pdus[i] = rich.pop()
    return pdus


def bench_parse(room_version: str = "10", count: int = 20_000, rounds: int = 3) -> dict[str, Any]:
    """Microseconds per `parse_pdu` (best of `rounds`), and the events' mean size."""
    version = get_room_version(room_version)
    bodies = [msgpack.packb(p, use_bin_type=True) for p in realistic_pdus(room_version, count)]
    best = float("inf")
    for _ in range(rounds):
        pdus = [msgpack.unpackb(b, raw=False) for b in bodies]
        start = time.process_time()
        for pdu in pdus:
            parse_pdu(pdu, version)
        best = min(best, time.process_time() - start)
    return {
        "events": len(bodies),
        "room_version": room_version,
        "microseconds_per_event": best / len(bodies) * 1e6,
        "mean_msgpack_bytes": sum(map(len, bodies)) / len(bodies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--room-version", default="10")
    args = parser.parse_args()
    print(bench_parse(args.room_version, args.events))


if __name__ == "__main__":
    main()
