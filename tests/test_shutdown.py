"""Graceful shutdown: in-flight calls finish, new calls get UNAVAILABLE, health says NOT_SERVING."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import server_settings
from .support import ServerThread

SLOW_METHOD = "/test.Slow/Sleep"


def add_slow_method(started: threading.Event):
    """A method outside agentcoord (so no identity needed) that sleeps 2 s, then answers."""

    async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started.set()
        await asyncio.sleep(2.0)
        return b"done"

    def add(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(sleep)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Slow", {"Sleep": handler}),)
        )

    return add


@pytest.fixture
def slow_server(redis_url):
    started = threading.Event()
    handle = ServerThread(
        server_settings(redis_url, shutdown_grace=5.0), extra_handlers=[add_slow_method(started)]
    ).start()
    handle.slow_started = started
    yield handle
    handle.stop()


def test_in_flight_call_completes_and_new_calls_get_unavailable_during_shutdown(slow_server):
    with grpc.insecure_channel(slow_server.address) as channel:
        sleep = channel.unary_unary(SLOW_METHOD)
        in_flight = sleep.future(b"", timeout=10)
        assert slow_server.slow_started.wait(5)

        stopping = slow_server.begin_stop(grace=5.0, drain=1.0)
        health = health_pb2_grpc.HealthStub(channel)
        # The stop begins on the server's loop; new calls are refused from then on.
        for _ in range(100):
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.01)
        with Client(slow_server.address, timeout=5) as client:
            with pytest.raises(AgentcoordError) as refused:
                client.admin.who_am_i()
        still_running = not in_flight.done()

        assert in_flight.result() == b"done"
        stopping.result(10)

    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    # Retryable, and refused before anything ran (not even authentication: no token was sent).
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "SERVER_SHUTTING_DOWN"
    assert refused.value.request_id
    assert still_running, "the new call was only refused after the in-flight one ended"


def test_health_goes_not_serving_when_shutdown_begins(redis_url):
    handle = ServerThread(server_settings(redis_url)).start()
    try:
        handle.run(handle.server.stop(grace=0.1, drain=0))
        status = handle.run(
            handle.server._health.Check(health_pb2.HealthCheckRequest(service=""), None)
        )
    finally:
        handle.stop()

    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_stop_closes_the_servers_redis_connections(redis_url, redis_client):
    def connection_ids() -> set[int]:
        return {int(c["id"]) for c in redis_client.client_list()}

    handle = ServerThread(server_settings(redis_url)).start()
    try:
        # Several connections at once, each asked its own id, so the server's pool holds more
        # than one and we know exactly which (other servers on this Redis open and close theirs).
        redis = handle.server.ctx.redis

        async def pooled_connection_id() -> int:
            async with redis.client() as connection:
                await connection.blpop("nothing", 0.2)
                return int(await connection.client_id())

        async def busy() -> set[int]:
            return set(await asyncio.gather(*(pooled_connection_id() for _ in range(3))))

        opened = handle.run(busy())
        assert opened <= connection_ids()
        handle.run(handle.server.stop(grace=0.1, drain=0))
        # Still on the running loop: connections closed only when the loop ends don't count.
        # Redis notices a closed socket a moment after the client closes it.
        deadline = time.monotonic() + 5
        while (left_open := connection_ids() & opened) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        handle.stop()

    assert len(opened) >= 3
    assert not left_open, "the stopped server's Redis connections are still open"
