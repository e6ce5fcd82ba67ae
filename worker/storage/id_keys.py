"""Event IDs as 64-bit keys, for finding events by ID through a small index.

`events` is found by event ID through an index on `id_key`, a 64-bit integer derived
from the ID, not through an index on the ID itself (schema version 5). Both are B-trees
of random keys, so every stored event writes a leaf of one at a random place; but an
integer entry is about a quarter the size of a ~45-character ID's, so the index has a
quarter of the leaves and a batch of events shares more of them: fewer pages written
per commit.

The key is not unique: every lookup asks `id_key = ? AND event_id = ?`, so two IDs of
the same key (by chance, or made on purpose by a server that chooses its IDs, as room
versions 1 and 2 let it) are told apart by the ID, at the cost of reading both rows.
Nothing refuses a second row of the same ID any more: the pipeline checks that an
event is not stored before it inserts it (`worker.pipeline.recipe`), as it always did.

The key of an ID of room version 3 and later (`$` and the base64 of the event's
reference hash, without a colon) is the first eight bytes after its `$`, read as an
integer: 48 random bits, so an ID of a given key costs a server some 2^48 hashes of
event contents to make. An ID of versions 1 and 2 (`$opaque_id:domain`, which the
parser requires, `worker.matrix.pdu`) is chosen by its server, which could put all its
events under one key of their first bytes: its key is BLAKE2b's 8-byte digest of the
ID instead (some twice the cost, paid only in those old rooms), as is that of any
string too short to have eight bytes after its first (an ID asked for that no event
has).
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Collection, Iterable
from hashlib import blake2b
from typing import Final

#: Eight bytes as a big-endian signed integer (at an offset): cheaper than
#: `int.from_bytes`, whose keyword argument alone costs a third of the call.
_INT64: Final = struct.Struct(">q").unpack_from

#: The SQL function of the same name, for queries that take an event ID from a column
#: (a walk along `event_edges`) rather than a parameter; every worker connection has it.
SQL_FUNCTION: Final = "event_key"

#: The condition finding the events of a list of IDs, with `id_keys_params`'s two
#: parameters. Checking the ID against the list as well keeps the answer exact:
#: a row's key is its ID's, so a row whose ID is listed has a listed key.
BY_IDS: Final = (
    "id_key IN (SELECT value FROM json_each(?)) AND event_id IN (SELECT value FROM json_each(?))"
)


#: `BY_IDS` for a table named `e` in a join.
E_BY_IDS: Final = (
    "e.id_key IN (SELECT value FROM json_each(?)) "
    "AND e.event_id IN (SELECT value FROM json_each(?))"
)


def id_key(event_id: str) -> int:
    """The event ID's key: a signed 64-bit integer, as SQLite stores INTEGERs."""
    # `in` on the str: on bytes it first tries the operand as an integer, and raises
    # and clears a TypeError (formatted) every time.
    key: int
    if ":" in event_id or len(event_id) < 9:
        (key,) = _INT64(blake2b(event_id.encode(), digest_size=8).digest())
    else:
        (key,) = _INT64(event_id.encode(), 1)
    return key


def keys_json(event_ids: Iterable[str]) -> str:
    """The IDs' keys as one JSON list, for `id_key IN (SELECT value FROM json_each(?))`
    on the hot path, whose caller keeps only the rows of the IDs it asked for (a row of
    another ID under the same key is rare): cheaper than matching the IDs in SQL too."""
    return json.dumps([id_key(event_id) for event_id in event_ids])


def id_keys_params(event_ids: Collection[str]) -> tuple[str, str]:
    """The two parameters of `BY_IDS`: the IDs' keys and the IDs, as JSON lists."""
    # `worker.storage.connection.json_list`'s form (that module imports this one).
    return keys_json(event_ids), json.dumps(list(event_ids))


def register(conn: sqlite3.Connection) -> None:
    """Give the connection the SQL function `event_key(id)` (the same as `id_key`)."""
    conn.create_function(SQL_FUNCTION, 1, id_key, deterministic=True)
