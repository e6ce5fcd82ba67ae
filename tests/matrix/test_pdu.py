"""parse_pdu: every PduError code, content-hash failures, and robustness on any input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.input.decode import decode_input
from worker.matrix.canonical_json import CanonicalJsonError, encode_canonical_json
from worker.matrix.hashes import add_content_hash, compute_event_id, content_hash_view
from worker.matrix.pdu import (
    MAX_ID_BYTES,
    MAX_PDU_BYTES,
    PduError,
    _encoded_size,
    parse_pdu,
    room_version_of_create,
)
from worker.matrix.redaction import redact
from worker.matrix.room_versions import ROOM_VERSIONS, RoomVersion, get_room_version

FIXTURES = Path(__file__).parent.parent / "fixtures" / "format"
EVENT_ID_CASES = json.loads((FIXTURES / "event_ids.json").read_text("utf-8"))["cases"]
V12 = json.loads((FIXTURES / "v12_room.json").read_text("utf-8"))


def make_pdu(version: RoomVersion | str, *, hashed: bool = True, **fields: Any) -> dict[str, Any]:
    """A valid message PDU for `version`, with `fields` overriding (None deletes)."""
    if isinstance(version, str):
        version = get_room_version(version)
    refs: list[Any] = ["$prev"]
    auth: list[Any] = ["$create", "$power", "$member"]
    if version.auth_events_are_pairs:
        refs = [["$prev:example.org", {"sha256": "aGFzaA"}]]
        auth = [["$create:example.org", {"sha256": "aGFzaA"}]]
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "content": {"msgtype": "m.text", "body": "hello"},
        "depth": 5,
        "origin_server_ts": 1_700_000_000_000,
        "prev_events": refs,
        "auth_events": auth,
        "signatures": {"example.org": {"ed25519:1": "c2ln"}},
        "unsigned": {"age": 5},
    }
    if version.auth_events_are_pairs:
        pdu["event_id"] = "$event:example.org"
    for key, value in fields.items():
        if value is None:
            pdu.pop(key, None)
        else:
            pdu[key] = value
    if hashed:
        try:
            add_content_hash(pdu, version)
        except CanonicalJsonError:  # not hashable: a placeholder will do
            pdu["hashes"] = {"sha256": "aGFzaA"}
    return pdu


def code_of(pdu: object, version: RoomVersion | str) -> str:
    if isinstance(version, str):
        version = get_room_version(version)
    with pytest.raises(PduError) as raised:
        parse_pdu(pdu, version)
    assert raised.value.message and raised.value.message[0].isascii()
    return raised.value.code


ALL = list(ROOM_VERSIONS.values())


# -- valid events ----------------------------------------------------------------------


@pytest.mark.parametrize("case", EVENT_ID_CASES, ids=lambda c: c["name"])
def test_real_events_parse(case: dict[str, Any]) -> None:
    event = parse_pdu(copy.deepcopy(case["pdu"]), get_room_version(case["room_version"]))
    assert event.event_id == case["event_id"]
    assert not event.redacted
    assert event.pdu == case["pdu"]


def test_v12_room() -> None:
    version = get_room_version("12")
    create = parse_pdu(copy.deepcopy(V12["create"]["pdu"]), version)
    assert create.event_id == V12["create"]["event_id"]
    assert create.room_id == V12["create"]["room_id"]
    join = parse_pdu(copy.deepcopy(V12["join"]["pdu"]), version)
    assert join.event_id == V12["join"]["event_id"]
    assert join.room_id == create.room_id


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
def test_valid_message_in_every_version(version: RoomVersion) -> None:
    pdu = make_pdu(version)
    event = parse_pdu(pdu, version)
    assert event.event_id == compute_event_id(pdu, version)
    assert not event.redacted
    assert event.pdu is pdu  # no copy on the happy path
    assert event.prev_event_ids[0].startswith("$prev")


def test_limits_are_inclusive() -> None:
    version = get_room_version("10")
    pdu = make_pdu(version, prev_events=[f"$p{i}" for i in range(20)])
    pdu = make_pdu(
        version, prev_events=pdu["prev_events"], auth_events=[f"$a{i}" for i in range(10)]
    )
    assert len(parse_pdu(pdu, version).auth_event_ids) == 10
    name = "a" * 255
    parse_pdu(make_pdu(version, type=name, state_key="é" * 127), version)
    body = make_pdu(version, content={"body": ""})
    room = MAX_PDU_BYTES - len(json.dumps(body, separators=(",", ":")).encode())
    exact = make_pdu(version, content={"body": "x" * room})
    assert len(json.dumps(exact, separators=(",", ":"), ensure_ascii=False)) == MAX_PDU_BYTES
    parse_pdu(exact, version)
    with pytest.raises(PduError):
        parse_pdu(make_pdu(version, content={"body": "x" * (room + 1)}), version)


# -- every error code ------------------------------------------------------------------

BAD_SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("missing type", {"type": None}),
    ("missing sender", {"sender": None}),
    ("missing content", {"content": None}),
    ("missing depth", {"depth": None}),
    ("missing origin_server_ts", {"origin_server_ts": None}),
    ("missing prev_events", {"prev_events": None}),
    ("missing auth_events", {"auth_events": None}),
    ("missing signatures", {"signatures": None}),
    ("missing room_id", {"room_id": None}),
    ("type bytes", {"type": b"m.room.message"}),
    ("type int", {"type": 5}),
    ("sender list", {"sender": ["@a:b"]}),
    ("state_key int", {"state_key": 0}),
    ("state_key null", {"state_key": None, "x": 1}),
    ("content list", {"content": []}),
    ("content str", {"content": "x"}),
    ("depth bool", {"depth": True}),
    ("depth str", {"depth": "5"}),
    ("depth negative", {"depth": -1}),
    ("ts bool", {"origin_server_ts": False}),
    ("prev_events dict", {"prev_events": {}}),
    ("signatures list", {"signatures": []}),
    ("signature value not str", {"signatures": {"s": {"k": 1}}}),
    ("signatures server not object", {"signatures": {"s": "k"}}),
    ("unsigned list", {"unsigned": []}),
    ("room_id without sigil", {"room_id": "room:example.org"}),
    ("bytes in content", {"content": {"body": b"raw"}}),
    ("int key in content", {"content": {1: "x"}}),
    ("nan in content", {"content": {"n": float("nan")}}),
    ("ext type in content", {"content": {"e": msgpack.ExtType(1, b"x")}}),
]


@pytest.mark.parametrize(("name", "fields"), BAD_SHAPES, ids=[b[0] for b in BAD_SHAPES])
@pytest.mark.parametrize("version", ["1", "3", "5", "6", "11", "12"])
def test_bad_pdu(name: str, fields: dict[str, Any], version: str) -> None:
    if name == "state_key null":
        fields = {"state_key": "x"}
        pdu = make_pdu(version, hashed=False, **fields)
        pdu["state_key"] = None
        add_content_hash(pdu, get_room_version(version))
    else:
        pdu = make_pdu(version, **fields)
    assert code_of(pdu, version) == "bad_pdu"


@pytest.mark.parametrize("value", [[], "pdu", b"\x80", None, 5, 1.5, ["type"]])
def test_not_an_object(value: object) -> None:
    assert code_of(value, "10") == "bad_pdu"


@pytest.mark.parametrize(
    "hashes", [None, [], "hash", {}, {"sha256": 5}, {"sha256": b"aGFzaA"}], ids=repr
)
def test_hashes_shape(hashes: Any) -> None:
    pdu = make_pdu("10")
    if hashes is None:
        del pdu["hashes"]
    else:
        pdu["hashes"] = hashes
    assert code_of(pdu, "10") == "bad_pdu"


def test_legacy_edge_shapes() -> None:
    # v1–2 need [id, {sha256}] pairs; v3+ need plain strings.
    legacy_bad: list[list[Any]] = [["$a:b"], [["$a:b"]], [["$a:b", "hash"]], [["$a:b", {}]]]
    legacy_bad.append([[1, {"sha256": "x"}]])
    for refs in legacy_bad:
        assert code_of(make_pdu("2", prev_events=refs), "2") == "bad_pdu"
        assert code_of(make_pdu("1", auth_events=refs), "1") == "bad_pdu"
    modern_bad: list[list[Any]] = [[["$a", {"sha256": "x"}]], [1], [None], [b"$a"]]
    for refs in modern_bad:
        assert code_of(make_pdu("3", prev_events=refs), "3") == "bad_pdu"


def test_depth_limit_before_v6() -> None:
    assert code_of(make_pdu("5", depth=2**63), "5") == "bad_pdu"
    parse_pdu(make_pdu("5", depth=2**63 - 1), get_room_version("5"))


def test_top_level_redacts_must_be_a_string_before_v11() -> None:
    pdu = make_pdu("10", type="m.room.redaction", redacts=5)
    assert code_of(pdu, "10") == "bad_pdu"
    # From v11 `redacts` lives in content and a top-level one is just an unknown key.
    parse_pdu(make_pdu("11", type="m.room.redaction", redacts=5), get_room_version("11"))


def test_v12_room_id_rules() -> None:
    version = get_room_version("12")
    create = copy.deepcopy(V12["create"]["pdu"])
    create["room_id"] = V12["create"]["room_id"]
    add_content_hash(create, version)
    assert code_of(create, version) == "bad_pdu"
    join = copy.deepcopy(V12["join"]["pdu"])
    del join["room_id"]
    add_content_hash(join, version)
    assert code_of(join, version) == "bad_pdu"
    join["room_id"] = "room"
    add_content_hash(join, version)
    assert code_of(join, version) == "bad_pdu"


@pytest.mark.parametrize(
    "fields",
    [
        {"content": {"body": "x" * MAX_PDU_BYTES}},
        {"type": "t" * 256},
        {"state_key": "é" * 128},
        {"sender": "@" + "a" * 250 + ":example.org"},
        {"room_id": "!" + "r" * 250 + ":example.org"},
        {"unsigned": {"padding": "x" * MAX_PDU_BYTES}},
    ],
    ids=["content", "type", "state_key", "sender", "room_id", "unsigned"],
)
def test_too_large(fields: dict[str, Any]) -> None:
    for version in ("1", "4", "12"):
        assert code_of(make_pdu(version, **fields), version) == "too_large"


@pytest.mark.parametrize("key", ["type", "state_key", "sender", "room_id"])
@pytest.mark.parametrize("char", ["x", "é", "日", "😀"], ids=["1 byte", "2", "3", "4 bytes"])
def test_identifier_limit_is_in_bytes_at_the_edge(key: str, char: str) -> None:
    """Client-server API, "Size limits": `type`, `state_key`, `sender`, `room_id` and
    `event_id` are limited to 255 bytes. Exactly 255 bytes passes, 256 does not, in
    characters of every UTF-8 width (a short string passes without being encoded)."""
    width = len(char.encode())
    frame = {"sender": ("@", ":x.org"), "room_id": ("!", ":x.org")}.get(key, ("", ""))
    for size, passes in ((MAX_ID_BYTES, True), (MAX_ID_BYTES + 1, False)):
        fill = size - len("".join(frame).encode())
        value = frame[0] + char * (fill // width) + "a" * (fill % width) + frame[1]
        assert len(value.encode()) == size
        if key == "sender" and char != "x":  # a user ID's localpart is ASCII
            value = frame[0] + "a" * fill + frame[1]
        pdu = make_pdu("10", **{key: value})
        if passes:
            assert parse_pdu(pdu, get_room_version("10")).pdu[key] == value
        else:
            assert code_of(pdu, "10") == "too_large"


#: Faults, one per check, in the order the format is checked: a PDU with two of them
#: is refused for the earlier one (dead letters keep naming the same fault).
ORDERED_FAULTS: list[tuple[str, Any, str]] = [
    ("type", 5, "`type` must be a string"),
    ("sender", "nobody", "`sender` 'nobody' is not a user ID"),
    ("state_key", 7, "`state_key` must be a string"),
    ("content", [], "`content` must be an object"),
    ("origin_server_ts", "now", "`origin_server_ts` must be an integer"),
    ("depth", -1, "`depth` is -1"),
    ("hashes", {"sha256": 1}, "`hashes.sha256` must be"),
    ("signatures", {"s": []}, "`signatures.s` must map"),
    ("unsigned", 3, "`unsigned` must be an object"),
    ("prev_events", [1], "each `prev_events` entry"),
    ("auth_events", "$a", "`auth_events` must be a list"),
    ("room_id", "r:x.org", "`room_id` 'r:x.org' must start with '!'"),
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(len(ORDERED_FAULTS))), min_size=1, max_size=4))
def test_the_first_format_fault_is_the_one_reported(faults: list[int]) -> None:
    version = get_room_version("10")
    pdu = make_pdu(version)
    for index in faults:
        key, value, _ = ORDERED_FAULTS[index]
        pdu[key] = value
    with pytest.raises(PduError) as raised:
        parse_pdu(pdu, version)
    assert ORDERED_FAULTS[min(faults)][2] in raised.value.message


def test_legacy_event_id_too_long() -> None:
    pdu = make_pdu("1", event_id="$" + "e" * 250 + ":example.org")
    assert code_of(pdu, "1") == "too_large"


@pytest.mark.parametrize("version", ["1", "3", "12"])
def test_too_many_edges(version: str) -> None:
    pairs = get_room_version(version).auth_events_are_pairs

    def refs(n: int) -> list[Any]:
        return [[f"$e{i}:x", {"sha256": "aGFzaA"}] if pairs else f"$e{i}" for i in range(n)]

    assert code_of(make_pdu(version, prev_events=refs(21)), version) == "too_many_edges"
    assert code_of(make_pdu(version, auth_events=refs(11)), version) == "too_many_edges"


@pytest.mark.parametrize("value", [1.5, 2.0, -0.0, 2**53, -(2**53), 2**63 - 1])
def test_not_canonical_from_v6(value: Any) -> None:
    for identifier in ("6", "9", "12"):
        pdu = make_pdu("5", content={"weight": value})  # hashed leniently
        assert code_of(pdu, identifier) == "not_canonical"
    # Room versions 1–5 accept it (and the content hash still matches).
    for identifier in ("1", "3", "5"):
        pdu = make_pdu(identifier, content={"weight": value})
        assert not parse_pdu(pdu, get_room_version(identifier)).redacted


def test_not_canonical_in_a_required_field() -> None:
    assert code_of(make_pdu("5", depth=2.0, hashed=False) | {"hashes": {"sha256": "A"}}, "7") == (
        "not_canonical"
    )
    assert code_of(make_pdu("5", origin_server_ts=2**60), "8") == "not_canonical"


def test_lenient_whole_float_depth_is_still_not_an_integer() -> None:
    # In v1–5 JSON numbers are accepted, but depth must be an integer field.
    assert code_of(make_pdu("4", depth=5.0), "4") == "bad_pdu"


@pytest.mark.parametrize("event_id", [None, 5, "", "no-sigil:example.org", "$nodomain", ["$e:x"]])
def test_bad_legacy_event_id(event_id: Any) -> None:
    pdu = make_pdu("1", event_id=event_id)  # None: no event_id at all
    assert code_of(pdu, "1") == "bad_event_id"
    # bytes are not JSON at all, which is reported first
    assert code_of(make_pdu("1", event_id=b"$e:x"), "1") == "bad_pdu"


@pytest.mark.parametrize("version", ["3", "4", "10", "12"])
def test_event_id_claim_from_v3(version: str) -> None:
    room_version = get_room_version(version)
    pdu = make_pdu(version)
    expected = compute_event_id(pdu, room_version)
    claimed = dict(pdu, event_id=expected)
    event = parse_pdu(claimed, room_version)
    assert event.event_id == expected
    assert "event_id" not in event.pdu
    assert not event.redacted
    for wrong in ("$wrong", expected + "x", 7, None, ""):
        assert code_of(dict(pdu, event_id=wrong), version) == "bad_event_id"


# -- content hash ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
def test_content_hash_mismatch_gives_redacted_event(version: RoomVersion) -> None:
    pdu = make_pdu(version)
    original_id = compute_event_id(pdu, version)
    tampered = copy.deepcopy(pdu)
    tampered["content"]["body"] = "tampered"
    event = parse_pdu(tampered, version)
    assert event.redacted
    assert event.event_id == original_id  # redaction keeps what the ID covers
    assert event.pdu == redact(tampered, version)
    assert event.content == {}


@pytest.mark.parametrize("version", ALL, ids=lambda v: f"v{v.identifier}")
def test_content_hash_claim_with_padding_still_matches(version: RoomVersion) -> None:
    """Appendices, "Unpadded Base64": "When decoding Base64, implementations SHOULD
    accept input with or without padding characters wherever possible". The claim is
    compared with the computed hash unpadded first; a padded claim takes the decoding
    path and must match all the same, and a padded wrong one must not."""
    pdu = make_pdu(version)
    claim = pdu["hashes"]["sha256"]
    assert "=" not in claim and len(claim) == 43  # a SHA-256 digest: one padding "="
    padded = dict(pdu, hashes={"sha256": claim + "="})
    event = parse_pdu(padded, version)
    assert not event.redacted
    assert event.pdu == padded and event.content == pdu["content"]
    wrong = ("A" if claim[0] != "A" else "B") + claim[1:] + "="
    assert parse_pdu(dict(pdu, hashes={"sha256": wrong}), version).redacted


def test_undecodable_content_hash_is_a_bad_pdu() -> None:
    """The spec: "Passes hash checks, otherwise it is redacted before being processed
    further." A hash that is not base64 could be read as failing the check, but
    Synapse refuses the PDU (`check_event_content_hash` raises on invalid base64), and
    so do we (docs/matrix.md); a hash that decodes but does not match is redacted."""
    version = get_room_version("9")
    pdu = make_pdu(version, type="m.room.member", state_key="@alice:example.org")
    pdu["content"] = {"membership": "join", "displayname": "Alice"}
    pdu["hashes"] = {"sha256": "%%% not base64 %%%"}
    with pytest.raises(PduError) as info:
        parse_pdu(pdu, version)
    assert info.value.code == "bad_pdu"
    assert "not base64" in info.value.message


# -- room version from a create event --------------------------------------------------


def test_room_version_of_create() -> None:
    assert room_version_of_create(V12["create"]["pdu"]).identifier == "12"
    assert room_version_of_create({"type": "m.room.create", "content": {}}).identifier == "1"
    not_creates: list[object] = [{"type": "m.room.member", "content": {}}, [], None]
    not_creates.append({"type": "m.room.create"})
    for bad in not_creates:
        with pytest.raises(PduError) as raised:
            room_version_of_create(bad)
        assert raised.value.code == "bad_pdu"
    for unknown in ("13", 5, None, "org.example.custom"):
        with pytest.raises(PduError) as raised:
            room_version_of_create({"type": "m.room.create", "content": {"room_version": unknown}})
        assert raised.value.code == "unknown_room_version"


# -- never anything but PduError -------------------------------------------------------

msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)
PDU_KEYS = [
    "type",
    "room_id",
    "sender",
    "state_key",
    "content",
    "depth",
    "origin_server_ts",
    "prev_events",
    "auth_events",
    "hashes",
    "signatures",
    "unsigned",
    "event_id",
    "redacts",
]


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from(ALL),
    fields=st.dictionaries(st.sampled_from(PDU_KEYS), msgpack_values, max_size=6),
    drop=st.lists(st.sampled_from(PDU_KEYS), max_size=2),
)
def test_mutated_pdus_raise_only_pdu_error(
    version: RoomVersion, fields: dict[str, Any], drop: list[str]
) -> None:
    pdu = make_pdu(version)
    pdu.update(fields)
    for key in drop:
        pdu.pop(key, None)
    try:
        event = parse_pdu(pdu, version)
    except PduError as exc:
        assert exc.code in {"bad_pdu", "too_large", "too_many_edges", "not_canonical"} | {
            "bad_event_id",
            "bad_sender",
        }
        return
    # Whatever parses is usable through the typed views.
    assert event.event_id.startswith("$")
    assert isinstance(event.type, str)
    assert isinstance(event.sender, str)
    assert all(isinstance(e, str) for e in event.prev_event_ids + event.auth_event_ids)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(ALL), value=msgpack_values)
def test_arbitrary_values_raise_only_pdu_error(version: RoomVersion, value: Any) -> None:
    with pytest.raises(PduError):
        parse_pdu(value, version)


@settings(max_examples=200, deadline=None)
@given(version=st.sampled_from(ALL), data=st.binary(max_size=64))
def test_msgpack_decoded_garbage_raises_only_pdu_error(version: RoomVersion, data: bytes) -> None:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return  # not msgpack: the pipeline's business (bad_msgpack)
    with pytest.raises(PduError):
        parse_pdu(value, version)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["content", "hashes", "signatures", "unsigned", "a", "z", "é"]),
        json_values,
    )
)
def test_size_from_the_content_hash_view_is_exact(pdu: dict[str, Any]) -> None:
    view = content_hash_view(pdu)
    view_bytes = encode_canonical_json(view, strict=True)
    assert _encoded_size(view, view_bytes, pdu) == len(encode_canonical_json(pdu, strict=True))


# -- the C check of float-free inputs --------------------------------------------------


def _outcome(pdu: object, version: RoomVersion, float_free: bool) -> object:
    """What parse_pdu makes of a PDU: its error code, or the event's whole result."""
    try:
        event = parse_pdu(pdu, version, float_free=float_free)
    except PduError as exc:
        return exc.code
    return (event.event_id, event.redacted, event.pdu)


#: msgpack values with the integers at canonical JSON's bounds drawn often.
bounded_msgpack_values = st.recursive(
    msgpack_scalars
    | st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53), 2**63, 2**64 - 1, -(2**63)]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from(ALL),
    fields=st.dictionaries(st.sampled_from(PDU_KEYS), bounded_msgpack_values, max_size=6),
    drop=st.lists(st.sampled_from(PDU_KEYS), max_size=2),
)
def test_float_free_inputs_parse_as_the_full_walk_does(
    version: RoomVersion, fields: dict[str, Any], drop: list[str]
) -> None:
    """An input decoded from msgpack carries `float_free` when its bytes hold no float
    marker; parsing with it must give what the Python walk gives, errors included."""
    pdu = make_pdu(version)
    pdu.update(fields)
    for key in drop:
        pdu.pop(key, None)
    inp = decode_input(msgpack.packb({"event": pdu}, use_bin_type=True))
    assert _outcome(inp.event, version, inp.float_free) == _outcome(inp.event, version, False)


def test_float_free_marks_only_inputs_without_floats() -> None:
    version = get_room_version("10")
    plain = msgpack.packb({"event": make_pdu(version)}, use_bin_type=True)
    assert decode_input(plain).float_free
    for number, code in ((1.5, "not_canonical"), (0.0, "not_canonical"), (math.nan, "bad_pdu")):
        floaty = make_pdu(version, hashed=False, content={"n": number})
        for single in (False, True):  # float 32 (0xca) and float 64 (0xcb)
            data = msgpack.packb({"event": floaty}, use_bin_type=True, use_single_float=single)
            assert not decode_input(data).float_free
            assert code_of(decode_input(data).event, version) == code
    # A float marker byte inside an integer only costs the walk, never the check.
    marked = msgpack.packb({"event": make_pdu(version, depth=0xCA)}, use_bin_type=True)
    assert not decode_input(marked).float_free
    assert parse_pdu(decode_input(marked).event, version).depth == 0xCA
