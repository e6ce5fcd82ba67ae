"""The one exception that sends an input to the dead letter subject."""

from __future__ import annotations


class DeadLetter(Exception):
    """An input that cannot be processed, however often it is retried.

    `code` is stable (consumers of the dead letter stream match on it); `message` is a
    sentence for the person who sent the input.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
