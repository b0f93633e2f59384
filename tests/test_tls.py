"""TLS (`--tls-cert`/`--tls-key`) and mTLS (`--tls-client-ca`), with certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord_server.app import AgentcoordServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import server_settings
from .support import ServerThread


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Pem | Path]:
    ca = _issue("agentcoord test CA", None, server=False)
    other_ca = _issue("some other CA", None, server=False)
    out: dict[str, Pem | Path] = {
        "ca": _pem(*ca),
        "server": _pem(*_issue("agentcoord server", ca, server=True)),
        "client": _pem(*_issue("agent w1", ca, server=False)),
        "stranger": _pem(*_issue("stranger", other_ca, server=False)),
    }
    directory = tmp_path_factory.mktemp("pki")
    for name in ("ca", "server"):
        pem = out[name]
        assert isinstance(pem, Pem)
        (directory / f"{name}.crt").write_bytes(pem.cert)
        (directory / f"{name}.key").write_bytes(pem.key)
    out["dir"] = directory
    return out


@pytest.fixture(scope="module")
def tls_server(redis_url, pki):
    d = pki["dir"]
    handle = ServerThread(
        server_settings(redis_url, tls_cert=d / "server.crt", tls_key=d / "server.key")
    ).start()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def mtls_server(redis_url, pki):
    d = pki["dir"]
    handle = ServerThread(
        server_settings(
            redis_url,
            tls_cert=d / "server.crt",
            tls_key=d / "server.key",
            tls_client_ca=d / "ca.crt",
        )
    ).start()
    yield handle
    handle.stop()


def test_tls_client_with_the_ca_and_a_token_is_served(tls_server, pki, credentials):
    with Client(tls_server.address, root_certificates=pki["ca"].cert, **credentials("w1", "OBSERVER")) as client:
        assert client.admin.who_am_i().agent_id == "w1"


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server, credentials):
    with Client(tls_server.address, timeout=3, **credentials("w1", "OBSERVER")) as client:
        with pytest.raises(AgentcoordError) as caught:
            client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_servers_ca_is_refused(tls_server, pki, credentials):
    stranger_ca = pki["stranger"].cert  # a leaf of another CA: not the server's issuer
    with Client(tls_server.address, root_certificates=stranger_ca, timeout=3, **credentials("w1", "OBSERVER")) as client:
        with pytest.raises(AgentcoordError) as caught:
            client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_still_needs_a_token(tls_server, pki):
    with Client(tls_server.address, root_certificates=pki["ca"].cert) as client:
        with pytest.raises(AgentcoordError) as caught:
            client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_mtls_client_with_a_certificate_from_the_client_ca_is_served(mtls_server, pki, credentials):
    with Client(
        mtls_server.address,
        root_certificates=pki["ca"].cert,
        client_certificate=pki["client"].cert,
        client_key=pki["client"].key,
        **credentials("w1", "OBSERVER"),
    ) as client:
        assert client.admin.who_am_i().agent_id == "w1"


@pytest.mark.parametrize("who", ["no certificate", "stranger"])
def test_mtls_refuses_clients_without_a_certificate_from_the_client_ca(mtls_server, pki, credentials, who):
    extra = {} if who == "no certificate" else {
        "client_certificate": pki["stranger"].cert,
        "client_key": pki["stranger"].key,
    }
    with Client(
        mtls_server.address, root_certificates=pki["ca"].cert, timeout=3, **extra, **credentials("w1", "OBSERVER")
    ) as client:
        with pytest.raises(AgentcoordError) as caught:
            client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "overrides",
    [{"tls_cert": Path("c.pem")}, {"tls_key": Path("k.pem")}, {"tls_client_ca": Path("ca.pem")}],
)
def test_incomplete_tls_settings_are_refused_at_start(redis_url, overrides):
    with pytest.raises(ValueError, match="tls"):
        AgentcoordServer(server_settings(redis_url, **overrides))
