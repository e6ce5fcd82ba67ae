"""The worker against a nats-server that wants TLS (its own CA, client certificates)
and nkey authentication: configured from the environment alone, it must connect, make
its streams and get ready."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import nkeys
import pytest

from tests.harness.procs import NatsProcess, WorkerProcess, worker_env

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(where: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from it."""
    where.mkdir()
    openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-subj", "/CN=roomserver test CA", "-keyout", "ca.key", "-out", "ca.pem"),
        cwd=where,
    )
    (where / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    (where / "client.ext").write_text("extendedKeyUsage=clientAuth\n", encoding="utf-8")
    for name in ("server", "client"):
        openssl(
            *("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
            *("-keyout", f"{name}.key", "-out", f"{name}.csr"),
            cwd=where,
        )
        openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-days", "1", "-out", f"{name}.pem"),
            *("-extfile", f"{name}.ext"),
            cwd=where,
        )


async def test_tls_with_ca_client_certificate_and_nkey(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    make_pki(pki)
    user = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    seed_file = tmp_path / "worker.nk"
    seed_file.write_bytes(user.seed)
    seed_file.chmod(0o600)
    conf = tmp_path / "server.conf"
    conf.write_text(
        "tls {\n"
        f'  cert_file: "{pki / "server.pem"}"\n'
        f'  key_file: "{pki / "server.key"}"\n'
        f'  ca_file: "{pki / "ca.pem"}"\n'
        "  verify: true\n"
        "}\n"
        f'authorization {{ users: [ {{ nkey: "{user.public_key.decode()}" }} ] }}\n',
        encoding="utf-8",
    )
    server = NatsProcess(tmp_path / "nats", extra_args=["--config", str(conf)])
    await server.start()
    try:
        env = worker_env(
            f"tls://127.0.0.1:{server.port}",
            tmp_path / "data",
            nats_nkey_seed=str(seed_file),
            nats_tls_ca=str(pki / "ca.pem"),
            nats_tls_cert=str(pki / "client.pem"),
            nats_tls_key=str(pki / "client.key"),
        )
        worker = WorkerProcess(env, tmp_path / "cwd")
        try:
            await worker.until_logged("worker ready")
            assert worker.logged("created stream") == 3
            assert await worker.stop(signal.SIGTERM) == 0
        finally:
            worker.ensure_dead()
        text = "\n".join(map(str, worker.lines))
        assert user.seed.decode() not in text, "the seed must never reach the log"
    finally:
        await server.stop()
