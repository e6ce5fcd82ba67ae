"""Small helpers for the bus tests."""

from __future__ import annotations

import dataclasses

from worker.config import Config


def with_section(config: Config, section: str, **changes: object) -> Config:
    """``config`` with some keys of one section replaced."""
    return dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **changes)}
    )
