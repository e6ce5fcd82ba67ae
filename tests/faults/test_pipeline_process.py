"""The pipeline's own process (worker/runner/pipeline_process.py), with real processes.

- The worker killed with SIGKILL: its pipeline process exits by itself (end-of-file on
  its socket), and until it has, the storage directory stays locked, so a restarted
  worker never writes beside an orphan that may still be committing: it waits for the
  orphan, then starts.
- The pipeline process killed: the worker does not carry on without it; it stops with
  an error saying so.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.e2e import environment
from tests.harness.procs import POLL, WorkerProcess, worker_env
from worker.bus.server import EmbeddedNatsServer
from worker.cli import EXIT_OK
from worker.config import Config
from worker.storage.lock import LOCK_FILENAME

ORPHAN_WAITING = (
    "the storage lock is held though its worker is gone (its pipeline process is "
    "finishing); waiting for it"
)

pytestmark = pytest.mark.faults


def _start(nats_server: EmbeddedNatsServer, config: Config, cwd: Path) -> WorkerProcess:
    # The test's own stream and consumer names on the session's server.
    env = worker_env(nats_server.url, Path(config.storage.path)) | environment(config)
    return WorkerProcess(env, cwd)


def _pipeline_pid(worker: WorkerProcess) -> int:
    [line] = [line for line in worker.lines if line.get("event") == "pipeline process ready"]
    return int(line["pid"])


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its new parent counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL)


def _locked(storage: Path) -> bool:
    """Whether a process holds the storage lock (asked without waiting for anyone)."""
    fd = os.open(storage / LOCK_FILENAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def test_killed_worker_leaves_no_pipeline_process_and_the_lock_until_it_exits(
    nats_server: EmbeddedNatsServer, config: Config, tmp_path: Path
) -> None:
    storage = Path(config.storage.path)
    worker = _start(nats_server, config, tmp_path / "cwd")
    restarted: WorkerProcess | None = None
    pid: int | None = None
    try:
        await worker.until_logged("worker ready")
        pid = _pipeline_pid(worker)
        assert pid != worker.pid and not _gone(pid)
        # Held stopped, the pipeline process cannot see its worker go: it stands for an
        # orphan still in the middle of a transaction.
        os.kill(pid, signal.SIGSTOP)
        worker.kill()
        assert _locked(storage), "the directory was let go while the pipeline lived"
        # A restart meanwhile waits for the orphan rather than writing beside it.
        restarted = _start(nats_server, config, tmp_path / "cwd")
        await restarted.until(lambda: restarted.logged(ORPHAN_WAITING) == 1, "the wait")
        assert restarted.logged("pipeline process ready") == 0
        os.kill(pid, signal.SIGCONT)
        await _until(lambda: _gone(pid), "the orphaned pipeline process to exit")
        await restarted.until_logged("worker ready")
        assert await restarted.stop(signal.SIGTERM) == EXIT_OK
        assert not _locked(storage)
    finally:
        worker.ensure_dead()
        if restarted is not None:
            restarted.ensure_dead()
        if pid is not None and not _gone(pid):
            os.kill(pid, signal.SIGKILL)


async def test_worker_stops_loudly_when_its_pipeline_process_dies(
    nats_server: EmbeddedNatsServer, config: Config, tmp_path: Path
) -> None:
    worker = _start(nats_server, config, tmp_path / "cwd")
    try:
        await worker.until_logged("worker ready")
        os.kill(_pipeline_pid(worker), signal.SIGKILL)
        code = await worker.stop_when_exited(30)
        assert code != EXIT_OK, worker.log_tail()
        assert worker.logged("the pipeline process died") == 1, worker.log_tail()
        assert not _locked(Path(config.storage.path))
    finally:
        worker.ensure_dead()
