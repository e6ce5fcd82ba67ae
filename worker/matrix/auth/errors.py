"""The one exception every authorization rule raises."""

from __future__ import annotations


class AuthError(Exception):
    """An event failed an authorization rule.

    `reason` is a sentence for a person reading the `rejected_event` output: it names the
    rule, the sender and what was missing, so the reader can tell what to change (a power
    level, a membership, a malformed field) without reading this code.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
