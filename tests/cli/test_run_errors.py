"""`roomserver run` refusing to start: one line on stderr naming the setting, no
traceback, no nats-server banner, and exit status 78 (EX_CONFIG) for configuration
faults, which the systemd unit does not restart (RestartPreventExitStatus=78).

The worker runs as a real child process with the default console log at level info.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.procs import REPO, free_port
from worker.cli import EXIT_CONFIG, EXIT_USAGE


def run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMSERVER_")}
    env["PYTHONPATH"] = str(REPO)
    env["ROOMSERVER_METRICS_LISTEN_PORT"] = str(free_port())
    env["ROOMSERVER_LOG_LEVEL"] = "info"
    env["ROOMSERVER_LOG_FORMAT"] = "console"
    env.update({f"ROOMSERVER_{key.upper()}": value for key, value in settings.items()})
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args, "run"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.stderr == line + "\n", result.stderr
    assert result.returncode == EXIT_CONFIG


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_storage_path_that_cannot_be_a_directory(tmp_path: Path) -> None:
    # Under a regular file: no directory can be made there, even by root (who ignores
    # permission bits).
    (tmp_path / "file").write_text("")
    storage = tmp_path / "file" / "sub"
    result = run(tmp_path, storage_path=str(storage))
    assert_one_line(
        result,
        f"roomserver: configuration: storage.path {storage} is not writable (Not a directory)",
    )


def test_storage_path_that_is_a_file(tmp_path: Path) -> None:
    storage = tmp_path / "file"
    storage.write_text("")
    result = run(tmp_path, storage_path=str(storage))
    assert_one_line(result, f"roomserver: configuration: storage.path {storage} is not a directory")


@pytest.mark.nats  # the worker starts its embedded nats-server, which cannot listen
def test_busy_nats_listen_port(tmp_path: Path, busy_port: int) -> None:
    """The embedded nats-server cannot listen: its banner and its fatal line stay out
    of the console; the worker says which setting to change."""
    result = run(tmp_path, storage_path=str(tmp_path / "data"), nats_listen_port=str(busy_port))
    assert_one_line(
        result,
        f"roomserver: configuration: nats.listen_port {busy_port} is already in use on 127.0.0.1",
    )


def test_bad_value(tmp_path: Path) -> None:
    result = run(tmp_path, storage_path=str(tmp_path / "data"), consumer_batch_size="0")
    assert_one_line(
        result,
        "roomserver: configuration: consumer.batch_size (from environment "
        "ROOMSERVER_CONSUMER_BATCH_SIZE): must be at least 1, got 0",
    )


def test_missing_configuration_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = run(tmp_path, "--config", str(missing))
    assert_one_line(
        result, f"roomserver: configuration: configuration file {missing} does not exist"
    )


def test_unusable_tls_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    result = run(
        tmp_path,
        storage_path=str(tmp_path / "data"),
        nats_servers=f"tls://127.0.0.1:{free_port()}",
        nats_tls_ca=str(ca),
    )
    assert_one_line(
        result,
        f"roomserver: configuration: nats.tls_ca {ca} is not a usable CA certificate file "
        "(NO_CERTIFICATE_OR_CRL_FOUND)",
    )


def test_tls_key_that_is_a_directory(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    result = run(
        tmp_path,
        storage_path=str(tmp_path / "data"),
        nats_servers=f"tls://127.0.0.1:{free_port()}",
        nats_tls_cert=str(cert),
        nats_tls_key=str(tmp_path),
    )
    assert_one_line(
        result,
        f"roomserver: configuration: nats.tls_key (from environment ROOMSERVER_NATS_TLS_KEY): "
        f"{str(tmp_path)!r} is not a file",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_tls_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    ca.chmod(0)
    result = run(
        tmp_path,
        storage_path=str(tmp_path / "data"),
        nats_servers=f"tls://127.0.0.1:{free_port()}",
        nats_tls_ca=str(ca),
    )
    assert_one_line(
        result,
        f"roomserver: configuration: nats.tls_ca (from environment ROOMSERVER_NATS_TLS_CA): "
        f"file {str(ca)!r} is not readable (Permission denied)",
    )


def test_usage_error_is_status_2(tmp_path: Path) -> None:
    result = run(tmp_path, "--no-such-option")
    assert result.returncode == EXIT_USAGE
    assert "usage: roomserver" in result.stderr
