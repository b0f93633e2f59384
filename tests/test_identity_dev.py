"""Development mode (`--insecure-dev-identity`): trusts x-agent-id / x-namespace / x-access-tier,
only on loopback, with a warning at start. Runs on its own servers; the session server uses
real tokens."""

from __future__ import annotations

import io

import grpc
import pytest
import structlog
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import access_pb2
from agentcoord_server.app import AgentcoordServer
from agentcoord_server.cli import main
from agentcoord_server.config import Settings
from agentcoord_server.logs import configure_logging
from click.testing import CliRunner

from .conftest import server_settings
from .support import ServerThread, dev_identity


@pytest.fixture(scope="module")
def dev_server(redis_url):
    handle = ServerThread(server_settings(redis_url, insecure_dev_identity=True)).start()
    yield handle
    handle.stop()


def test_dev_identity_headers_become_the_principal(dev_server, namespace):
    with Client(dev_server.address, metadata=dev_identity("alice", "VALIDATOR", namespace)) as client:
        principal = client.admin.who_am_i()

    assert (principal.agent_id, principal.namespace, principal.tier) == (
        "alice",
        namespace,
        access_pb2.ACCESS_TIER_VALIDATOR,
    )


def test_dev_identity_still_enforces_tiers(dev_server, namespace):
    with Client(dev_server.address, metadata=dev_identity("alice", "CONTRIBUTOR", namespace)) as client:
        with pytest.raises(AgentcoordError) as caught:
            client.admin.list_tokens()

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "TIER_TOO_LOW"


def test_dev_identity_without_headers_is_unauthenticated(dev_server):
    with Client(dev_server.address) as client, pytest.raises(AgentcoordError) as caught:
        client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "MISSING_IDENTITY"


def test_unknown_tier_in_dev_identity_is_unauthenticated(dev_server, namespace):
    metadata = [("x-agent-id", "a"), ("x-access-tier", "ROOT"), ("x-namespace", namespace)]
    with Client(dev_server.address, metadata=metadata) as client, pytest.raises(AgentcoordError) as caught:
        client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "INVALID_IDENTITY"


def test_agent_id_with_key_characters_is_refused(dev_server, namespace):
    metadata = [("x-agent-id", "a:*"), ("x-access-tier", "STEWARD"), ("x-namespace", namespace)]
    with Client(dev_server.address, metadata=metadata) as client, pytest.raises(AgentcoordError) as caught:
        client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "INVALID_IDENTITY"


def test_dev_server_does_not_accept_tokens(dev_server, server, namespace):
    token = server.issue_token("w1", "STEWARD", namespace)
    with Client(dev_server.address, token=token) as client, pytest.raises(AgentcoordError) as caught:
        client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "10.1.2.3:50051", "example.com:50051"])
def test_dev_identity_refuses_non_loopback_addresses(listen):
    with pytest.raises(ValueError, match="loopback"):
        AgentcoordServer(Settings(listen=listen, insecure_dev_identity=True))


def test_cli_refuses_dev_identity_on_a_public_address():
    result = CliRunner().invoke(main, ["serve", "--insecure-dev-identity", "--listen", "0.0.0.0:50051"])

    assert result.exit_code == 2
    assert "loopback" in result.output


def test_dev_identity_logs_a_warning_at_start(redis_url):
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        handle = ServerThread(server_settings(redis_url, insecure_dev_identity=True)).start()
        handle.stop()
    finally:
        structlog.reset_defaults()

    warnings = [line for line in out.getvalue().splitlines() if '"level": "warning"' in line]
    assert any("INSECURE development identity" in line for line in warnings)
