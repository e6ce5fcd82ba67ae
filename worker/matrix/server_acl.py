"""Server ACLs: whether a server may take part in a room over federation.

The `m.room.server_acl` state event (client-server API, "Server Access Control Lists";
event schema `m.room.server_acl`) lists glob patterns of servers to allow and to deny.
The server-server API says which requests a resident server must check against it
(`make_join`, `send_join`, `backfill`, `get_missing_events`, `state`, `event_auth`, ...,
and every PDU and room EDU of a `/send` transaction); the caller does that and asks
`server_allowed` here with the current ACL content of the room.

Malformed content is read the way Synapse reads it, which is also what the schema's
defaults imply: a non-boolean `allow_ip_literals` counts as absent (true), a non-list
`allow`/`deny` counts as empty, and non-string entries of a list are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: A dotted-quad IPv4 address: four decimal octets 0–255 without leading zeros (the
#: form of an IPv4 literal in the appendices' server name grammar).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


@dataclass(frozen=True, slots=True)
class ServerAcl:
    """The well-formed part of an `m.room.server_acl` content."""

    allow_ip_literals: bool
    allow: tuple[str, ...]
    deny: tuple[str, ...]


def parse_server_acl(content: Mapping[str, Any]) -> ServerAcl:
    """Read an ACL content, ignoring malformed parts as the schema's defaults say.

    Schema: `allow_ip_literals` "Defaults to `true` if missing or otherwise not a
    boolean"; `allow` "defaults to an empty list when not provided"; `deny` "defaults to
    an empty list when not provided".
    """
    allow_ip_literals = content.get("allow_ip_literals", True)
    if not isinstance(allow_ip_literals, bool):
        allow_ip_literals = True
    return ServerAcl(
        allow_ip_literals=allow_ip_literals,
        allow=_string_entries(content.get("allow")),
        deny=_string_entries(content.get("deny")),
    )


def _string_entries(value: object) -> tuple[str, ...]:
    """The string items of a list; anything that is not a list counts as empty."""
    if not isinstance(value, list | tuple):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def host_of(server_name: str) -> str:
    """The server name without its port.

    Schema: "the suspect server's port number must not be considered. Therefore
    `evil.com`, `evil.com:8448`, and `evil.com:1234` would all match rules that apply to
    `evil.com`". A bracketed IPv6 literal holds colons of its own, so only a `:digits`
    suffix after the closing bracket (or after a name without brackets) is a port.
    """
    if server_name.endswith("]"):
        return server_name
    host, colon, port = server_name.rpartition(":")
    if colon and port.isascii() and port.isdigit():
        return host
    return server_name


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 dotted quad or a bracketed IPv6 literal (appendices, "Server Name").

    IPv6 literals are the only server names that start with `[`.
    """
    return host.startswith("[") or _IPV4.fullmatch(host) is not None


@lru_cache(maxsize=4096)
def _glob_segments(pattern: str) -> tuple[tuple[str, ...], ...]:
    """The pattern split at each `*`, every character case-folded (`?` stays `?`)."""
    return tuple(tuple(char.lower() for char in part) for part in pattern.split("*"))


def _segment_at(segment: tuple[str, ...], text: tuple[str, ...], start: int) -> bool:
    """Whether `segment` (literals and `?`) matches `text` at `start`."""
    if start < 0 or start + len(segment) > len(text):
        return False
    return all(want == "?" or want == text[start + offset] for offset, want in enumerate(segment))


def glob_matches(pattern: str, host: str) -> bool:
    """Whether the whole `host` matches the glob `pattern`, ignoring case.

    Appendices, "Glob-style matching": "The character `*` matches zero or more
    characters. `?` matches exactly one character."; everything else is literal, and the
    ACL schema makes the match "case-insensitive". Between two `*`s the leftmost match of
    a segment is always as good as any later one, so one left-to-right pass decides, in
    time proportional to the pattern times the name: a hostile ACL of many wildcards
    cannot make this backtrack.
    """
    text = tuple(char.lower() for char in host)
    first, *rest = _glob_segments(pattern)
    if not rest:
        return len(first) == len(text) and _segment_at(first, text, 0)
    *middle, last = rest
    if not _segment_at(first, text, 0):
        return False
    position = len(first)
    for segment in middle:
        found = next(
            (
                start
                for start in range(position, len(text) - len(segment) + 1)
                if _segment_at(segment, text, start)
            ),
            None,
        )
        if found is None:
            return False
        position = found + len(segment)
    tail = len(text) - len(last)
    return tail >= position and _segment_at(last, text, tail)


def acl_allows(acl: ServerAcl, server_name: str) -> bool:
    """The schema's steps 2–5 for a room that has an ACL event."""
    host = host_of(server_name)
    # 2. "If the server name is an IP address (v4 or v6) literal, and `allow_ip_literals`
    #    is present and `false`, deny."
    if not acl.allow_ip_literals and is_ip_literal(host):
        return False
    # 3. "If the server name matches an entry in the `deny` list, deny."
    if any(glob_matches(pattern, host) for pattern in acl.deny):
        return False
    # 4. "If the server name matches an entry in the `allow` list, allow."
    # 5. "Otherwise, deny."
    return any(glob_matches(pattern, host) for pattern in acl.allow)


def server_allowed(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether `server_name` (with or without a port) may take part in the room.

    `acl_content` is the content of the room's current `m.room.server_acl` event, or
    None when the room has none.
    """
    # 1. "If there is no `m.room.server_acl` event in the room state, allow."
    if acl_content is None:
        return True
    return acl_allows(parse_server_acl(acl_content), server_name)
