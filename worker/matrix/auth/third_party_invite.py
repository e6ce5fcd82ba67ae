"""Verifying the identity server's signature on a third-party invite.

An `m.room.member` invite that redeems a third-party invite carries
`content.third_party_invite.signed`, a JSON object the identity server signed; the
matching `m.room.third_party_invite` event holds the identity server's public keys. Any
one valid ed25519 signature under any one of those keys is enough (auth rule
"If any signature in `signed` matches any public key ..."). Key validity URLs are the
inviting server's business, not the auth rules'.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from worker.matrix.canonical_json import CanonicalJsonError, encode_canonical_json
from worker.matrix.events import Event
from worker.matrix.hashes import decode_base64

_ED25519_PREFIX = "ed25519:"
_PUBLIC_KEY_BYTES = 32
_SIGNATURE_BYTES = 64


def signed_by_invite_keys(signed: Mapping[str, Any], invite_event: Event) -> bool:
    """True if some signature in `signed` verifies under a key of `invite_event`."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    candidates = list(_signatures(signatures))
    if not candidates:
        return False
    unsigned_part = {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
    try:
        message = encode_canonical_json(unsigned_part, strict=False)
    except CanonicalJsonError:
        return False
    for key in _public_keys(invite_event.content):
        for signature in candidates:
            try:
                key.verify(message, signature)
            except BadSignatureError:
                continue
            return True
    return False


def _signatures(signatures: Mapping[Any, Any]) -> Iterator[bytes]:
    """Every well-formed ed25519 signature, whichever entity it is filed under."""
    for per_entity in signatures.values():
        if not isinstance(per_entity, Mapping):
            continue
        for key_id, encoded in per_entity.items():
            if not isinstance(key_id, str) or not key_id.startswith(_ED25519_PREFIX):
                continue
            raw = _decode(encoded)
            if raw is not None and len(raw) == _SIGNATURE_BYTES:
                yield raw


def _public_keys(content: Mapping[str, Any]) -> Iterator[VerifyKey]:
    """The single `public_key` and every `public_keys[].public_key`, skipping bad ones."""
    encoded_keys: list[object] = [content.get("public_key")]
    listed = content.get("public_keys")
    if isinstance(listed, list):
        encoded_keys.extend(
            entry.get("public_key") for entry in listed if isinstance(entry, Mapping)
        )
    for encoded in encoded_keys:
        raw = _decode(encoded)
        if raw is not None and len(raw) == _PUBLIC_KEY_BYTES:
            yield VerifyKey(raw)


def _decode(encoded: object) -> bytes | None:
    """Unpadded base64, standard or URL-safe (identity servers have published both)."""
    if not isinstance(encoded, str):
        return None
    try:
        return decode_base64(encoded.replace("-", "+").replace("_", "/"))
    except ValueError:
        return None
