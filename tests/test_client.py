"""The typed client: metadata on every call, one error type with the decoded status details.

The sync client is checked against a recording AdminService on pytest-grpc's in-process
(sync) server; the async one against a recording grpc.aio server.
"""

from __future__ import annotations

import pickle

import grpc
import pytest
from agentcoord import AgentcoordError, AsyncClient, Client
from agentcoord.v1 import access_pb2, admin_pb2, admin_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class RecordingAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Records each call's metadata; WhoAmI answers, GetServerStats fails with a rich status."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def WhoAmI(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return admin_pb2.WhoAmIResponse(principal=access_pb2.Principal(agent_id="rec"))

    def GetServerStats(self, request, context):
        context.abort_with_status(rpc_status.to_status(rich_status()))


def rich_status() -> status_pb2.Status:
    info, bad = any_pb2.Any(), any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="KEY_INVALID", domain="agentcoord", metadata={"request_id": "r1"}))
    bad.Pack(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="key", description="bad")]
        )
    )
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="key: bad", details=[info, bad])


@pytest.fixture(scope="module")
def grpc_add_to_server():
    return admin_pb2_grpc.add_AdminServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer():
    return RecordingAdmin()


@pytest.fixture(scope="module")
def grpc_stub_cls(grpc_channel):
    return admin_pb2_grpc.AdminServiceStub


def test_sync_client_sends_bearer_token_and_extra_metadata(grpc_server, grpc_addr, grpc_servicer):
    with Client(grpc_addr, token="s3cret", metadata=[("X-Trace", "t1")]) as client:
        client.admin.who_am_i()

    sent = grpc_servicer.metadata[-1]
    assert sent["authorization"] == "Bearer s3cret"
    assert sent["x-trace"] == "t1"


def test_sync_client_takes_token_from_environment(grpc_server, grpc_addr, grpc_servicer, monkeypatch):
    monkeypatch.setenv("AGENTCOORD_TOKEN", "from-env")
    with Client(grpc_addr) as client:
        client.admin.who_am_i()

    assert grpc_servicer.metadata[-1]["authorization"] == "Bearer from-env"


def test_sync_client_raises_one_error_type_with_reason_and_field_violations(grpc_server, grpc_addr):
    with Client(grpc_addr) as client, pytest.raises(AgentcoordError) as caught:
        client.admin.get_server_stats()

    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.request_id, error.message) == ("KEY_INVALID", "r1", "key: bad")
    assert error.field_violations == [("key", "bad")]


class AsyncRecordingAdmin(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def WhoAmI(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return admin_pb2.WhoAmIResponse()

    async def GetServerStats(self, request, context):
        await context.abort_with_status(rpc_status.to_status(rich_status()))


@pytest.fixture
async def aio_recording_server():
    servicer = AsyncRecordingAdmin()
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


async def test_async_client_sends_bearer_token_and_extra_metadata(aio_recording_server):
    address, servicer = aio_recording_server
    async with AsyncClient(address, token="t0k", metadata=[("x-trace", "t2")]) as client:
        await client.admin.who_am_i()

    assert servicer.metadata[-1]["authorization"] == "Bearer t0k"
    assert servicer.metadata[-1]["x-trace"] == "t2"


async def test_async_client_raises_one_error_type_with_reason_and_field_violations(aio_recording_server):
    address, _ = aio_recording_server
    async with AsyncClient(address) as client:
        with pytest.raises(AgentcoordError) as caught:
            await client.admin.get_server_stats()

    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.request_id, error.message) == ("KEY_INVALID", "r1", "key: bad")
    assert error.field_violations == [("key", "bad")]


def test_agentcoord_error_survives_pickling_with_every_field():
    # Errors cross process boundaries (multiprocessing, concurrent.futures process pools).
    error = AgentcoordError(
        code=grpc.StatusCode.FAILED_PRECONDITION,
        message="lease lost",
        reason="LEASE_LOST",
        metadata={"request_id": "r9", "task_id": "t1"},
        field_violations=[("task_id", "gone")],
        details=[error_details_pb2.ErrorInfo(reason="LEASE_LOST", domain="agentcoord")],
    )

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is AgentcoordError
    assert (copy.code, copy.message, copy.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "lease lost",
        "LEASE_LOST",
    )
    assert copy.metadata == {"request_id": "r9", "task_id": "t1"}
    assert copy.field_violations == [("task_id", "gone")]
    assert copy.details == error.details
    assert str(copy) == str(error)
