"""The client refuses, locally, calls above its principal's tier: it learns the principal once
(WhoAmI) and reads each RPC's required_tier from the descriptors. The server stays the
authority: when the principal is unknown the call goes out."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from agentcoord import AgentcoordError, AsyncClient, Client
from agentcoord.client._transport import required_tiers
from agentcoord.v1 import access_pb2, admin_pb2, admin_pb2_grpc

pytestmark = pytest.mark.every_backend


class RecordingAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Answers WhoAmI with a configurable tier and records every method that reached it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.tier = access_pb2.ACCESS_TIER_OBSERVER
        self.who_am_i_fails = False

    def WhoAmI(self, request, context):
        self.calls.append("WhoAmI")
        if self.who_am_i_fails:
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return admin_pb2.WhoAmIResponse(principal=access_pb2.Principal(agent_id="a", tier=self.tier))

    def IssueToken(self, request, context):
        self.calls.append("IssueToken")
        return admin_pb2.IssueTokenResponse(token="agc_x")

    def GetServerStats(self, request, context):
        self.calls.append("GetServerStats")
        return admin_pb2.GetServerStatsResponse()


@pytest.fixture
def recording():
    servicer = RecordingAdmin()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_sync_client_refuses_a_call_above_its_tier_without_sending_it(recording):
    address, servicer = recording
    with Client(address, token="t") as client:
        for _ in range(2):
            with pytest.raises(AgentcoordError) as caught:
                client.admin.issue_token("w1", "OBSERVER")

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "TIER_TOO_LOW"
    assert caught.value.metadata == {"required_tier": "STEWARD", "caller_tier": "OBSERVER"}
    assert servicer.calls == ["WhoAmI"]  # learned once; IssueToken never sent


async def test_async_client_refuses_a_call_above_its_tier_without_sending_it(recording):
    address, servicer = recording
    async with AsyncClient(address, token="t") as client:
        for _ in range(2):
            with pytest.raises(AgentcoordError) as caught:
                await client.admin.issue_token("w1", "OBSERVER")

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "TIER_TOO_LOW"
    assert servicer.calls == ["WhoAmI"]


def test_calls_any_tier_may_make_do_not_ask_who_am_i(recording):
    address, servicer = recording
    with Client(address, token="t") as client:
        client.admin.get_server_stats()

    assert servicer.calls == ["GetServerStats"]


async def test_client_with_a_high_enough_tier_sends_the_call(recording):
    address, servicer = recording
    servicer.tier = access_pb2.ACCESS_TIER_STEWARD
    async with AsyncClient(address, token="t") as client:
        await client.admin.issue_token("w1", "OBSERVER")
        await client.admin.issue_token("w2", "OBSERVER")

    assert servicer.calls == ["WhoAmI", "IssueToken", "IssueToken"]


def test_when_the_principal_cannot_be_learned_the_server_decides(recording):
    address, servicer = recording
    servicer.who_am_i_fails = True
    with Client(address, token="t") as client:
        issued = client.admin.issue_token("w1", "OBSERVER")

    assert issued.token == "agc_x"
    assert servicer.calls == ["WhoAmI", "IssueToken"]


def test_client_reads_required_tiers_from_the_same_descriptors_as_the_server():
    from agentcoord_server.identity import required_tiers as server_tiers
    from agentcoord_server.services import SERVICE_MODULES

    served = server_tiers(m.PB2 for m in SERVICE_MODULES)

    assert {path: required_tiers()[path] for path in served} == served


def test_real_server_observer_is_refused_locally_with_the_servers_reason(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client("watcher", "OBSERVER").admin.issue_token("w1", "OBSERVER")

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "TIER_TOO_LOW"
    assert "refused by the client" in caught.value.message
