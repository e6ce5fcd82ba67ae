"""Reading query requests: msgpack maps checked field by field.

A request with a field this worker does not know is refused rather than served:
a misspelt filter (`type` for `types`) would otherwise return the unfiltered answer,
and a client written for a newer worker would silently get less than it asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgpack

from worker.errors import BAD_REQUEST, RoomserverError

#: Most IDs or filters one request may list: bounds the work one request can cause.
MAX_ITEMS: Final = 10_000


class BadRequest(RoomserverError):
    """The request cannot be read: a RoomserverError whose code is `bad_request`."""

    def __init__(self, message: str) -> None:
        super().__init__(BAD_REQUEST, message)


def decode_request(data: bytes) -> dict[str, Any]:
    """The request map; an empty body counts as an empty map (handy with `nats req`)."""
    if not data:
        return {}
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise BadRequest(f"the request is not valid msgpack ({exc})") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request must be a msgpack map, not {type(body).__name__}")
    return body


class Fields:
    """Typed access to a request map's fields, refusing unknown ones up front; and
    the request's headers (which say how the reply may be encoded)."""

    def __init__(
        self,
        body: Mapping[str, Any],
        allowed: Iterable[str],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        allowed = tuple(allowed)
        unknown = sorted(str(k) for k in body if k not in allowed)
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(unknown)}; this query takes "
                f"{', '.join(sorted(allowed)) or 'no fields'}"
            )
        self._body = body
        self.headers: Mapping[str, str] = headers or {}

    def has(self, key: str) -> bool:
        return self._body.get(key) is not None

    def string(self, key: str) -> str:
        value = self._body.get(key)
        if value is None:
            raise BadRequest(f"{key} is required")
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{key} must be a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if self.has(key) else None

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self._body.get(key, default)
        if value not in options:
            raise BadRequest(f"{key} must be one of {', '.join(options)}")
        return str(value)

    def flag(self, key: str) -> bool:
        value = self._body.get(key, False)
        if not isinstance(value, bool):
            raise BadRequest(f"{key} must be true or false")
        return value

    def string_list(self, key: str) -> list[str]:
        value = self._body.get(key)
        if value is None:
            raise BadRequest(f"{key} is required")
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{key} must be a list of strings")
        if len(value) > MAX_ITEMS:
            raise BadRequest(f"{key} lists {len(value)} items; at most {MAX_ITEMS} are allowed")
        return list(value)

    def optional_string_list(self, key: str) -> list[str] | None:
        return self.string_list(key) if self.has(key) else None

    def optional_key_list(self, key: str) -> list[tuple[str, str]] | None:
        """A list of [type, state_key] pairs."""
        value = self._body.get(key)
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(part, str) for part in pair)
            for pair in value
        ):
            raise BadRequest(f"{key} must be a list of [type, state_key] pairs of strings")
        if len(value) > MAX_ITEMS:
            raise BadRequest(f"{key} lists {len(value)} items; at most {MAX_ITEMS} are allowed")
        return [(str(t), str(s)) for t, s in value]

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self._body.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{key} must be an integer")
        if minimum is not None and value < minimum:
            raise BadRequest(f"{key} must be at least {minimum}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        """A map field; absent counts as empty."""
        value = self._body.get(key, {})
        if not isinstance(value, dict):
            raise BadRequest(f"{key} must be a map")
        return value

    def optional_text(self, key: str) -> str | None:
        """A string that may be empty (a state key), or None when absent."""
        value = self._body.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{key} must be a string")
        return value
