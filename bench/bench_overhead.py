"""What agentcoord's layers cost: raw Redis vs a bare grpc.aio server vs agentcoord RPCs.

    .venv/bin/python -m bench.bench_overhead

Rows: a Redis PING over redis.asyncio; a health Check on a bare grpc.aio server (no
interceptors); agentcoord WhoAmI (interceptors + authentication, no Redis), then again with
Prometheus metrics on (--metrics-listen), and the metrics interceptor's own cost per call
measured in-process on a no-op handler (µs; the figure to keep small); agentcoord
GetServerStats is omitted on purpose (it SCANs, an admin call). The server runs in its own thread
and loop (uvloop), the client in this one, both on this machine's 2 cores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import redis.asyncio
import structlog
from agentcoord import AsyncClient
from agentcoord_server.config import Settings
from agentcoord_server.metrics import ServerMetrics
from agentcoord_server.tracing import Tracing
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from tests.support import ServerThread, dev_identity

from .common import embedded_redis, measure


async def bare_grpc_server() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, f"127.0.0.1:{port}"


class _Context:
    """Just enough of a ServicerContext for the interceptor's bookkeeping."""

    def code(self) -> Any:
        return None

    def invocation_metadata(self) -> Any:
        return ()


async def interceptor_cost(calls: int = 100_000) -> None:
    """µs the metrics and tracing interceptors add to one unary call (a no-op handler,
    wrapped vs not)."""

    async def handler(request: Any, context: Any) -> Any:
        return request

    method = "/agentcoord.v1.AdminService/WhoAmI"
    metered = ServerMetrics().interceptor()._unary(handler, method)
    # Tracing on, spans recorded but exported nowhere: the SDK's own cost per call.
    traced = Tracing(TracerProvider()).interceptor()._unary(handler, method)
    context = _Context()
    results = {}
    for name, behavior in (("bare", handler), ("metrics", metered), ("tracing", traced)):
        for _ in range(1000):
            await behavior(None, context)
        started = time.perf_counter()
        for _ in range(calls):
            await behavior(None, context)
        results[name] = (time.perf_counter() - started) / calls * 1e6
    for name in ("metrics", "tracing"):
        print(
            f"{name + ' interceptor, per unary call':<44} {results[name] - results['bare']:9.2f} µs"
            f"   (wrapped {results[name]:.2f} µs, bare {results['bare']:.2f} µs)"
        )


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with embedded_redis() as url:
        raw = redis.asyncio.Redis.from_url(url)
        await measure("raw Redis PING (redis.asyncio, hiredis)", raw.ping)
        await raw.aclose()

        bare, address = await bare_grpc_server()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            await measure("bare grpc.aio unary (health Check)", lambda: stub.Check(request))
        await bare.stop(None)

        settings = Settings(listen="127.0.0.1:0", redis_url=url, insecure_dev_identity=True)
        handle = ServerThread(settings).start()
        try:
            metadata = dev_identity("bench", "OBSERVER", "bench")
            async with AsyncClient(handle.address, metadata=metadata) as client:
                await measure("agentcoord WhoAmI (interceptors + auth)", client.admin.who_am_i)
        finally:
            handle.stop()

        settings = Settings(
            listen="127.0.0.1:0",
            redis_url=url,
            insecure_dev_identity=True,
            metrics_listen="127.0.0.1:0",
        )
        handle = ServerThread(settings).start()
        try:
            metadata = dev_identity("bench", "OBSERVER", "bench")
            async with AsyncClient(handle.address, metadata=metadata) as client:
                await measure("agentcoord WhoAmI, metrics on", client.admin.who_am_i)
        finally:
            handle.stop()
    await interceptor_cost()


if __name__ == "__main__":
    asyncio.run(main())
