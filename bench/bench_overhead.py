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
from agentcoord_server.interceptors import RpcWrapper
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

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


async def interceptor_cost(calls: int = 100_000) -> None:
    """µs the RPC wrapper (interceptors.py) adds to one unary call of a no-op handler outside
    agentcoord (no identity): the request id, log context and canonical line (logging at
    WARNING here, so the line is dropped), then with metrics, then with tracing on too."""

    async def handler(request: Any, context: Any) -> Any:
        return request

    method = "/test.Bench/Noop"
    plain = RpcWrapper()._unary(handler, method, None)
    metered = RpcWrapper(metrics=ServerMetrics())._unary(handler, method, None)
    # Tracing on, spans recorded but exported nowhere: the SDK's own cost per call.
    traced = RpcWrapper(tracing=Tracing(TracerProvider()))._unary(handler, method, None)
    context = _Context()
    results = {}
    for name, behavior in (
        ("bare", handler), ("wrapper", plain), ("metrics", metered), ("tracing", traced)
    ):
        for _ in range(1000):
            await behavior(None, context)
        started = time.perf_counter()
        for _ in range(calls):
            await behavior(None, context)
        results[name] = (time.perf_counter() - started) / calls * 1e6
    labels = {"wrapper": "RPC wrapper", "metrics": "+ metrics", "tracing": "+ tracing"}
    for name, label in labels.items():
        print(
            f"{label + ', per unary call':<44} {results[name] - results['bare']:9.2f} µs"
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
