"""Replies bigger than one NATS message, sent as numbered chunks (docs/queries.md,
"Large replies").

A reply over the server's `max_payload` (1 MiB by default) cannot travel as one
message. A client that says so in its request (header `Roomserver-Accept-Chunks`)
gets the encoded reply cut into chunks, each published to its reply inbox with its
place (`Roomserver-Chunk: i/n`, from 1) and the whole reply's size and CRC-32, so the
client can put them back together and know it has all of them, unchanged. A client
that does not say so still gets `too_large`, as before: the contract's one-message
reply stays the default.

Chunks carry bytes, not parts of the answer: any query's reply can be cut the same
way, and the client decodes the reassembled bytes exactly as it decodes one message.
This module is pure: cutting, and checking what arrives; NATS is the caller's.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from worker.errors import BAD_REPLY, INCOMPLETE_REPLY, RoomserverError

#: Request header: the client reassembles chunked replies (any value but "0").
ACCEPT_CHUNKS_HEADER: Final = "Roomserver-Accept-Chunks"
#: Reply header on each chunk: `index/count`, index from 1.
CHUNK_HEADER: Final = "Roomserver-Chunk"
#: Reply headers on each chunk: the whole reply's size in bytes and its CRC-32 (hex).
REPLY_BYTES_HEADER: Final = "Roomserver-Reply-Bytes"
REPLY_CRC_HEADER: Final = "Roomserver-Reply-Crc32"
#: Room left in each message for the headers: nats-server counts them in max_payload.
HEADER_ROOM: Final = 1024


def accepts_chunks(headers: Mapping[str, str] | None) -> bool:
    """Whether a request's headers say its sender reassembles chunks."""
    value = (headers or {}).get(ACCEPT_CHUNKS_HEADER)
    return value is not None and value.strip() not in ("", "0")


def chunk_size(max_payload: int) -> int:
    """The most reply bytes one chunk carries under the server's `max_payload`."""
    return max(1, max_payload - HEADER_ROOM)


def split(body: bytes, size: int) -> Iterator[tuple[bytes, dict[str, str]]]:
    """`body` cut into chunks of at most `size` bytes, each with its headers."""
    count = max(1, -(-len(body) // size))
    whole = {REPLY_BYTES_HEADER: str(len(body)), REPLY_CRC_HEADER: f"{zlib.crc32(body):08x}"}
    view = memoryview(body)
    for index in range(count):
        part = bytes(view[index * size : (index + 1) * size])
        yield part, {CHUNK_HEADER: f"{index + 1}/{count}", **whole}


def chunk_place(headers: Mapping[str, str] | None) -> tuple[int, int] | None:
    """(index, count) of a chunk, None for a reply in one message; BAD_REPLY when the
    header is malformed."""
    value = (headers or {}).get(CHUNK_HEADER)
    if value is None:
        return None
    try:
        index_text, count_text = value.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise RoomserverError(BAD_REPLY, f"malformed {CHUNK_HEADER} header {value!r}") from None
    if not 1 <= index <= count:
        raise RoomserverError(BAD_REPLY, f"{CHUNK_HEADER} header {value!r} is out of range")
    return index, count


@dataclass
class Reassembly:
    """The chunks of one reply as they arrive, in order (NATS delivers one
    publisher's messages to one subscriber in the order they were sent, so a gap or
    a repeat means a chunk was lost, not that it is late)."""

    #: What the reply answers, for error messages.
    name: str
    count: int
    total: int
    crc: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0

    @classmethod
    def first(cls, name: str, headers: Mapping[str, str], data: bytes) -> Reassembly:
        """Start from the first chunk (index 1), whose headers describe the whole."""
        place = chunk_place(headers)
        assert place is not None
        try:
            total = int(headers[REPLY_BYTES_HEADER])
            crc = int(headers[REPLY_CRC_HEADER], 16)
        except (KeyError, ValueError):
            raise RoomserverError(
                BAD_REPLY,
                f"chunk of the reply to {name} lacks a valid {REPLY_BYTES_HEADER} or "
                f"{REPLY_CRC_HEADER} header",
            ) from None
        reassembly = cls(name, place[1], total, crc)
        reassembly.add(headers, data)
        return reassembly

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.count

    @property
    def expected(self) -> int:
        """The index of the next chunk."""
        return len(self.parts) + 1

    def add(self, headers: Mapping[str, str] | None, data: bytes) -> None:
        """Take the next chunk; BAD_REPLY when it is not the one expected."""
        place = chunk_place(headers)
        if place != (self.expected, self.count):
            got = "a reply in one message" if place is None else f"chunk {place[0]}/{place[1]}"
            raise RoomserverError(
                INCOMPLETE_REPLY,
                f"the reply to {self.name} is incomplete: expected chunk "
                f"{self.expected}/{self.count}, got {got} (a chunk was lost)",
            )
        self.parts.append(data)
        self.size += len(data)
        if self.size > self.total:
            raise RoomserverError(
                BAD_REPLY, f"the chunks of the reply to {self.name} exceed its {self.total} bytes"
            )

    def body(self) -> bytes:
        """The whole reply, checked against its size and CRC-32."""
        body = b"".join(self.parts)
        if len(body) != self.total or zlib.crc32(body) != self.crc:
            raise RoomserverError(
                BAD_REPLY,
                f"the reassembled reply to {self.name} does not match its size and "
                f"checksum ({len(body)} of {self.total} bytes)",
            )
        return body
