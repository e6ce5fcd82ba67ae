"""Ending a child process of the worker (the embedded nats-server, the pipeline's
process) without waiting on it forever."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any


async def wait_or_kill(process: subprocess.Popen[Any], timeout: float) -> bool:
    """Wait up to `timeout` seconds for `process` to exit, off the event loop; kill it if
    it has not and wait for that. Whether it had to be killed (the caller says so in
    its log: a child that ignores its stop request is a fault worth seeing)."""
    try:
        await asyncio.to_thread(process.wait, timeout)
        return False
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)
        return True
