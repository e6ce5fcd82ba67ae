"""The worker's NATS connection: every configured server, its credentials, and patience.

The worker must outlive NATS restarts and failovers, so it never gives up reconnecting;
instead it backs off (with jitter, so a fleet of workers does not reconnect in lockstep)
and says in its log what is happening. Keep-alive pings every `nats.ping_interval`
seconds let the client notice a server that stopped answering without closing the
connection (a frozen process, a partition that drops packets), which TCP alone would
take minutes to report. `NatsHealth` turns the same pings into the readiness checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Sequence
from typing import Any, Final

import structlog
from nats.aio.client import Client as NATS
from nats.aio.client import Server

from worker.bus.lifecycle import Started
from worker.config import ConfigError, NatsConfig

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
    """A client TLS context when a CA or a client certificate is configured.

    A file that cannot be used (unreadable, not PEM, a key that does not match its
    certificate) is a ConfigError naming the setting: the worker cannot fix it by retrying.
    """
    if config.tls_ca is None and config.tls_cert is None:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"nats.tls_ca {config.tls_ca} is not a usable CA certificate file ({_reason(exc)})"
        ) from None
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"nats.tls_cert {config.tls_cert} with nats.tls_key {config.tls_key} is not "
                f"a usable certificate and key ({_reason(exc)})"
            ) from None
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


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
        ping_interval=config.ping_interval,
        max_outstanding_pings=config.max_outstanding_pings,
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


#: Seconds between the readiness pings (one is outstanding at a time).
HEALTH_PING_INTERVAL: Final = 1.0
#: How often the connection's state is looked at (a few attribute reads).
_HEALTH_TICK: Final = 0.1
#: A flush waits for its PONG this long at most; the reconnection that a stale
#: connection causes ends the wait much sooner (see NatsHealth._ping).
_FLUSH_TIMEOUT: Final = 3600


class NatsHealth(Started):
    """Whether NATS is usable, as the readiness checks see it.

    `nats_connected`: the client is connected, or has been disconnected for less than
    `grace` seconds. `nats_answering`: the server answered a ping less than `grace`
    seconds ago. The grace keeps a quick reconnection (a restart, a failover) from
    making the worker look unready, while a frozen server, which keeps the connection
    open but answers nothing, is reported within `grace` seconds and a ping interval.

    The ping is a flush (PING, wait for PONG) that is never cancelled while its
    connection lives: nats-py matches PONGs to waiting pings in order and would fail on
    one that was given up, so a late PONG must still find its ping. A reconnection
    starts a new list of pings, so the old one is dropped then; the reconnection's own
    handshake ends with a PONG, so it counts as an answer.
    """

    def __init__(self, nc: NATS, grace: float, interval: float = HEALTH_PING_INTERVAL) -> None:
        self._nc = nc
        self.grace = grace
        self._interval = interval
        now = time.monotonic()
        #: `connect` has just had its PONG.
        self._last_answer = now
        self._disconnected_since: float | None = None
        self._ping: asyncio.Task[None] | None = None
        self._ping_sent = now
        self._reconnects = nc.stats["reconnects"]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Watch the connection from a task of its own until `close`."""
        self._task = asyncio.create_task(self._run(), name="nats-health")

    async def close(self) -> None:
        """Stop watching (the end of `async with`)."""
        for task in (self._task, self._ping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._ping = None

    def checks(self) -> dict[str, bool]:
        now = time.monotonic()
        self._note_connection(now)
        since = self._disconnected_since
        return {
            "nats_connected": since is None or now - since < self.grace,
            "nats_answering": now - self._last_answer < self.grace,
        }

    @property
    def seconds_since_answer(self) -> float:
        return time.monotonic() - self._last_answer

    def _note_connection(self, now: float) -> None:
        if self._nc.is_connected:
            self._disconnected_since = None
        elif self._disconnected_since is None:
            self._disconnected_since = now

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            self._note_connection(now)
            reconnects = self._nc.stats["reconnects"]
            if reconnects != self._reconnects:
                self._reconnects = reconnects
                if self._nc.is_connected:
                    self._last_answer = now
                # A ping still waiting was sent on the connection that is gone.
                await self._drop_ping()
            if self._ping is not None and self._ping.done():
                await self._drop_ping()
            due = now - self._ping_sent >= self._interval
            if self._ping is None and due and self._nc.is_connected:
                self._ping_sent = now
                self._ping = asyncio.create_task(self._ping_once(), name="nats-health-ping")
            await asyncio.sleep(_HEALTH_TICK)

    async def _drop_ping(self) -> None:
        ping, self._ping = self._ping, None
        if ping is not None:
            ping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ping

    async def _ping_once(self) -> None:
        await self._nc.flush(timeout=_FLUSH_TIMEOUT)
        self._last_answer = time.monotonic()
