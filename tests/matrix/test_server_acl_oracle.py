"""Differential test: our server ACL verdicts against Synapse's evaluator.

Hypothesis generates ACL contents (well formed and not: non-list `allow`/`deny`,
non-string entries, non-boolean `allow_ip_literals`) and server names built from the
same small alphabet as the patterns (so that matches are common), with and without
ports, plus IPv4 and bracketed IPv6 literals. Names stay within the server name grammar
(appendices, "Server Name"), which has no newline: Synapse's Rust globs let `*` and `?`
match any character but a newline, while the spec says "any characters".
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("synapse.synapse_rust.acl")

from tests.oracle.synapse_acl import synapse_server_allowed
from worker.matrix.server_acl import server_allowed

pytestmark = pytest.mark.oracle

_NAME_CHARS = "abAB0129.-"
_PATTERN_CHARS = _NAME_CHARS + "*?"

octets = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["01", "00", "007"]))
ipv4 = st.lists(octets, min_size=3, max_size=5).map(".".join)
ipv6 = st.sampled_from(["[::1]", "[2001:db8::1]", "[fe80::a:b]", "[1.2.3.4]"])
hosts = st.one_of(st.text(_NAME_CHARS, min_size=1, max_size=12), ipv4, ipv6)
ports = st.one_of(st.none(), st.integers(0, 65535))
server_names = st.builds(
    lambda host, port: host if port is None else f"{host}:{port}", hosts, ports
)
patterns = st.one_of(
    st.text(_PATTERN_CHARS, max_size=10),
    hosts,
    st.sampled_from(["*", "?", "*.*", "1.2.3.*", "[*]", "*1*"]),
)
pattern_lists: st.SearchStrategy[Any] = st.one_of(
    st.lists(st.one_of(patterns, st.integers(), st.none()), max_size=4),
    st.lists(patterns, max_size=4),
    st.sampled_from(["*", None, 3, {"*": 1}]),
)
contents = st.fixed_dictionaries(
    {},
    optional={
        "allow": pattern_lists,
        "deny": pattern_lists,
        "allow_ip_literals": st.one_of(st.booleans(), st.sampled_from(["false", 0, None])),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.one_of(st.none(), contents), server_name=server_names)
def test_same_verdict_as_synapse(content: dict[str, Any] | None, server_name: str) -> None:
    assert server_allowed(content, server_name) == synapse_server_allowed(content, server_name)


@settings(max_examples=150, deadline=None)
@given(
    allow=st.lists(patterns, min_size=1, max_size=3),
    deny=st.lists(patterns, max_size=3),
    names=st.lists(server_names, min_size=1, max_size=5),
)
def test_same_verdict_on_well_formed_acls(
    allow: list[str], deny: list[str], names: list[str]
) -> None:
    for ip_literals in (True, False):
        content = {"allow": allow, "deny": deny, "allow_ip_literals": ip_literals}
        for name in names:
            assert server_allowed(content, name) == synapse_server_allowed(content, name), (
                content,
                name,
            )


TRICKY_NAMES = [
    "1.2.3.4", "01.2.3.4", "1.2.3.04", "256.1.1.1", "255.255.255.255", "0.0.0.0",
    "1.2.3", "1.2.3.4.5", "1.2.3.4:8448", "01.2.3.4:80", "[::1]", "[::1]:8448",
    "[1.2.3.4]", "example.com", "EXAMPLE.com:443", "1.2.3.4.example.com", "a", "",
]  # fmt: skip
TRICKY_CONTENTS: list[dict[str, Any]] = [
    {"allow": ["*"], "allow_ip_literals": False},
    {"allow": ["*"], "allow_ip_literals": True},
    {"allow": ["*"], "deny": ["1.2.3.*", "*.COM"]},
    {"allow": ["?.?.?.?", "[*]", "example.*"], "allow_ip_literals": "no"},
    {"allow": ["*"], "deny": ["*:*"], "allow_ip_literals": False},
]


@pytest.mark.parametrize("content", TRICKY_CONTENTS)
def test_same_verdict_on_ip_literal_edges(content: dict[str, Any]) -> None:
    """Leading zeros, out-of-range octets, ports and brackets: what counts as an IP
    literal must be the same on both sides."""
    for name in TRICKY_NAMES:
        assert server_allowed(content, name) == synapse_server_allowed(content, name), name
