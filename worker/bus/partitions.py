"""Which partition a room belongs to: the same hash NATS applies to the input stream.

The input stream of a partitioned deployment carries a subject transform,
``<prefix>.input.*`` → ``<prefix>.input.{{partition(N,1)}}.{{wildcard(1)}}``, so
nats-server itself files each input under its partition and publishers keep publishing
to ``<prefix>.input.<room token>``. Queries are plain request/reply and get no such
help, so the client computes the partition itself and must agree with the server to the
bit: nats-server's ``partition(N, …)`` is 32-bit FNV-1a over the bytes of the named
wildcard tokens, modulo N (server/subject_transform.go, getHashPartition). A test checks
this function against a real server's transform for many rooms.
"""

from __future__ import annotations

from typing import Final

from worker.bus.subjects import room_token

_FNV32_OFFSET: Final = 0x811C9DC5
_FNV32_PRIME: Final = 0x01000193
_MASK32: Final = 0xFFFFFFFF


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data`` (Go's hash/fnv New32a)."""
    value = _FNV32_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV32_PRIME) & _MASK32
    return value


def partition_of_token(token: str, count: int) -> int:
    """The partition nats-server's ``partition(count, 1)`` gives the subject token."""
    if count < 1:
        raise ValueError(f"a partition count must be at least 1, got {count}")
    return fnv1a_32(token.encode("utf-8")) % count


def partition_of_room(room_id: str, count: int) -> int:
    """The partition that owns ``room_id`` among ``count``: its input subject's token
    is what NATS hashes."""
    return partition_of_token(room_token(room_id), count)
