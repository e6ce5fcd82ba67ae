"""Stream creation at start-up and the report on streams that disagree."""

from __future__ import annotations

from nats.js import JetStreamContext, api
from structlog.testing import capture_logs

from tests.bus.helpers import with_section
from worker.bus.streams import StreamDifference, ensure_streams
from worker.config import Config


async def test_creates_the_three_streams(js: JetStreamContext, config: Config) -> None:
    config = with_section(config, "streams", max_age=3600.0, duplicate_window=30.0)
    assert await ensure_streams(js, config) == []
    prefix = config.streams.subject_prefix
    expected = {
        config.streams.input: f"{prefix}.input.>",
        config.streams.output: f"{prefix}.output.>",
        config.streams.deadletter: f"{prefix}.deadletter.>",
    }
    for name, subject in expected.items():
        info = await js.stream_info(name)
        assert info.config.subjects == [subject]
        assert info.config.storage == api.StorageType.MEMORY
        assert info.config.retention == api.RetentionPolicy.LIMITS
        assert info.config.max_age == 3600.0
        assert info.config.duplicate_window == 30.0
        assert info.config.num_replicas == 1


async def test_second_run_changes_nothing(js: JetStreamContext, config: Config) -> None:
    await ensure_streams(js, config)
    with capture_logs() as logs:
        assert await ensure_streams(js, config) == []
    assert not [entry for entry in logs if entry["log_level"] == "warning"]


async def test_mismatch_is_reported_per_field_and_not_changed(
    js: JetStreamContext, config: Config
) -> None:
    streams = config.streams
    await js.add_stream(
        name=streams.input,
        subjects=[f"{streams.subject_prefix}.input.>"],
        storage=api.StorageType.MEMORY,
        retention=api.RetentionPolicy.WORK_QUEUE,
        max_age=60.0,
        duplicate_window=10.0,
    )
    with capture_logs() as logs:
        differences = await ensure_streams(js, config)
    assert sorted(differences, key=lambda d: d.field) == [
        StreamDifference(streams.input, "duplicate_window", 120.0, 10.0),
        StreamDifference(streams.input, "max_age", 0.0, 60.0),
        StreamDifference(streams.input, "retention", "limits", "workqueue"),
    ]
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert sorted(w["field"] for w in warnings) == ["duplicate_window", "max_age", "retention"]
    assert all(w["stream"] == streams.input for w in warnings)
    info = await js.stream_info(streams.input)
    assert info.config.retention == api.RetentionPolicy.WORK_QUEUE
    assert info.config.max_age == 60.0
    # The missing streams were still created.
    await js.stream_info(streams.output)
    await js.stream_info(streams.deadletter)


async def test_subject_and_storage_mismatch(js: JetStreamContext, config: Config) -> None:
    streams = config.streams
    await js.add_stream(
        name=streams.output,
        subjects=[f"{streams.subject_prefix}.elsewhere.>"],
        storage=api.StorageType.FILE,
    )
    differences = await ensure_streams(js, config)
    assert {d.field for d in differences} == {"subjects", "storage"}
    by_field = {d.field: d for d in differences}
    assert by_field["storage"].configured == "memory"
    assert by_field["storage"].actual == "file"
