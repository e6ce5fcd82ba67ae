"""Create the contract's three streams at start-up, and never silently change them.

Streams are shared with publishers and consumers, and changing one (retention above all)
can drop messages, so an existing stream that disagrees with the configuration is left
as it is and every differing setting is reported for an operator to decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import structlog
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from worker.bus.subjects import Subjects
from worker.config import Config

log = structlog.get_logger("worker.bus.streams")

_STREAM_NAME_IN_USE: Final = 10058


@dataclass(frozen=True, slots=True)
class StreamDifference:
    """One setting of an existing stream that is not what the configuration asks for."""

    stream: str
    field: str
    configured: Any
    actual: Any


def stream_configs(config: Config) -> list[api.StreamConfig]:
    """The stream definitions the configuration asks for: input, output, dead letters."""
    streams = config.streams
    subjects = Subjects(streams.subject_prefix)
    partitions = config.partitions.count
    configs = [
        api.StreamConfig(
            name=name,
            subjects=[subject],
            retention=api.RetentionPolicy(streams.retention),
            storage=api.StorageType(streams.storage),
            max_age=streams.max_age,
            num_replicas=streams.replicas,
            # 0 asks the server for its default window.
            duplicate_window=streams.duplicate_window,
        )
        for name, subject in (
            (streams.input, subjects.input_wildcard),
            (streams.output, subjects.output_wildcard),
            (streams.deadletter, subjects.deadletter_wildcard),
        )
    ]
    if partitions > 1:
        # NATS files each input under its room's partition as it stores it: publishers
        # keep publishing to <prefix>.input.<room>, each partition's consumer filters
        # <prefix>.input.<K>.* (docs/operations.md#partitions).
        configs[0].subjects = [subjects.input_any]
        configs[0].subject_transform = api.SubjectTransform(
            src=subjects.input_any, dest=subjects.input_transform_destination(partitions)
        )
    return configs


def compare_stream(wanted: api.StreamConfig, actual: api.StreamConfig) -> list[StreamDifference]:
    """Every setting the worker manages on which ``actual`` differs from ``wanted``."""
    name = wanted.name or ""
    differences: list[StreamDifference] = []

    def differ(field: str, configured: Any, existing: Any) -> None:
        differences.append(StreamDifference(name, field, configured, existing))

    if sorted(wanted.subjects or []) != sorted(actual.subjects or []):
        differ("subjects", wanted.subjects, actual.subjects)
    if _transform(wanted) != _transform(actual):
        differ("subject_transform", _transform(wanted), _transform(actual))
    if wanted.retention != actual.retention:
        differ("retention", _enum_value(wanted.retention), _enum_value(actual.retention))
    if wanted.storage != actual.storage:
        differ("storage", _enum_value(wanted.storage), _enum_value(actual.storage))
    if not _same_seconds(wanted.max_age, actual.max_age):
        differ("max_age", wanted.max_age or 0.0, actual.max_age or 0.0)
    if (wanted.num_replicas or 1) != (actual.num_replicas or 1):
        differ("replicas", wanted.num_replicas or 1, actual.num_replicas or 1)
    if wanted.duplicate_window and not _same_seconds(
        wanted.duplicate_window, actual.duplicate_window
    ):
        differ("duplicate_window", wanted.duplicate_window, actual.duplicate_window)
    return differences


async def ensure_streams(js: JetStreamContext, config: Config) -> list[StreamDifference]:
    """Create missing streams; log (and return) how existing ones differ from the config."""
    differences: list[StreamDifference] = []
    for wanted in stream_configs(config):
        assert wanted.name is not None
        info = await _existing(js, wanted.name)
        if info is None:
            try:
                await js.add_stream(wanted)
            except BadRequestError as exc:
                # Another worker created it between our look-up and our create.
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                info = await js.stream_info(wanted.name)
            else:
                log.info(
                    "created stream",
                    stream=wanted.name,
                    subjects=wanted.subjects,
                    storage=_enum_value(wanted.storage),
                    retention=_enum_value(wanted.retention),
                )
                continue
        found = compare_stream(wanted, info.config)
        for difference in found:
            log.warning(
                "existing stream differs from the configuration; leaving it unchanged",
                stream=difference.stream,
                field=difference.field,
                configured=difference.configured,
                actual=difference.actual,
            )
        differences.extend(found)
    return differences


async def _existing(js: JetStreamContext, name: str) -> api.StreamInfo | None:
    try:
        return await js.stream_info(name)
    except NotFoundError:
        return None


def _transform(config: api.StreamConfig) -> tuple[str, str] | None:
    transform = config.subject_transform
    return None if transform is None else (transform.src, transform.dest)


def _same_seconds(a: float | None, b: float | None) -> bool:
    # The server keeps nanoseconds; the client converts them to float seconds.
    return math.isclose(a or 0.0, b or 0.0, rel_tol=0, abs_tol=1e-6)


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)
