"""AdminService: WhoAmI, GetServerStats, and how errors reach the client."""

from __future__ import annotations

import grpc
import pytest
from agentcoord import AgentcoordError, AsyncClient, Client
from agentcoord.v1 import access_pb2, admin_pb2


def test_who_am_i_returns_the_callers_principal(make_client, namespace):
    principal = make_client("lead-reviewer", "VALIDATOR").admin.who_am_i()

    assert principal.agent_id == "lead-reviewer"
    assert principal.namespace == namespace
    assert principal.tier == access_pb2.ACCESS_TIER_VALIDATOR


async def test_async_who_am_i_returns_the_callers_principal(make_aclient, namespace):
    principal = await make_aclient("monitor", "OBSERVER").admin.who_am_i()

    assert (principal.agent_id, principal.namespace, principal.tier) == (
        "monitor",
        namespace,
        access_pb2.ACCESS_TIER_OBSERVER,
    )


def test_server_stats_report_versions_mode_and_uptime(make_client):
    stats = make_client(tier="OBSERVER").admin.get_server_stats()

    assert stats.server_version
    assert stats.redis_mode == admin_pb2.REDIS_MODE_EXTERNAL  # the test server is given a REDIS_URL
    assert stats.redis_version.split(".")[0].isdigit()
    assert stats.used_memory_bytes > 0
    assert stats.uptime.ToNanoseconds() > 0


def test_server_stats_leave_the_deprecated_key_counts_empty(make_client):
    # Counting keys per area needed a SCAN of the keyspace; namespace_stats replaced it.
    assert dict(make_client(tier="OBSERVER").admin.get_server_stats().key_counts) == {}


def test_call_without_token_is_unauthenticated_with_reason_and_request_id(server):
    with Client(server.address) as client, pytest.raises(AgentcoordError) as caught:
        client.admin.who_am_i()

    error = caught.value
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "MISSING_TOKEN"
    assert len(error.request_id or "") == 32


async def test_caller_request_id_is_echoed_in_errors(server):
    async with AsyncClient(server.address, metadata=[("x-request-id", "req-42")]) as client:
        with pytest.raises(AgentcoordError) as caught:
            await client.admin.who_am_i()

    assert caught.value.request_id == "req-42"


def test_development_identity_headers_are_ignored_by_a_token_server(server, namespace):
    metadata = [("x-agent-id", "a"), ("x-access-tier", "STEWARD"), ("x-namespace", namespace)]
    with Client(server.address, metadata=metadata) as client, pytest.raises(AgentcoordError) as caught:
        client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "MISSING_TOKEN"
