"""Log output formats, checked in a child process (logging set-up is process-global)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging, sys, structlog
from worker.config import LogConfig
from worker.logs import configure_logging
configure_logging(LogConfig(level=sys.argv[1], format=sys.argv[2]))
log = structlog.get_logger("worker.test")
log.debug("quiet", n=0)
log.info("hello", n=1)
logging.getLogger("nats.aio.client").warning("from %s", "stdlib")
"""


def run(level: str, fmt: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, level, fmt],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stderr.splitlines()


def test_json_lines() -> None:
    lines = [json.loads(line) for line in run("info", "json")]
    assert [(e["event"], e["level"], e["logger"]) for e in lines] == [
        ("hello", "info", "worker.test"),
        ("from stdlib", "warning", "nats.aio.client"),
    ]
    assert lines[0]["n"] == 1
    assert "timestamp" in lines[0]


def test_console_and_level() -> None:
    lines = run("debug", "console")
    assert len(lines) == 3
    assert "quiet" in lines[0] and "hello" in lines[1] and "from stdlib" in lines[2]
    [only] = run("warning", "console")
    assert "from stdlib" in only


def test_worker_processes_do_not_import_twisted() -> None:
    """structlog imports its Twisted integration whenever Twisted is installed (as the
    test oracle installs it); the worker's processes (the event loop's entry point and
    the pipeline child's) must not carry Twisted for it."""
    script = (
        "import sys; import worker.cli.run, worker.runner.pipeline_process, structlog; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    )
    assert result.stdout.strip() == "[]"
    # Twisted is installed here (the oracle extra): without the guard it would be loaded.
    found = subprocess.run(
        [sys.executable, "-c", "import structlog, sys; print('twisted' in sys.modules)"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert found.stdout.strip() == "True"
