"""What the benchmarks share: the environment that points a worker at a benchmark's
own streams, so scenarios in one nats-server never see each other's messages."""

from __future__ import annotations

from pathlib import Path


def worker_env(url: str, storage: Path, prefix: str, **extra: str) -> dict[str, str]:
    """ROOMSERVER_* variables for a worker on `url` with streams named after `prefix`.

    No metrics endpoint: several workers (or restarts) must not fight over its port.
    `extra` adds or overrides variables (keys without the ROOMSERVER_ prefix).
    """
    env = {
        "ROOMSERVER_STORAGE_PATH": str(storage),
        "ROOMSERVER_NATS_SERVERS": url,
        "ROOMSERVER_STREAMS_SUBJECT_PREFIX": prefix.lower(),
        "ROOMSERVER_STREAMS_INPUT": f"{prefix.upper()}_INPUT",
        "ROOMSERVER_STREAMS_OUTPUT": f"{prefix.upper()}_OUTPUT",
        "ROOMSERVER_STREAMS_DEADLETTER": f"{prefix.upper()}_DEADLETTER",
        "ROOMSERVER_CONSUMER_DURABLE": prefix.lower(),
        "ROOMSERVER_LOG_FORMAT": "json",
        "ROOMSERVER_METRICS_LISTEN_PORT": "0",
    }
    env.update({f"ROOMSERVER_{key.upper()}": value for key, value in extra.items()})
    return env
