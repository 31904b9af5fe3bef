"""`conveyor server --tls-cert --tls-key`: HTTPS straight from the controller, with a
self-signed certificate made here with `cryptography`; session cookies are Secure."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import free_port, wait_until


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_with_tls_flags(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    home = tmp_path / "home"
    args = [sys.executable, "-m", "conveyor", "server", "--home", str(home), "--port", str(port)]
    log = (tmp_path / "controller.log").open("wb")
    proc = subprocess.Popen(
        [*args, "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,
    )
    url = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(cert))
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", verify=trust, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, what="the HTTPS controller")
        token = (home / "admin-token").read_text().strip()
        with httpx.Client(base_url=url, verify=trust, timeout=30) as c:
            me = c.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["user"] == "admin"
            r = c.put(
                "/api/v1/users/admin/password",
                json={"password": "tls-admin-pass"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 204
            r = c.post("/api/v1/session", json={"username": "admin", "password": "tls-admin-pass"})
            assert r.status_code == 200
            assert all("Secure" in h for h in r.headers.get_list("set-cookie"))
        # Plain HTTP on the TLS port does not work.
        try:
            plain = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            plain = None
        assert plain != 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_tls_flags_go_together(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conveyor",
            "server",
            "--home",
            str(tmp_path),
            "--tls-cert",
            str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr
    assert "Traceback" not in done.stderr
