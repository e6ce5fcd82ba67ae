"""The worker's NATS connection: every configured server, its credentials, and patience.

The worker must outlive NATS restarts and failovers, so it never gives up reconnecting;
instead it backs off (with jitter, so a fleet of workers does not reconnect in lockstep)
and says in its log what is happening.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Sequence
from typing import Any, Final

import structlog
from nats.aio.client import Client as NATS
from nats.aio.client import Server

from worker.config import NatsConfig

log = structlog.get_logger("worker.bus.connection")

RECONNECT_BASE_DELAY: Final = 0.25
RECONNECT_MAX_DELAY: Final = 10.0


def reconnect_delay(attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt ``attempts + 1`` to one server.

    The first attempt is immediate (failover should be quick); after that the wait
    doubles up to RECONNECT_MAX_DELAY, with "equal jitter" keeping at least half of it.
    """
    if attempts <= 0:
        return 0.0
    ceiling = min(RECONNECT_MAX_DELAY, RECONNECT_BASE_DELAY * (1 << min(attempts - 1, 16)))
    uniform = rng.uniform if rng is not None else random.uniform
    return ceiling / 2 + uniform(0, ceiling / 2)


def _choose_server(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
    """Reconnect to the server tried least, so failover walks through the whole list."""
    server = min(servers, key=lambda s: s.reconnects)
    return server, reconnect_delay(server.reconnects)


def tls_context(config: NatsConfig) -> ssl.SSLContext | None:
    """A client TLS context when a CA or a client certificate is configured."""
    if config.tls_ca is None and config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_ca)
    if config.tls_cert is not None and config.tls_key is not None:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def connect(
    config: NatsConfig,
    servers: Sequence[str] | None = None,
    *,
    name: str = "roomserver",
) -> NATS:
    """Connect to ``servers`` (default: config.servers), retrying forever.

    ``servers`` lets the caller point at an embedded server while keeping the rest of
    the configuration (user/password or token apply to it too).
    """
    targets = list(servers if servers is not None else config.servers)
    if not targets:
        raise ValueError("no NATS server to connect to")

    async def on_error(exc: Exception) -> None:
        log.warning("NATS connection error", error=str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        if nc.is_closed:
            return  # our own close(): closed_cb reports it
        log.warning("disconnected from NATS; reconnecting")

    async def on_reconnect() -> None:
        log.info(
            "reconnected to NATS", server=nc.connected_url.netloc if nc.connected_url else None
        )

    async def on_closed() -> None:
        log.info("NATS connection closed")

    nc = NATS()
    await nc.connect(
        targets,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,  # forever, also for the first connection
        reconnect_time_wait=1,
        reconnect_to_server_handler=_choose_server,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        closed_cb=on_closed,
        user_credentials=config.credentials,
        nkeys_seed=config.nkey_seed,
        user=config.user,
        password=config.password,
        token=config.token,
        tls=tls_context(config),
    )
    log.info(
        "connected to NATS",
        server=nc.connected_url.netloc if nc.connected_url else None,
        servers=len(targets),
    )
    return nc
