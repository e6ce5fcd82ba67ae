"""Server ACLs (`m.room.server_acl`) against the spec's text.

The steps are the event schema's: "1. If there is no `m.room.server_acl` event in the
room state, allow. 2. If the server name is an IP address (v4 or v6) literal, and
`allow_ip_literals` is present and `false`, deny. 3. If the server name matches an entry
in the `deny` list, deny. 4. If the server name matches an entry in the `allow` list,
allow. 5. Otherwise, deny."
"""

from __future__ import annotations

from typing import Any

import pytest

from worker.matrix.server_acl import (
    glob_matches,
    host_of,
    is_ip_literal,
    parse_server_acl,
    server_allowed,
)

pytestmark = pytest.mark.unit


def test_no_acl_event_allows_everyone() -> None:
    """Step 1: no `m.room.server_acl` event in the state → allow."""
    assert server_allowed(None, "evil.com")
    assert server_allowed(None, "1.2.3.4")


def test_empty_acl_denies_everyone() -> None:
    """`allow` "defaults to an empty list when not provided, effectively disallowing
    every server" (step 5)."""
    assert not server_allowed({}, "good.org")
    assert not server_allowed({"deny": []}, "good.org")


def test_deny_is_evaluated_before_allow() -> None:
    """Steps 3 and 4: a server on both lists is denied."""
    content = {"allow": ["*"], "deny": ["evil.com", "*.evil.com"]}
    assert not server_allowed(content, "evil.com")
    assert not server_allowed(content, "a.b.evil.com")
    assert server_allowed(content, "notevil.com")
    assert server_allowed(content, "good.org")


def test_ports_are_not_considered() -> None:
    """ "`evil.com`, `evil.com:8448`, and `evil.com:1234` would all match rules that apply
    to `evil.com`"."""
    content = {"allow": ["*"], "deny": ["evil.com"]}
    for name in ("evil.com", "evil.com:8448", "evil.com:1234"):
        assert not server_allowed(content, name)
    assert server_allowed({"allow": ["good.org"]}, "good.org:8448")
    assert host_of("[::1]:8448") == "[::1]"
    assert host_of("[2001:db8::1]") == "[2001:db8::1]"
    assert host_of("1.2.3.4:80") == "1.2.3.4"


def test_globs() -> None:
    """Appendices, "Glob-style matching": "The character `*` matches zero or more
    characters. `?` matches exactly one character."; the patterns are "case-insensitive"."""
    assert glob_matches("*", "")
    assert glob_matches("*.example.com", "a.example.com")
    assert not glob_matches("*.example.com", "example.com")
    assert glob_matches("matrix.?rg", "matrix.org")
    assert not glob_matches("matrix.?rg", "matrix.rg")
    assert not glob_matches("matrix.?rg", "matrix.oorg")
    assert glob_matches("a*?b", "axb")
    assert not glob_matches("a*?b", "ab")
    assert glob_matches("EXAMPLE.com", "example.COM")
    # Everything else is literal: regex syntax has no meaning.
    assert glob_matches("[a-z].com", "[a-z].com")
    assert not glob_matches("[a-z].com", "b.com")
    assert not glob_matches("x.y", "xzy")
    # The whole name must match, not a part of it.
    assert not glob_matches("example.com", "example.com.evil")


def test_pathological_globs_stay_fast() -> None:
    """A pattern of many wildcards against a long non-matching name must not backtrack
    exponentially (a denial-of-service hazard for a server evaluating ACLs)."""
    assert not glob_matches("*a*a*a*a*a*a*a*a*a*a*a*a*a*b", "a" * 5000)


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("1.2.3.4", True),
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("[::1]", True),
        ("[2001:db8::1]", True),
        ("256.1.1.1", False),
        ("1.2.3", False),
        ("1.2.3.4.5", False),
        ("01.2.3.4", False),
        ("example.com", False),
        ("1.2.3.4.example.com", False),
    ],
)
def test_ip_literals(host: str, literal: bool) -> None:
    """Appendices, "Server Name": an IPv4 literal is a dotted quad; an IPv6 literal is
    enclosed in square brackets."""
    assert is_ip_literal(host) is literal


def test_allow_ip_literals() -> None:
    """Step 2 denies IP literals only when `allow_ip_literals` "is present and
    `false`"; it "Defaults to `true` if missing or otherwise not a boolean"."""
    base: dict[str, Any] = {"allow": ["*"]}
    for name in ("1.2.3.4", "1.2.3.4:8448", "[::1]", "[::1]:8448"):
        assert server_allowed(base, name)
        assert server_allowed({**base, "allow_ip_literals": True}, name)
        assert server_allowed({**base, "allow_ip_literals": "false"}, name)
        assert server_allowed({**base, "allow_ip_literals": 0}, name)
        assert not server_allowed({**base, "allow_ip_literals": False}, name)
    assert server_allowed({**base, "allow_ip_literals": False}, "1.2.3.4.example.com")


def test_malformed_lists() -> None:
    """`allow` and `deny` are arrays of strings; anything else counts as the default
    (empty), and non-string entries are ignored."""
    assert not server_allowed({"allow": "*"}, "good.org")
    assert not server_allowed({"allow": {"*": True}}, "good.org")
    assert server_allowed({"allow": [1, None, {"x": 1}, "*"]}, "good.org")
    assert server_allowed({"allow": ["*"], "deny": "good.org"}, "good.org")
    assert not server_allowed({"allow": ["*"], "deny": [7, "good.org"]}, "good.org")
    acl = parse_server_acl({"allow": [1, "a"], "deny": None, "allow_ip_literals": []})
    assert (acl.allow, acl.deny, acl.allow_ip_literals) == (("a",), (), True)
