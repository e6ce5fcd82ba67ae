"""Content hashes, reference hashes and event IDs (server-server API, "Signing Events").

The *content hash* covers the whole event except `unsigned`, `signatures` and `hashes`, so a
receiver can tell it was given a redacted copy. The *reference hash* covers the redacted
event (minus `signatures` and `unsigned`) and names the event from room version 3 on.

One deliberate choice: for room versions 3 and later an `event_id` key in the PDU is left
out of both hashes. Those formats have no `event_id` field (the ID *is* the hash, so a PDU
cannot contain its own), yet publishers may attach the ID they computed; hashing it would
make every such event look tampered with. `worker.matrix.pdu` checks that claim against the
computed ID and removes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, MutableMapping
from typing import Any

from worker.matrix.canonical_json import encode_canonical_json, encode_checked
from worker.matrix.redaction import kept_top_level, redact
from worker.matrix.room_versions import EventIdFormat, RoomVersion

_NOT_IN_CONTENT_HASH = ("unsigned", "signatures", "hashes")
_NOT_IN_REFERENCE_HASH = frozenset(("unsigned", "signatures"))
_NOT_IN_REFERENCE_HASH_V3 = frozenset(("unsigned", "signatures", "event_id"))
#: The standard alphabet's two last digits as the URL-safe alphabet writes them.
_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def encode_base64(raw: bytes, *, url_safe: bool = False) -> str:
    """Unpadded base64 (appendices, "Unpadded Base64"), standard or URL-safe alphabet."""
    # binascii directly: the `base64` module's wrappers cost as much again per event ID.
    encoded = binascii.b2a_base64(raw, newline=False).rstrip(b"=")
    if url_safe:
        encoded = encoded.translate(_URL_SAFE)
    return encoded.decode("ascii")


def decode_base64(text: str) -> bytes:
    """Decode standard base64 with or without padding, as the spec asks decoders to.

    Raises ValueError for anything that is not base64.
    """
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("base64 text has an impossible length")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise ValueError(f"not base64: {exc}") from None


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def content_hash(pdu: Mapping[str, Any], *, strict: bool) -> bytes:
    """The raw SHA-256 content hash of a PDU.

    Raises CanonicalJsonError when the PDU cannot be encoded under the chosen rules.
    """
    return _sha256(encode_canonical_json(content_hash_view(pdu), strict=strict))


def content_hash_view(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a PDU the content hash covers (a new dict; values are shared).

    Its keys are in no particular order: canonical JSON sorts them."""
    view = dict(pdu)  # a copy in C, then three deletions: no loop over the keys
    for key in _NOT_IN_CONTENT_HASH:
        view.pop(key, None)
    return view


def expected_content_hash(pdu: Mapping[str, Any]) -> bytes | None:
    """The decoded `hashes.sha256` of a PDU, or None when it is missing or malformed."""
    hashes = pdu.get("hashes")
    if type(hashes) is not dict and not isinstance(hashes, Mapping):
        return None
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return None
    try:
        return decode_base64(claimed)
    except ValueError:
        return None


def content_hash_matches(pdu: Mapping[str, Any], room_version: RoomVersion) -> bool:
    """Whether `hashes.sha256` equals the content hash; False when missing or malformed."""
    expected = expected_content_hash(pdu)
    if expected is None:
        return False
    return expected == content_hash(pdu, strict=room_version.strict_canonical_json)


#: `_reference_hash_keys` by room version identifier.
_REFERENCE_HASH_KEYS: dict[str, frozenset[str]] = {}


def _reference_hash_keys(room_version: RoomVersion) -> frozenset[str]:
    """The top-level keys the reference hash covers: those redaction keeps, less
    `signatures` (and `event_id` from v3, see the module's docstring)."""
    keys = _REFERENCE_HASH_KEYS.get(room_version.identifier)
    if keys is None:
        excluded = (
            _NOT_IN_REFERENCE_HASH
            if room_version.event_id_format is EventIdFormat.LEGACY
            else _NOT_IN_REFERENCE_HASH_V3
        )
        keys = _REFERENCE_HASH_KEYS[room_version.identifier] = (
            kept_top_level(room_version) - excluded
        )
    return keys


def _reference_hash_view(pdu: Mapping[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """The redacted event without signatures and unsigned (in no particular key order:
    canonical JSON sorts)."""
    return redact(pdu, room_version, keep=_reference_hash_keys(room_version))


def reference_hash(pdu: Mapping[str, Any], room_version: RoomVersion) -> bytes:
    """The raw SHA-256 reference hash: the redacted event without signatures and unsigned.

    Raises CanonicalJsonError when the PDU cannot be encoded under the version's rules.
    """
    view = _reference_hash_view(pdu, room_version)
    return _sha256(encode_canonical_json(view, strict=room_version.strict_canonical_json))


def reference_hash_unchecked(pdu: Mapping[str, Any], room_version: RoomVersion) -> bytes:
    """`reference_hash` for a PDU already known to encode as is."""
    return _sha256(encode_checked(_reference_hash_view(pdu, room_version)))


def event_id_from_reference_hash(digest: bytes, room_version: RoomVersion) -> str:
    """Format a reference hash as the event ID of a v3+ room."""
    if room_version.event_id_format is EventIdFormat.BASE64:
        return "$" + encode_base64(digest)
    if room_version.event_id_format is EventIdFormat.URL_SAFE:
        return "$" + encode_base64(digest, url_safe=True)
    raise ValueError(f"room version {room_version.identifier} does not derive event IDs")


def compute_event_id(pdu: Mapping[str, Any], room_version: RoomVersion) -> str:
    """The event's ID: the `event_id` field in v1–2, the encoded reference hash from v3.

    Raises ValueError for a v1–2 PDU without a string `event_id`.
    """
    if room_version.event_id_format is EventIdFormat.LEGACY:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str):
            raise ValueError("room versions 1 and 2 carry the event ID in `event_id`")
        return event_id
    return event_id_from_reference_hash(reference_hash(pdu, room_version), room_version)


def add_content_hash(pdu: MutableMapping[str, Any], room_version: RoomVersion) -> None:
    """Set `hashes.sha256` on an event being built (after every other field is final)."""
    digest = content_hash(pdu, strict=room_version.strict_canonical_json)
    pdu["hashes"] = {"sha256": encode_base64(digest)}


def reference_hash_pair(pdu: Mapping[str, Any], room_version: RoomVersion) -> list[Any]:
    """A v1–2 `prev_events`/`auth_events` entry: ``[event_id, {"sha256": reference hash}]``."""
    digest = reference_hash(pdu, room_version)
    return [compute_event_id(pdu, room_version), {"sha256": encode_base64(digest)}]
