"""Canonical JSON: the spec's examples, the strict/lenient split and property tests."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.matrix.canonical_json import (
    MAX_NESTING,
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    check_json,
    encode_canonical_json,
    encode_checked,
    encode_float_free,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "format"
SPEC_CASES = json.loads((FIXTURES / "canonical_json.json").read_text("utf-8"))["cases"]


@pytest.mark.parametrize("case", SPEC_CASES, ids=lambda c: c["output"][:40])
def test_spec_examples(case: dict[str, Any]) -> None:
    value = json.loads(case["input"])
    expected = case["output"].encode("utf-8")
    assert encode_canonical_json(value, strict=False) == expected
    if case["strict"]:
        assert encode_canonical_json(value, strict=True) == expected
    else:
        # The -0/1e10 example: 1e10 parses as a float, which strict rooms refuse.
        with pytest.raises(CanonicalJsonError) as raised:
            encode_canonical_json(value, strict=True)
        assert raised.value.strict_violation


def test_strict_integer_bounds() -> None:
    assert encode_canonical_json([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER], strict=True) == (
        b"[9007199254740991,-9007199254740991]"
    )
    for bad in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**63):
        with pytest.raises(CanonicalJsonError) as raised:
            encode_canonical_json({"a": {"b": [bad]}}, strict=True)
        assert raised.value.strict_violation
        assert encode_canonical_json({"a": bad}, strict=False) == f'{{"a":{bad}}}'.encode()


def test_floats_strict_and_lenient() -> None:
    for value in (1.0, 0.5, -0.0, 1e10):
        with pytest.raises(CanonicalJsonError) as raised:
            encode_canonical_json({"x": value}, strict=True)
        assert raised.value.strict_violation
    assert encode_canonical_json({"x": 50.0, "y": -0.0}, strict=False) == b'{"x":50,"y":0}'
    assert encode_canonical_json({"u": 50.57}, strict=False) == b'{"u":50.57}'
    # Any float sends the value down the `json` path (see the next test).
    assert check_json({"x": [1, {"y": 2.0}]}, strict=False) is True
    assert check_json({"x": [1, {"y": 2.5}]}, strict=False) is True
    assert check_json({"x": [1, {"y": "2.5"}]}, strict=False) is False


def test_lenient_floats_keep_pythons_shortest_form() -> None:
    # orjson writes 1e-7; the form kept for v1–5 rooms is Python's (what Synapse's
    # canonicaljson wrote for the old floaty power levels).
    assert encode_canonical_json({"f": 1e-07, "h": 0.1}, strict=False) == (b'{"f":1e-07,"h":0.1}')


def test_bool_is_not_an_integer_for_range_checks() -> None:
    assert encode_canonical_json({"t": True, "f": False, "n": None}, strict=True) == (
        b'{"f":false,"n":null,"t":true}'
    )


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(
    "value",
    [
        {"a": b"bytes"},
        {"a": {1, 2}},
        {1: "int key"},
        {"a": {b"k": 1}},
        {"a": float("nan")},
        {"a": float("inf")},
        {"a": -float("inf")},
        {"a": "\ud800"},
        {"\udfff": 1},
        # An id of its own: repr would carry the address, which differs between runs.
        pytest.param({"a": object()}, id="{'a': object()}"),
    ],
    ids=repr,
)
def test_non_json_always_raises(value: Any, strict: bool) -> None:
    with pytest.raises(CanonicalJsonError) as raised:
        encode_canonical_json(value, strict=strict)
    assert not raised.value.strict_violation


def test_deep_nesting_is_refused_not_crashing() -> None:
    value: Any = []
    for _ in range(MAX_NESTING + 5):
        value = [value]
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(value, strict=True)
    shallow: Any = 1
    for _ in range(MAX_NESTING - 1):
        shallow = [shallow]
    assert encode_canonical_json(shallow, strict=True).count(b"[") == MAX_NESTING - 1


def test_escapes_match_the_grammar() -> None:
    # Short escapes where the grammar has them, \u00XX (lowercase hex) otherwise, and no
    # escaping of non-ASCII, DEL, or U+2028.
    value = {"s": '\b\t\n\f\r"\\\x00\x1f\x7f\u2028é/'}
    assert encode_canonical_json(value, strict=True) == (
        '{"s":"\\b\\t\\n\\f\\r\\"\\\\\\u0000\\u001f\x7f\u2028é/"}'.encode()
    )


def test_keys_sorted_by_code_point() -> None:
    value = {"b": 1, "B": 2, "é": 3, "a": 4, "\U0001f600": 5, "\uffff": 6}
    encoded = encode_canonical_json(value, strict=True)
    assert list(json.loads(encoded)) == sorted(value)
    assert encoded == '{"B":2,"a":4,"b":1,"é":3,"\uffff":6,"\U0001f600":5}'.encode()


def test_subclasses_of_json_types() -> None:
    value = OrderedDict([("b", (1, 2)), ("a", "x")])
    assert encode_canonical_json(value, strict=True) == b'{"a":"x","b":[1,2]}'


def test_encode_checked_matches_full_encoding() -> None:
    value = {"z": [1, "two", None, True], "a": {"nested": "é"}}
    assert encode_checked(value) == encode_canonical_json(value, strict=True)


# -- properties ---------------------------------------------------------------------

strict_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text()
)
strict_json = st.recursive(
    strict_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@given(strict_json)
def test_round_trips_through_json_loads(value: Any) -> None:
    encoded = encode_canonical_json(value, strict=True)
    assert json.loads(encoded) == value
    # Canonical: re-encoding the decoded value gives the same bytes, and no whitespace
    # outside strings is possible since it equals the compact sorted form.
    assert encode_canonical_json(json.loads(encoded), strict=True) == encoded
    assert encoded == json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True
    ).encode("utf-8")


@given(strict_json, st.floats(allow_nan=False, allow_infinity=False))
def test_strict_rejects_any_float(value: Any, number: float) -> None:
    with pytest.raises(CanonicalJsonError) as raised:
        encode_canonical_json([value, {"n": number}], strict=True)
    assert raised.value.strict_violation


@given(
    strict_json,
    st.integers(min_value=MAX_SAFE_INTEGER + 1) | st.integers(max_value=-MAX_SAFE_INTEGER - 1),
)
def test_strict_rejects_big_integers(value: Any, number: int) -> None:
    with pytest.raises(CanonicalJsonError) as raised:
        encode_canonical_json({"v": value, "n": [number]}, strict=True)
    assert raised.value.strict_violation
    assert json.loads(encode_canonical_json({"n": number}, strict=False)) == {"n": number}


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_lenient_floats_decode_to_the_same_number(number: float) -> None:
    encoded = encode_canonical_json({"n": number}, strict=False)
    assert json.loads(encoded)["n"] == number
    if number.is_integer():
        assert b"." not in encoded and b"e" not in encoded


# -- orjson against the standard library -------------------------------------------------
#
# The spec (appendices, "Canonical JSON") defines the form by Python's
# `json.dumps(value, ensure_ascii=False, separators=(',',':'), sort_keys=True)`: "the
# shortest UTF-8 JSON encoding with dictionary keys lexicographically sorted by Unicode
# codepoint", and its grammar escapes only `"`, `\\` and U+0000–U+001F ("unescaped =
# %x20-21 / %x23-5B / %x5D-10FFFF"), with \\b \\t \\n \\f \\r and `u000X`/`u001X` in
# lowercase hex for the rest. `encode_checked` uses orjson; these check it writes exactly
# the spec's reference encoding.

#: Characters where encoders differ: controls, DEL, the JS line separators, quotes and
#: backslashes, BMP edge cases, non-BMP (where UTF-16 order differs from code point order).
tricky_chars = st.sampled_from(
    [chr(c) for c in range(0x20)]
    + ['"', "\\", "/", "\x7f", "\x80", "\u2028", "\u2029", "\ud7ff", "\ue000", "\uffff"]
    + ["\U00010000", "\U0001f600", "\U0010ffff", "é", "日", "a", "A", "0", " "]
)
tricky_text = st.text(alphabet=tricky_chars, max_size=12) | st.text(max_size=12)
wide_integers = st.integers(min_value=-(2**64), max_value=2**64) | st.integers()
any_json = st.recursive(
    st.none() | st.booleans() | wide_integers | tricky_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(tricky_text, children, max_size=6)
    ),
    max_leaves=40,
)


def _reference(value: Any) -> bytes:
    """The spec's own Python definition of canonical JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
        "UTF-8"
    )


@settings(max_examples=300)
@given(any_json)
def test_encoding_equals_the_specs_python_definition(value: Any) -> None:
    assert encode_canonical_json(value, strict=False) == _reference(value)
    assert encode_checked(value) == _reference(value)


@settings(max_examples=300)
@given(st.dictionaries(tricky_text, st.integers(-5, 5), min_size=2, max_size=8))
def test_keys_sorted_by_code_point_not_utf16(value: dict[str, int]) -> None:
    keys = list(json.loads(encode_checked(value)))
    assert keys == sorted(value)  # Python compares str by code point
    assert keys == sorted(value, key=lambda k: k.encode("utf-8"))


def test_orjson_agrees_on_every_single_character() -> None:
    # Every code point as a key and as a value, in blocks (surrogates excepted: they are
    # not Unicode scalar values and both encoders refuse them). Within a block the keys
    # are shuffled, so the block's order is orjson's sorting, not the input's.
    codes = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(codes), 4096):
        block = codes[start : start + 4096]
        value = {chr(c): chr(c) for c in reversed(block[::2])}
        value.update({chr(c): chr(c) for c in block[1::2]})
        assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == _reference(value), hex(block[0])


def test_values_orjson_refuses_fall_back_to_json() -> None:
    huge = 2**70
    assert encode_canonical_json({"n": huge}, strict=False) == b'{"n":%d}' % huge
    assert encode_checked([-huge]) == b"[-%d]" % huge
    deep: Any = 0
    for _ in range(MAX_NESTING - 1):
        deep = {"k": deep}
    assert encode_canonical_json(deep, strict=True) == _reference(deep)


# -- the one-pass check of float-free msgpack values ---------------------------------------
#
# `encode_float_free` lets orjson check and encode a value msgpack decoded when it holds
# no float. It may refuse more than `check_json` (the caller then walks the value), but
# whatever it accepts, `check_json` must accept too, float-free, with the same bytes:
# otherwise a PDU the full check rejects would pass.

#: Everything msgpack decodes to (raw=False, strict_map_key=True) except floats: its
#: whole integer range, bytes, extension types and timestamps, bytes keys.
msgpack_float_free = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1])
    | st.sampled_from([-MAX_SAFE_INTEGER - 1, 2**63, -(2**63)])
    | tricky_text
    | st.binary(max_size=4)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32))
    | st.just(msgpack.Timestamp(1, 2)),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(tricky_text | st.binary(max_size=3), children, max_size=5)
    ),
    max_leaves=30,
)


def _checked(value: Any, strict: bool) -> bool | None:
    """`check_json`'s verdict: None when it refuses, else whether floats need rewriting."""
    try:
        return check_json(value, strict=strict)
    except CanonicalJsonError:
        return None


@settings(max_examples=500)
@given(msgpack_float_free, st.booleans())
def test_float_free_encoding_accepts_only_what_check_json_accepts(value: Any, strict: bool) -> None:
    encoded = encode_float_free(value, strict=strict)
    verdict = _checked(value, strict)
    if encoded is None:
        # Refused: only values check_json refuses too (none of these nests 255 deep).
        assert verdict is None
        return
    assert verdict is False
    assert encoded == encode_canonical_json(value, strict=strict) == _reference(value)


def test_float_free_encoding_keeps_the_strict_integer_bounds() -> None:
    """Spec (appendices, "Canonical JSON"): integers in [-(2**53)+1, (2**53)-1] only, in
    strict rooms; lenient rooms write any integer msgpack can carry."""
    for number in (MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER):
        assert encode_float_free({"n": number}, strict=True) == b'{"n":%d}' % number
    for number in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**64 - 1, -(2**63)):
        assert encode_float_free([number], strict=True) is None
        assert _checked([number], True) is None
        assert encode_float_free([number], strict=False) == b"[%d]" % number


def test_float_free_encoding_refuses_nesting_before_check_json_does() -> None:
    """orjson's nesting limit (254) is below MAX_NESTING: the values in between are
    refused here and accepted by the walk the caller then runs; deeper ones by both."""
    for levels, accepted in ((254, True), (255, False), (MAX_NESTING, False)):
        deep: Any = 0
        for _ in range(levels):
            deep = [deep]
        assert (encode_float_free(deep, strict=True) is not None) is accepted
        assert _checked(deep, True) is False
    assert _checked([deep], True) is None
    assert encode_float_free([deep], strict=True) is None
