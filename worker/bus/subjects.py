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

    def admin(self, name: str) -> str:
        """Requests to the running worker that change what it does (`retry`)."""
        if not name or not _TOKEN_RE.match(name):
            raise ValueError(f"not an admin request name: {name!r}")
        return f"{self.prefix}.admin.{name}"

    def input(self, room_id: str) -> str:
        return f"{self.prefix}.input.{room_token(room_id)}"

    def output(self, room_id: str) -> str:
        return f"{self.prefix}.output.{room_token(room_id)}"

    def deadletter(self, room_id: str | None) -> str:
        token = UNKNOWN_ROOM_TOKEN if room_id is None else room_token(room_id)
        return f"{self.prefix}.deadletter.{token}"

    def query(self, name: str) -> str:
        if not name or not _TOKEN_RE.match(name):
            raise ValueError(f"not a query name: {name!r}")
        return f"{self.prefix}.query.{name}"

    def input_token(self, subject: str) -> str:
        """The room token of an input subject, unchecked; ValueError for other subjects.

        Comparing this with room_token(event room) is cheaper than decoding it.
        """
        head = f"{self.prefix}.input."
        if not subject.startswith(head) or "." in subject[len(head) :]:
            raise ValueError(f"not an input subject under {self.prefix!r}: {subject!r}")
        return subject[len(head) :]

    def room_of_input(self, subject: str) -> str:
        """The room ID an input subject names; ValueError if the subject or token is bad."""
        return room_id_from_token(self.input_token(subject))

    def query_name(self, subject: str) -> str:
        """The query name of a query subject; ValueError for other subjects."""
        head = f"{self.prefix}.query."
        name = subject[len(head) :]
        if not subject.startswith(head) or not name or "." in name:
            raise ValueError(f"not a query subject under {self.prefix!r}: {subject!r}")
        return name
