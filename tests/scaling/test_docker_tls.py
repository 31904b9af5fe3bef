"""The docker provider over TLS with a client certificate, against the fake Docker API
server behind a real TLS socket on 127.0.0.1 that requires a client certificate from
its CA (no Docker engine runs here: docs/scaling.md). The client key is a secret:
sealed in the stored provider config, in clear only in a 0600 file while the provider
lives."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conveyor.credentials.keys import SecretKey
from conveyor.credentials.service import CredentialVault
from conveyor.errors import InvalidInput
from conveyor.providers.base import AgentLaunch
from conveyor.providers.docker import DockerProvider
from conveyor.providers.secrets import SEALED, resolve_config, seal_config
from tests.scaling.fakes import FakeDocker


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    ip: str | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM text."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("conveyor test CA", ca_key)
    out = {"ca_cert": ca.public_bytes(serialization.Encoding.PEM).decode()}
    for who, ip in (("server", "127.0.0.1"), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, key, (ca.subject, ca_key), ip)
        out[f"{who}_cert"] = cert.public_bytes(serialization.Encoding.PEM).decode()
        out[f"{who}_key"] = _pem_key(key)
    return out


@pytest.fixture
def docker_tls(tmp_path: Path, pki: dict[str, str]) -> Iterator[FakeDocker]:
    for name in ("ca_cert", "server_cert", "server_key"):
        (tmp_path / f"{name}.pem").write_text(pki[name])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server_cert.pem", tmp_path / "server_key.pem")
    context.load_verify_locations(tmp_path / "ca_cert.pem")
    context.verify_mode = ssl.CERT_REQUIRED  # like dockerd --tlsverify
    (tmp_path / "docker").mkdir()
    server = FakeDocker(tmp_path / "docker").start(tls=context)
    try:
        yield server
    finally:
        server.close()


def _launch() -> AgentLaunch:
    return AgentLaunch(
        pool="tls",
        agent_name="tls-agent-1",
        url="http://127.0.0.1:1",
        token="cva_not-a-real-one",
        labels=["d"],
        executors=1,
        ephemeral=False,
    )


def _config(server: FakeDocker, tls: dict[str, Any]) -> dict[str, Any]:
    return {
        "image": "agent:1",
        "base_url": server.url.replace("https://", "tcp://"),
        "command": ["/bin/sh", "-c", "sleep 60"],
        "tls": tls,
    }


async def test_containers_over_tls_with_a_sealed_client_key(
    docker_tls: FakeDocker, pki: dict[str, str]
) -> None:
    tls = {k: pki[k] for k in ("ca_cert", "client_cert", "client_key")}
    vault = CredentialVault(None, SecretKey(secrets.token_bytes(32)))  # type: ignore[arg-type]
    stored = seal_config(vault, "tls", _config(docker_tls, tls))
    assert set(stored["tls"]["client_key"]) == {SEALED, "key_id"}
    assert stored["tls"]["client_cert"] == pki["client_cert"]  # a certificate is public
    assert pki["client_key"] not in repr(stored)
    key_body = pki["client_key"].splitlines()[1]
    assert key_body not in repr(stored) and base64.b64decode(key_body)

    provider = DockerProvider(await resolve_config(vault, "tls", stored))
    try:
        container = await provider.create(_launch())
        assert await provider.list("tls", {}) == {container}
        await provider.delete("tls", container)
        assert await provider.list("tls", {}) == set()
        folder = provider._tls_dir
        assert folder is not None
        key_file = folder / "client_key.pem"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert folder.stat().st_mode & 0o777 == 0o700
    finally:
        await provider.close()
    assert not folder.exists()  # the key is gone with the provider
    assert [m for m, _, _ in docker_tls.requests][:2] == ["POST", "POST"]


async def test_without_a_client_certificate_the_engine_refuses(
    docker_tls: FakeDocker, pki: dict[str, str]
) -> None:
    provider = DockerProvider(_config(docker_tls, {"ca_cert": pki["ca_cert"]}))
    try:
        with pytest.raises(Exception, match=r"(?i)ssl|certificate|connection"):
            await provider.list("tls", {})
    finally:
        await provider.close()
    assert docker_tls.requests == []


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ("yes", "'tls' is a mapping"),
        ({"client_cert": "PEM"}, "client_cert and client_key together"),
        ({"ca": "PEM"}, "unknown tls config ca"),
        ({"ca_cert": 3}, "tls.ca_cert is PEM text"),
    ],
)
def test_bad_tls_config_is_refused(tls: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        DockerProvider({"image": "x", "tls": tls})
