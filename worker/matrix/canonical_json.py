"""Canonical JSON, the byte form that Matrix hashes and signatures are computed over.

The spec (appendices, "Canonical JSON") defines it as the shortest UTF-8 JSON encoding with
object keys sorted by code point, integers only, in ``[-(2**53)+1, 2**53-1]``. Room
versions 6 and later enforce that strictly: an event breaking it is dropped. Versions 1–5
may carry events that break it (the spec's warning says servers SHOULD cope), so there the
encoding is lenient:

- integers of any size are written out in full;
- a float with no fractional part (``1e10``, ``-0.0``, ``50.0``) is written as the integer it
  equals, which is what the spec's own example (``{"a": -0, "b": 1e10}`` becomes
  ``{"a":0,"b":10000000000}``) requires;
- any other finite float is written as Python's shortest round-trip form (``50.57``,
  ``1e-07``), the form Synapse's ``canonicaljson`` produced for old floaty power levels.
  The spec defines no canonical form for these, so this is a compatibility choice.

Not every Python value is JSON. Bytes, sets, NaN, infinities, non-string object keys,
strings that are not valid Unicode (lone surrogates) and nesting deeper than
`MAX_NESTING` are rejected in every mode. Only exact JSON types (and subclasses of them)
are accepted; msgpack decodes to exactly these, plus bytes and extension types.

The encoding is done by `orjson` (compiled) when it gives exactly the canonical bytes,
and by the standard library's C encoder otherwise. Neither can reject floats or
out-of-range integers, and `json` silently turns ``{1: x}`` into ``{"1": x}``, so a single
walk over the value checks those first. For float-free values `orjson` with sorted keys
writes the bytes the spec's grammar allows and nothing else (tests/matrix/
test_canonical_json.py compares it with `json` on arbitrary values, non-BMP keys, control
characters, U+007F and U+2028 included):

- keys sorted by UTF-8 bytes, which is the same order as by code point (UTF-8 preserves
  code point order; only UTF-16 order differs, for characters beyond U+FFFF);
- `"` and `\\` escaped, `\\b \\t \\n \\f \\r` short forms, other U+0000–U+001F as `\\u00xx`
  in lowercase hex, everything else (U+007F, U+2028, non-ASCII) written as UTF-8.

Where the two differ the `json` path is taken: a value holding floats (lenient rooms only;
`orjson` writes ``1e-7`` where Python's shortest form is ``1e-07``), and anything `orjson`
refuses (integers beyond 64 bits, deep nesting, lone surrogates), whose errors are then
`json`'s.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

#: Largest magnitude of an integer in strict canonical JSON (2**53 - 1).
MAX_SAFE_INTEGER = 2**53 - 1
#: Objects and arrays nested deeper than this are refused: it keeps the check walk and the
#: C encoder far from Python's recursion limit, and no Matrix event needs it.
MAX_NESTING = 256

_ENCODE = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    check_circular=False,
    separators=(",", ":"),
    sort_keys=True,
).encode
_ORJSON_SORTED = orjson.OPT_SORT_KEYS
_ORJSON_STRICT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


class CanonicalJsonError(ValueError):
    """A value that cannot be encoded as (strict) canonical JSON.

    `strict_violation` is True when the value is JSON that only the strict rules of room
    versions 6 and later refuse (a float, an integer out of range), so callers can tell
    "not canonical" from "not JSON at all".
    """

    def __init__(self, message: str, *, strict_violation: bool = False) -> None:
        super().__init__(message)
        self.strict_violation = strict_violation


def encode_canonical_json(value: Any, *, strict: bool) -> bytes:
    """Encode `value` as canonical JSON bytes, raising `CanonicalJsonError` if it cannot be.

    `strict` selects the room-version 6+ rules (no floats, integers within ±(2**53-1)).
    """
    if check_json(value, strict=strict):
        return _encode_with_json(_normalise_floats(value))
    return encode_checked(value)


def check_json(value: Any, *, strict: bool) -> bool:
    """Check that `value` is encodable under the chosen rules, without encoding it.

    Returns True when the value holds floats (only the lenient rules let them through):
    such a value must go through `encode_canonical_json`, which writes whole floats as
    integers and the others in Python's shortest form, not through `encode_checked`.
    """
    try:
        return _check(value, strict, 0)
    except RecursionError:
        raise CanonicalJsonError("JSON value is nested too deeply") from None


def encode_checked(value: Any) -> bytes:
    """Encode a value that `check_json` has already accepted and found free of floats.

    Parts of an already-checked document are valid too, so callers that hash several
    views of one PDU check it once and then use this for each view.
    """
    try:
        return orjson.dumps(value, option=_ORJSON_SORTED)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits (lenient rooms), nesting orjson refuses, lone surrogates,
        # types it does not know: `json` encodes the first two and words the errors.
        return _encode_with_json(value)


def encode_float_free(value: Any, *, strict: bool) -> bytes | None:
    """Check and encode, in one pass in C, a value that holds no float and nothing but
    the types msgpack decodes to (dict, list, str, int, bool, None, bytes, extension
    types): its canonical JSON, or None when it may not be canonical JSON.

    For such a value orjson refuses all that `check_json` refuses (and a little more,
    never less): integers beyond ±(2**53-1) under `strict` (`OPT_STRICT_INTEGER`, the same
    bound), keys that are not strings, bytes and extension types, and nesting beyond
    254 levels (`MAX_NESTING` is 256). Floats, which orjson would write (NaN as
    ``null``), are the caller's promise to exclude. On None the caller runs
    `check_json`, which gives the reason, or accepts the rare value nested 255 or 256
    levels deep.
    """
    try:
        return orjson.dumps(value, option=_ORJSON_STRICT if strict else _ORJSON_SORTED)
    except orjson.JSONEncodeError:
        return None


def _encode_with_json(value: Any) -> bytes:
    """The standard library's encoder: the fallback, and the only one for floats."""
    try:
        return _ENCODE(value).encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalJsonError("JSON string is not valid Unicode (lone surrogate)") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise CanonicalJsonError(f"value is not JSON: {exc}") from None


def _check(value: Any, strict: bool, depth: int) -> bool:
    """Walk one container (or scalar); return whether whole floats need rewriting."""
    kind = type(value)
    if kind is dict:
        for key in value:
            if type(key) is not str and not isinstance(key, str):
                raise CanonicalJsonError(
                    f"JSON object keys must be strings, not {type(key).__name__}"
                )
        children: Any = value.values()
    elif kind is list or kind is tuple:
        children = value
    else:
        return _check_scalar(value, strict, depth)
    if depth >= MAX_NESTING:
        raise CanonicalJsonError(f"JSON value is nested more than {MAX_NESTING} levels deep")
    rewrite = False
    for child in children:
        child_kind = type(child)
        # Inline the common scalars: most of an event is strings and small integers.
        if child_kind is str or child_kind is bool or child is None:
            continue
        if child_kind is int:
            if strict and not -MAX_SAFE_INTEGER <= child <= MAX_SAFE_INTEGER:
                raise _out_of_range(child)
            continue
        if _check(child, strict, depth + 1):
            rewrite = True
    return rewrite


def _check_scalar(value: Any, strict: bool, depth: int) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return False
    if kind is int:
        if strict and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _out_of_range(value)
        return False
    if kind is float:
        if not math.isfinite(value):
            raise CanonicalJsonError(f"{value!r} is not a JSON number")
        if strict:
            raise CanonicalJsonError(
                f"float {value!r} is not allowed in canonical JSON (room version 6+)",
                strict_violation=True,
            )
        return True
    # Subclasses of the JSON types (rare: enums, OrderedDict) take the slow path.
    if isinstance(value, dict):
        return _check(dict(value), strict, depth)
    if isinstance(value, list | tuple):
        return _check(list(value), strict, depth)
    if isinstance(value, bool | str):
        return False
    if isinstance(value, int):
        return _check_scalar(int(value), strict, depth)
    if isinstance(value, float):
        return _check_scalar(float(value), strict, depth)
    raise CanonicalJsonError(f"{type(value).__name__} is not a JSON type")


def _out_of_range(value: int) -> CanonicalJsonError:
    return CanonicalJsonError(
        f"integer {value} is outside canonical JSON's range ±(2**53-1) (room version 6+)",
        strict_violation=True,
    )


def _normalise_floats(value: Any) -> Any:
    """Copy `value` with whole-number floats replaced by ints (the lenient, rare path)."""
    if isinstance(value, dict):
        return {key: _normalise_floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise_floats(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
