"""Shared fixtures: one real nats-server for the session, isolated names per test.

Starting nats-server takes a few tens of milliseconds, but a server per test would still
dominate a fast suite, so the server lives for the whole session and each test gets its
own subject prefix, stream names and durable consumer name (and its streams are deleted
afterwards). JetStream storage is in memory for speed; the server's own store directory
is a temporary directory.

Also here: the hook that marks every test unit, nats, oracle or faults, and the `fast`
Hypothesis profile. The harnesses are in tests/harness/; tests/README.md says which is for
what and how to run a subset.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.harness.markers import mark, unselectable
from worker.bus.connection import connect
from worker.bus.server import EmbeddedNatsServer
from worker.config import Config, load_config

# No per-example deadline (Hypothesis's default is 200 ms of wall time): on a shared CI
# machine, and beside the second pytest-xdist process of `make test`, one slow example
# says how busy the machine was, not whether the property holds. Every example still runs
# and its assertions still fail the test.
settings.register_profile("suite", deadline=None)
# `make test-fast` sets HYPOTHESIS_PROFILE=fast: property tests that keep Hypothesis's
# default example count run 20 examples instead of 100. Tests that set their own count
# keep it; the heaviest of those are marked `slow` and left out of test-fast instead.
settings.register_profile("fast", parent=settings.get_profile("suite"), max_examples=20)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

#: The pytest-xdist group (``make test`` runs ``--dist loadgroup``) of the tests that
#: drive worker processes and nats-servers through faults, and of those that assert on
#: elapsed time (marked ``timing``): one process runs them all, one after another, so
#: no two of them compete for the CPU or elect cluster leaders at once, and the
#: fault tests' once-per-session reference run is computed once.
SERIAL_GROUP = "faults-and-timing"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedNatsServer]:
    """A real nats-server with JetStream on a free loopback port.

    It is a child process not bound to any event loop, so tests running in their own
    loops can connect to ``nats_server.url``.
    """
    async with EmbeddedNatsServer(tmp_path_factory.mktemp("nats"), port=0) as server:
        yield server


@pytest.fixture
def config(nats_server: EmbeddedNatsServer, tmp_path: Path) -> Config:
    """A configuration pointing at the session's server, with names unique to this test.

    Storage is a fresh temporary directory; streams are in memory. Tests that need other
    settings derive them with dataclasses.replace.
    """
    tag = uuid.uuid4().hex[:12]
    env = {
        "ROOMSERVER_STORAGE_PATH": str(tmp_path / "data"),
        "ROOMSERVER_NATS_SERVERS": nats_server.url,
        "ROOMSERVER_STREAMS_SUBJECT_PREFIX": f"rs{tag}",
        "ROOMSERVER_STREAMS_INPUT": f"RS{tag}_INPUT",
        "ROOMSERVER_STREAMS_OUTPUT": f"RS{tag}_OUTPUT",
        "ROOMSERVER_STREAMS_DEADLETTER": f"RS{tag}_DEADLETTER",
        "ROOMSERVER_STREAMS_STORAGE": "memory",
        "ROOMSERVER_CONSUMER_DURABLE": f"rs{tag}",
        "ROOMSERVER_CONSUMER_FETCH_TIMEOUT": "0.5",
        "ROOMSERVER_LOG_LEVEL": "debug",
        # In-process workers must not compete for the default metrics port.
        "ROOMSERVER_METRICS_LISTEN_PORT": "0",
    }
    return load_config(None, env)


@pytest_asyncio.fixture
async def nc(config: Config) -> AsyncIterator[NATS]:
    """A connection (made by worker.bus.connect) to the session's server."""
    connection = await connect(config.nats)
    try:
        yield connection
    finally:
        await connection.close()


@pytest_asyncio.fixture
async def js(nc: NATS, config: Config) -> AsyncIterator[JetStreamContext]:
    """A JetStream context; the test's streams are deleted afterwards."""
    context = nc.jetstream()
    try:
        yield context
    finally:
        streams = config.streams
        for name in (streams.input, streams.output, streams.deadletter):
            with contextlib.suppress(NotFoundError):
                await context.delete_stream(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test unit, nats, oracle or faults (tests/harness/markers.py says how);
    put fault and timing tests in one pytest-xdist group (`SERIAL_GROUP`)."""
    mark(items)
    for item in items:
        if item.get_closest_marker("faults") or item.get_closest_marker("timing"):
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m unit`` (``make test-fast``), modules whose tests are all oracle or
    faults tests are not even imported: no Synapse import, a quicker collection."""
    return True if unselectable(collection_path, config.option.markexpr) else None
