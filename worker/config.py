"""Worker configuration: a TOML file, then the environment, then validation.

Every key lives in a section and can be overridden by ``ROOMSERVER_<SECTION>_<KEY>``
(upper case), so containers and systemd units can change any setting without editing the
file. The result is frozen: the rest of the worker may hold on to it and share it between
tasks without defensive copies. ``config/README.md`` documents every key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from worker.storage.cache_budget import DEFAULT_CACHE_MB, MIN_CACHE_MB, CacheBudget

ENV_PREFIX: Final = "ROOMSERVER_"
#: More partitions than this would be more workers than any deployment runs.
MAX_PARTITIONS: Final = 1024

_STREAM_STORAGES: Final = ("file", "memory")
_RETENTIONS: Final = ("limits", "workqueue", "interest")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS: Final = ("console", "json")
_SERVER_SCHEMES: Final = ("nats", "tls", "ws", "wss")

# JetStream stream and consumer names end up in API subjects, so they may not contain
# subject separators, wildcards or whitespace; path separators are refused by the server.
_NAME_RE: Final = re.compile(r"^[^\s.*>/\\]+$")
# One subject token: anything but separators, wildcards and whitespace.
_TOKEN_RE: Final = re.compile(r"^[^\s.*>]+$")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and where it came from."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: str = "./data"
    #: MiB for every bounded cache of a worker together (the writer's states, blocks,
    #: parsed events, NID names, resolutions; the query side's states, names and
    #: encoded replies), shared out in fixed parts (worker.storage.cache_budget).
    cache_mb: int = DEFAULT_CACHE_MB

    @property
    def cache_budget(self) -> CacheBudget:
        return CacheBudget(self.cache_mb)


@dataclass(frozen=True, slots=True)
class NatsConfig:
    servers: tuple[str, ...] = ()
    listen_host: str = "127.0.0.1"
    listen_port: int = 4222
    credentials: str | None = None
    nkey_seed: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Seconds between the client's keep-alive pings; with max_outstanding_pings
    #: unanswered, the client drops the connection as stale and reconnects.
    ping_interval: int = 2
    max_outstanding_pings: int = 2
    #: Seconds NATS may be disconnected or silent before the worker reports itself not
    #: ready: long enough to ride out a restart or a failover, short enough to notice
    #: a frozen server.
    ready_grace: float = 5.0

    @property
    def embedded(self) -> bool:
        """No servers configured means the worker runs its own nats-server."""
        return not self.servers


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    subject_prefix: str = "roomserver"
    input: str = "ROOMSERVER_INPUT"
    output: str = "ROOMSERVER_OUTPUT"
    deadletter: str = "ROOMSERVER_DEADLETTER"
    storage: str = "file"
    retention: str = "limits"
    max_age: float = 0.0
    replicas: int = 1
    duplicate_window: float = 120.0


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    durable: str = "roomserver"
    # Empty means "<subject_prefix>.input.>"; load_config always fills it in.
    filter_subject: str = ""
    batch_size: int = 256
    fetch_timeout: float = 1.0
    ack_wait: float = 60.0
    # 0 means unlimited: transient faults are retried until they clear, and inputs that
    # can never succeed are dead-lettered by the worker rather than dropped by JetStream.
    max_deliver: int = 0
    max_ack_pending: int = 1024
    #: Seconds of processing (CPU time of the database thread) after which a
    #: transaction commits and its outputs are published; the inputs in hand that it
    #: did not reach go into the next one (see worker.runner.fairness). 0: no limit, a
    #: fetched batch is one transaction.
    batch_budget: float = 0.02
    #: The budget (seconds, as batch_budget) of a transaction that takes every input in
    #: hand, all of one room, so that no other room's input waits for its commit: more
    #: inputs share the cost of a commit. Inputs of other rooms fetched while it runs
    #: bring it back to batch_budget, and cheaper rooms' interrupt it as ever
    #: (worker.runner.fairness).
    #: Below batch_budget it is batch_budget.
    batch_budget_alone: float = 0.1
    #: Seconds of processing (as batch_budget) a transaction of a costlier room does, at
    #: most, while cheaper rooms' inputs wait, before it commits (after the input under
    #: way) and lets them have the next transaction (worker.runner.fairness.PATIENCE).
    #: Less: cheap inputs wait less, and the costlier room commits more often, so that
    #: it does less per second. Above batch_budget it is batch_budget.
    batch_patience: float = 0.01


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "console"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where `/metrics` and `/healthz` are served; port 0 turns the endpoint off."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 9464

    @property
    def enabled(self) -> bool:
        return self.listen_port != 0


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """How inputs are processed beyond what the contract fixes."""

    #: Seconds an event whose prev events are unknown waits for them before it is
    #: processed with the state that is known.
    held_max_wait: float = 60.0


@dataclass(frozen=True, slots=True)
class PartitionsConfig:
    """How many partitions the rooms are spread over (docs/operations.md#partitions).

    1 is the single worker of old: one consumer, one database, unpartitioned subjects.
    With N > 1 the input stream files each room under partition hash(room) mod N, and
    partition K is processed by one worker with its own consumer and its own database
    in ``<storage.path>/partition-K``.
    """

    count: int = 1

    @property
    def enabled(self) -> bool:
        return self.count > 1


@dataclass(frozen=True, slots=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    partitions: PartitionsConfig = field(default_factory=PartitionsConfig)


_SECTIONS: Final[dict[str, type[Any]]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ) -> Config:
    """Read ``path`` (if given), apply ``ROOMSERVER_<SECTION>_<KEY>`` overrides, validate.

    Raises ConfigError with a message naming the key and its source.
    """
    raw: dict[str, dict[str, tuple[Any, str]]] = {name: {} for name in _SECTIONS}
    if path is not None:
        _read_toml(Path(path), raw)
    _read_env(env, raw)
    sections = {name: _build_section(cls, name, raw[name]) for name, cls in _SECTIONS.items()}
    config = Config(**sections)
    config = _fill_defaults(config)
    _validate(config, raw)
    return config


def env_var(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def _read_toml(path: Path, raw: dict[str, dict[str, tuple[Any, str]]]) -> None:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    for section, values in data.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{path}: unknown section [{section}] (known: {', '.join(_SECTIONS)})"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
        known = _field_types(_SECTIONS[section])
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"{path}: unknown key {section}.{key} (known: {', '.join(known)})"
                )
            raw[section][key] = (value, str(path))


def _read_env(env: Mapping[str, str], raw: dict[str, dict[str, tuple[Any, str]]]) -> None:
    # Sorted so that the first error reported does not depend on the environment's order.
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            # Other ROOMSERVER_* variables (such as a CLI's ROOMSERVER_CONFIG) are not ours.
            continue
        key = rest[len(section) + 1 :]
        known = _field_types(_SECTIONS[section])
        if key not in known:
            raise ConfigError(
                f"environment variable {name}: unknown key {section}.{key} "
                f"(known: {', '.join(known)})"
            )
        raw[section][key] = (_parse_env(env[name], known[key], name), f"environment {name}")


def _field_types(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_optional(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def _parse_env(text: str, tp: Any, name: str) -> Any:
    """Environment values are strings; turn them into what the TOML would have held."""
    if _is_optional(tp):
        return None if text == "" else text
    if tp == tuple[str, ...]:
        return [item.strip() for item in text.split(",") if item.strip()]
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(
                f"environment variable {name} must be an integer, got {text!r}"
            ) from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(
                f"environment variable {name} must be a number, got {text!r}"
            ) from None
    return text


def _build_section(cls: type[Any], section: str, values: dict[str, tuple[Any, str]]) -> Any:
    types_ = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, (value, source) in values.items():
        kwargs[key] = _coerce(value, types_[key], f"{section}.{key}", source)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    where = f"{key} (from {source})"
    if _is_optional(tp):
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value or None
    if tp == tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number of seconds, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _fill_defaults(config: Config) -> Config:
    servers = tuple(_normalise_server(s) for s in config.nats.servers)
    filter_subject = config.consumer.filter_subject or f"{config.streams.subject_prefix}.input.>"
    return dataclasses.replace(
        config,
        nats=dataclasses.replace(config.nats, servers=servers),
        consumer=dataclasses.replace(config.consumer, filter_subject=filter_subject),
        log=dataclasses.replace(config.log, level=config.log.level.lower()),
    )


def _normalise_server(server: str) -> str:
    server = server.strip()
    return server if "://" in server else f"nats://{server}"


class _Checker:
    """Collects the source of each key so that errors say where a bad value came from."""

    def __init__(self, raw: dict[str, dict[str, tuple[Any, str]]]) -> None:
        self._raw = raw

    def fail(self, key: str, message: str) -> typing.NoReturn:
        section, name = key.split(".", 1)
        entry = self._raw.get(section, {}).get(name)
        source = f" (from {entry[1]})" if entry else " (default)"
        raise ConfigError(f"{key}{source}: {message}")

    def one_of(self, key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            self.fail(key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")

    def at_least(self, key: str, value: float, minimum: float) -> None:
        if value < minimum:
            self.fail(key, f"must be at least {minimum:g}, got {value:g}")

    def name(self, key: str, value: str) -> None:
        if not _NAME_RE.match(value):
            self.fail(
                key,
                f"must be a non-empty name without whitespace, '.', '*', '>', '/' or '\\', "
                f"got {value!r}",
            )

    def file(self, key: str, value: str | None) -> None:
        if value is None:
            return
        if not os.path.exists(value):
            self.fail(key, f"file {value!r} does not exist")
        if not os.path.isfile(value):
            self.fail(key, f"{value!r} is not a file")
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            self.fail(key, f"file {value!r} is not readable ({exc.strerror})")


def _validate(config: Config, raw: dict[str, dict[str, tuple[Any, str]]]) -> None:
    """Check every section in turn; the first bad value raises ConfigError."""
    check = _Checker(raw)
    for validate in _SECTION_VALIDATORS:
        validate(config, check)


def _validate_storage(config: Config, check: _Checker) -> None:
    """The database directory must be named; the caches need a few MiB to be of use."""
    if not config.storage.path:
        check.fail("storage.path", "must not be empty")
    check.at_least("storage.cache_mb", config.storage.cache_mb, MIN_CACHE_MB)


def _validate_nats_servers(config: Config, check: _Checker) -> None:
    """Server URLs and the embedded server's listen address."""
    nats = config.nats
    for server in nats.servers:
        parts = urlsplit(server)
        if parts.scheme not in _SERVER_SCHEMES:
            check.fail(
                "nats.servers",
                f"{server!r} must use one of the schemes {', '.join(_SERVER_SCHEMES)}",
            )
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            check.fail("nats.servers", f"{server!r} has an invalid port")
        if not parts.hostname:
            check.fail("nats.servers", f"{server!r} is not a server address (host:port)")
    if not nats.listen_host:
        check.fail("nats.listen_host", "must not be empty")
    if not 0 <= nats.listen_port <= 65535:
        check.fail(
            "nats.listen_port", f"must be 0 (any free port) to 65535, got {nats.listen_port}"
        )


def _validate_nats_auth(config: Config, check: _Checker) -> None:
    """Credentials and TLS: pairs given together, one method at a time, readable files."""
    nats = config.nats
    if (nats.user is None) != (nats.password is None):
        check.fail(
            "nats.user" if nats.user is None else "nats.password",
            "nats.user and nats.password must be given together",
        )
    if nats.token is not None and nats.user is not None:
        check.fail("nats.token", "use either nats.token or nats.user/nats.password, not both")
    if nats.credentials is not None and nats.nkey_seed is not None:
        check.fail("nats.nkey_seed", "use either nats.credentials or nats.nkey_seed, not both")
    if (nats.tls_cert is None) != (nats.tls_key is None):
        check.fail(
            "nats.tls_cert" if nats.tls_cert is None else "nats.tls_key",
            "nats.tls_cert and nats.tls_key must be given together",
        )
    if nats.embedded:
        for key in ("credentials", "nkey_seed", "tls_ca", "tls_cert", "tls_key"):
            if getattr(nats, key) is not None:
                check.fail(
                    f"nats.{key}",
                    "needs nats.servers: the embedded server supports only user/password "
                    "or token authentication, without TLS",
                )
    for key in ("credentials", "nkey_seed", "tls_ca", "tls_cert", "tls_key"):
        check.file(f"nats.{key}", getattr(nats, key))
    check.at_least("nats.ping_interval", nats.ping_interval, 1)
    check.at_least("nats.max_outstanding_pings", nats.max_outstanding_pings, 1)
    if nats.ready_grace <= 0:
        check.fail("nats.ready_grace", f"must be positive, got {nats.ready_grace:g}")


def _validate_streams(config: Config, check: _Checker) -> None:
    """Subject prefix, stream names and the streams' limits."""
    streams = config.streams
    prefix = streams.subject_prefix
    if not prefix or not all(_TOKEN_RE.match(token) for token in prefix.split(".")):
        check.fail(
            "streams.subject_prefix",
            f"must be dot-separated subject tokens without wildcards or whitespace, got {prefix!r}",
        )
    for key in ("input", "output", "deadletter"):
        check.name(f"streams.{key}", getattr(streams, key))
    if len({streams.input, streams.output, streams.deadletter}) != 3:
        check.fail("streams.input", "the input, output and dead letter streams need distinct names")
    check.one_of("streams.storage", streams.storage, _STREAM_STORAGES)
    check.one_of("streams.retention", streams.retention, _RETENTIONS)
    check.at_least("streams.max_age", streams.max_age, 0)
    if not 1 <= streams.replicas <= 5:
        check.fail("streams.replicas", f"must be 1 to 5, got {streams.replicas}")
    check.at_least("streams.duplicate_window", streams.duplicate_window, 0)
    if 0 < streams.max_age < streams.duplicate_window:
        check.fail(
            "streams.duplicate_window",
            f"must not exceed streams.max_age ({streams.max_age:g} s), "
            f"got {streams.duplicate_window:g} s",
        )


def _validate_consumer(config: Config, check: _Checker) -> None:
    """The durable input consumer: its filter must lie under the input subjects."""
    consumer = config.consumer
    check.name("consumer.durable", consumer.durable)
    input_root = f"{config.streams.subject_prefix}.input."
    rest = consumer.filter_subject.removeprefix(input_root)
    if (
        rest == consumer.filter_subject
        or not rest
        or not all(_TOKEN_RE.match(t) or t in ("*", ">") for t in rest.split("."))
        or ">" in rest.split(".")[:-1]
    ):
        check.fail(
            "consumer.filter_subject",
            f"must be a subject under {input_root}> (the input stream), "
            f"got {consumer.filter_subject!r}",
        )
    check.at_least("consumer.batch_size", consumer.batch_size, 1)
    if consumer.fetch_timeout <= 0:
        check.fail("consumer.fetch_timeout", f"must be positive, got {consumer.fetch_timeout:g}")
    if consumer.ack_wait <= 0:
        check.fail("consumer.ack_wait", f"must be positive, got {consumer.ack_wait:g}")
    check.at_least("consumer.max_deliver", consumer.max_deliver, 0)
    check.at_least("consumer.batch_budget", consumer.batch_budget, 0)
    check.at_least("consumer.batch_budget_alone", consumer.batch_budget_alone, 0)
    if consumer.batch_patience <= 0:
        check.fail("consumer.batch_patience", f"must be positive, got {consumer.batch_patience:g}")
    if consumer.max_deliver == 1:
        check.fail("consumer.max_deliver", "1 would never redeliver; use 0 (unlimited) or >= 2")
    if consumer.max_ack_pending < consumer.batch_size:
        check.fail(
            "consumer.max_ack_pending",
            f"must be at least consumer.batch_size ({consumer.batch_size}), "
            f"got {consumer.max_ack_pending}",
        )


def _validate_log(config: Config, check: _Checker) -> None:
    """Level and format must be ones the logging set-up knows."""
    check.one_of("log.level", config.log.level, _LOG_LEVELS)
    check.one_of("log.format", config.log.format, _LOG_FORMATS)


def _validate_partitions(config: Config, check: _Checker) -> None:
    """The partition count, within what the subject mapping supports."""
    if not 1 <= config.partitions.count <= MAX_PARTITIONS:
        check.fail(
            "partitions.count", f"must be 1 to {MAX_PARTITIONS}, got {config.partitions.count}"
        )


def _validate_pipeline(config: Config, check: _Checker) -> None:
    """How long held events may wait."""
    if config.pipeline.held_max_wait < 0:
        check.fail("pipeline.held_max_wait", "must be 0 or more seconds")


def _validate_metrics(config: Config, check: _Checker) -> None:
    """The metrics endpoint's listen address."""
    if not config.metrics.listen_host:
        check.fail("metrics.listen_host", "must not be empty")
    if not 0 <= config.metrics.listen_port <= 65535:
        check.fail(
            "metrics.listen_port",
            f"must be 0 (no endpoint) to 65535, got {config.metrics.listen_port}",
        )


_SECTION_VALIDATORS: Final[tuple[Callable[[Config, _Checker], None], ...]] = (
    _validate_storage,
    _validate_nats_servers,
    _validate_nats_auth,
    _validate_streams,
    _validate_consumer,
    _validate_log,
    _validate_partitions,
    _validate_pipeline,
    _validate_metrics,
)


def partition_directory(storage_path: str | os.PathLike[str], partition: int) -> Path:
    """Partition ``partition``'s storage directory: ``<storage.path>/partition-K``."""
    return Path(storage_path) / f"partition-{partition}"


def for_partition(config: Config, partition: int) -> Config:
    """The configuration of the worker of one partition: its own database directory,
    its own durable consumer (``<durable>-K``) filtering the partition's inputs.

    ConfigError when the configuration has no partitions or ``partition`` is not one of
    them, naming the setting.
    """
    count = config.partitions.count
    if count < 2:
        raise ConfigError(
            f"--partition {partition} needs partitions.count of 2 or more "
            f"(ROOMSERVER_PARTITIONS_COUNT), got {count}"
        )
    if not 0 <= partition < count:
        raise ConfigError(
            f"--partition must be 0 to {count - 1} (partitions.count is {count}), got {partition}"
        )
    prefix = config.streams.subject_prefix
    return dataclasses.replace(
        config,
        storage=dataclasses.replace(
            config.storage, path=str(partition_directory(config.storage.path, partition))
        ),
        consumer=dataclasses.replace(
            config.consumer,
            durable=f"{config.consumer.durable}-{partition}",
            filter_subject=f"{prefix}.input.{partition}.*",
        ),
    )


def check_storage_writable(path: str | os.PathLike[str]) -> None:
    """Raise ConfigError unless the worker can create files in ``path`` (created if missing).

    Checked before anything starts, so that a wrong `storage.path` is one line naming
    the setting rather than a failure deep inside SQLite or nats-server. A file is
    created and removed, because permission bits alone do not tell (root, ACLs,
    read-only mounts).
    """
    directory = Path(path)
    try:
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"storage.path {directory} is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"storage.path {directory} is not writable ({reason})") from None
