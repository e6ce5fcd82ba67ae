"""NATS subjects of the contract (section 1) and the room token that keys them.

A room ID can hold any character, including NATS separators and wildcards, so it is
carried as URL-safe base64 without padding: lossless, injective, and made only of
characters that are legal in a subject token.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

UNKNOWN_ROOM_TOKEN: Final = "_"
"""Dead-letter token for inputs whose room is not known. Never a valid room token: a
single base64 character cannot encode a whole byte."""

_TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")


def room_token(room_id: str) -> str:
    """The subject token for ``room_id``."""
    return base64.urlsafe_b64encode(room_id.encode("utf-8")).rstrip(b"=").decode("ascii")


def room_id_from_token(token: str) -> str:
    """Invert room_token; ValueError unless ``token`` is exactly what room_token makes.

    Non-canonical spellings (stray bits in the last character, padding, other alphabets)
    are refused so that one room has one token and a subject check cannot be fooled.
    """
    if not _TOKEN_RE.match(token) or len(token) % 4 == 1:
        raise ValueError(f"not a room token: {token!r}")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        room_id = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a room token: {token!r} ({exc})") from None
    if room_token(room_id) != token:
        raise ValueError(f"not a room token: {token!r} (non-canonical encoding)")
    return room_id


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subject builders for one configured prefix."""

    prefix: str = "roomserver"

    @property
    def input_wildcard(self) -> str:
        return f"{self.prefix}.input.>"

    @property
    def output_wildcard(self) -> str:
        return f"{self.prefix}.output.>"

    @property
    def deadletter_wildcard(self) -> str:
        return f"{self.prefix}.deadletter.>"

    @property
    def query_wildcard(self) -> str:
        return f"{self.prefix}.query.*"

    def admin(self, name: str, partition: int | None = None) -> str:
        """Requests to the running worker that change what it does (`retry`); with
        partitions, to the worker of one partition."""
        if not name or not _TOKEN_RE.match(name):
            raise ValueError(f"not an admin request name: {name!r}")
        return f"{self.prefix}.admin.{_partition_part(partition)}{name}"

    def input(self, room_id: str) -> str:
        return f"{self.prefix}.input.{room_token(room_id)}"

    def output(self, room_id: str) -> str:
        return f"{self.prefix}.output.{room_token(room_id)}"

    def deadletter(self, room_id: str | None) -> str:
        token = UNKNOWN_ROOM_TOKEN if room_id is None else room_token(room_id)
        return f"{self.prefix}.deadletter.{token}"

    def query(self, name: str, partition: int | None = None) -> str:
        """A query's subject; with partitions, the one partition K's worker answers
        (``<prefix>.query.K.<name>``)."""
        if not name or not _TOKEN_RE.match(name):
            raise ValueError(f"not a query name: {name!r}")
        return f"{self.prefix}.query.{_partition_part(partition)}{name}"

    @property
    def input_any(self) -> str:
        """The input stream's subjects when partitioned: one token, the room's. The
        stream's transform files each under its partition; nothing else is accepted,
        so no publisher can pick a partition by hand."""
        return f"{self.prefix}.input.*"

    def input_transform_destination(self, count: int) -> str:
        """Where nats-server stores ``<prefix>.input.<room token>`` with ``count``
        partitions: ``<prefix>.input.<K>.<room token>``, K the FNV-1a hash of the token
        (worker.bus.partitions computes the same)."""
        return f"{self.prefix}.input.{{{{partition({count},1)}}}}.{{{{wildcard(1)}}}}"

    def partition_inputs(self, partition: int) -> str:
        """The filter of partition ``partition``'s durable consumer."""
        return f"{self.prefix}.input.{partition}.*"

    def input_token(self, subject: str) -> str:
        """The room token of an input subject, unchecked; ValueError for other subjects.

        Both shapes are input subjects: ``<prefix>.input.<token>`` as published, and
        ``<prefix>.input.<K>.<token>`` as a partitioned stream stores it (a room token
        never holds a dot, so the two cannot be confused). Comparing this with
        room_token(event room) is cheaper than decoding it.
        """
        head = f"{self.prefix}.input."
        if not subject.startswith(head):
            raise ValueError(f"not an input subject under {self.prefix!r}: {subject!r}")
        rest = subject[len(head) :]
        if "." in rest:
            partition, _, rest = rest.partition(".")
            if not partition.isdigit() or "." in rest:
                raise ValueError(f"not an input subject under {self.prefix!r}: {subject!r}")
        return rest

    def original_input(self, subject: str) -> str:
        """The subject an input was published to: a partitioned stream's
        ``<prefix>.input.<K>.<token>`` without its partition (what a dead letter keeps,
        and what a replay publishes to). ValueError for other subjects."""
        return f"{self.prefix}.input.{self.input_token(subject)}"

    def room_of_input(self, subject: str) -> str:
        """The room ID an input subject names; ValueError if the subject or token is bad."""
        return room_id_from_token(self.input_token(subject))

    def query_name(self, subject: str) -> str:
        """The query name of a query subject (partitioned or not); ValueError for other
        subjects."""
        head = f"{self.prefix}.query."
        name = subject[len(head) :]
        if "." in name:
            partition, _, name = name.partition(".")
            if not partition.isdigit():
                name = ""
        if not subject.startswith(head) or not name or "." in name:
            raise ValueError(f"not a query subject under {self.prefix!r}: {subject!r}")
        return name


def _partition_part(partition: int | None) -> str:
    """The ``K.`` a partitioned subject carries after its kind; empty without partitions."""
    if partition is None:
        return ""
    if partition < 0:
        raise ValueError(f"a partition is a number from 0, got {partition}")
    return f"{partition}."
