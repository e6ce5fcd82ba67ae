"""The little identifier grammar the authorization rules depend on.

The rules compare *domains* (of senders, room IDs, event IDs) and require some values to
be *valid user IDs* (keys of power level `users`, v12 `additional_creators`). Validity
here is the spec's historical user ID grammar (appendices, "Historical User IDs"): any
localpart without `:` or NUL, then a server name, 255 bytes at most, because servers
must keep accepting the old IDs that exist in real rooms.
"""

from __future__ import annotations

import re

#: appendices, "Server Name": a DNS name / IPv4 literal, or a bracketed IPv6 literal,
#: then an optional port. IPv4 literals are a subset of the DNS characters.
_SERVER_NAME = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.\-]{1,255})(?::[0-9]{1,5})?")
_MAX_ID_BYTES = 255


def domain_of(identifier: str) -> str | None:
    """The server name after the first `:` of a sigil identifier, or None if it has none.

    The first colon is the separator because a localpart never holds one, while the
    server name can (a port, an IPv6 literal).
    """
    _, colon, domain = identifier.partition(":")
    return domain if colon else None


def is_valid_server_name(name: str) -> bool:
    return _SERVER_NAME.fullmatch(name) is not None


def is_valid_user_id(value: object) -> bool:
    """True for a string that is a (possibly historical) Matrix user ID."""
    if not isinstance(value, str) or not value.startswith("@") or "\x00" in value:
        return False
    try:
        if len(value.encode("utf-8")) > _MAX_ID_BYTES:
            return False
    except UnicodeEncodeError:  # a lone surrogate is not a code point a user ID can hold
        return False
    domain = domain_of(value)
    return domain is not None and is_valid_server_name(domain)
