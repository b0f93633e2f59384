"""The one error mapping: a servicer bug is INTERNAL with a request id and nothing else."""

from __future__ import annotations

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord.client._async._base import ServiceClient
from agentcoord.client._transport import AsyncTransport
from agentcoord_server import errors

from .conftest import server_settings
from .support import ServerThread

SECRET = "s3cr3t-payload-text"


def add_buggy_methods(server: grpc.aio.Server) -> None:
    """Methods outside agentcoord (no identity needed) that fail the way a servicer bug does."""

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError(f"bug while handling {SECRET}")

    async def fail_to_describe(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # A domain error whose ErrorInfo cannot be built (metadata values must be strings).
        raise errors.NotFound(f"no {SECRET}", metadata={"count": 1})  # type: ignore[dict-item]

    async def fail_stream(request: bytes, context: grpc.aio.ServicerContext):
        yield b"first"
        raise KeyError(SECRET)

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Buggy",
                {
                    "Fail": grpc.unary_unary_rpc_method_handler(fail),
                    "FailToDescribe": grpc.unary_unary_rpc_method_handler(fail_to_describe),
                    "FailStream": grpc.unary_stream_rpc_method_handler(fail_stream),
                },
            ),
        )
    )


@pytest.fixture(scope="module")
def buggy_server(redis_url):
    handle = ServerThread(server_settings(redis_url), extra_handlers=[add_buggy_methods]).start()
    yield handle
    handle.stop()


def _wire_text(error: grpc.RpcError) -> str:
    """Everything the client received besides the code: details and trailing metadata."""
    trailers = error.trailing_metadata() or ()
    return error.details() + "".join(f"{k}={v!r}" for k, v in trailers)


def test_servicer_bug_is_internal_with_request_id_and_no_exception_text(buggy_server):
    with grpc.insecure_channel(buggy_server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/test.Buggy/Fail")(b"", timeout=5)

    error = AgentcoordError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INTERNAL
    assert error.reason == "INTERNAL"
    assert error.request_id
    wire = _wire_text(caught.value)
    assert SECRET not in wire and "RuntimeError" not in wire and "Traceback" not in wire


async def test_bug_in_a_stream_after_an_item_ends_it_internal_without_exception_text(
    buggy_server,
):
    async with grpc.aio.insecure_channel(buggy_server.address) as channel:
        call = channel.unary_stream("/test.Buggy/FailStream")(b"", timeout=5)
        received = []
        with pytest.raises(grpc.RpcError) as caught:
            async for item in call:
                received.append(item)

    error = AgentcoordError.from_rpc_error(caught.value)
    assert received == [b"first"]
    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert error.request_id
    wire = _wire_text(caught.value)
    assert SECRET not in wire and "KeyError" not in wire and "Traceback" not in wire


async def test_async_client_decodes_an_internal_error_through_its_stream_helper(buggy_server):
    transport = AsyncTransport(buggy_server.address)
    try:
        client = ServiceClient(transport)
        method = transport.channel.unary_stream("/test.Buggy/FailStream")
        received = []
        with pytest.raises(AgentcoordError) as caught:
            async for item in client._stream(method, b""):
                received.append(item)
    finally:
        await transport.close()

    assert received == [b"first"]
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert caught.value.request_id


def test_an_error_whose_status_cannot_be_built_is_still_internal_with_request_id(buggy_server):
    with grpc.insecure_channel(buggy_server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/test.Buggy/FailToDescribe")(b"", timeout=5)

    error = AgentcoordError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert error.request_id
    wire = _wire_text(caught.value)
    assert SECRET not in wire and "TypeError" not in wire and "Unexpected" not in wire
