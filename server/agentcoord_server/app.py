"""The server: build, add servicers, bind, start, wait; stop gracefully.

`AgentcoordServer` is what `agentcoord serve` and the tests run. Shutdown (DESIGN.md, "Runtime"):
health goes NOT_SERVING, streams are told to end, new calls are refused, in-flight calls get
`shutdown_grace` seconds, then Redis connections close and the embedded Redis stops cleanly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
from collections.abc import Callable, Sequence

import grpc
import structlog
from agentcoord.v1 import admin_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import BlockingConnectionPool, Redis

from . import __version__
from .config import Settings
from .embedded_redis import EmbeddedRedis
from .identity import Authenticator, DevIdentityAuthenticator, NoAuthenticator, required_tiers
from .interceptors import ErrorInterceptor, IdentityInterceptor, LoggingInterceptor
from .services import SERVICE_MODULES, ServiceContext

log = structlog.get_logger("agentcoord.server")

# Keepalive suited to long-lived server streams behind NATs and proxies.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def is_loopback(listen: str) -> bool:
    """True if `host:port` names only a loopback address (127.0.0.0/8, ::1, localhost)."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AgentcoordServer:
    """One agentcoord server process.

    Args:
        settings: the configuration.
        extra_handlers: callables `add(server)` that register more generic handlers (tests use
            this for a deliberately slow method).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        extra_handlers: Sequence[Callable[[grpc.aio.Server], None]] = (),
    ) -> None:
        if settings.insecure_dev_identity and not is_loopback(settings.listen):
            raise ValueError("--insecure-dev-identity binds loopback addresses only")
        self.settings = settings
        self._extra_handlers = extra_handlers
        self._embedded: EmbeddedRedis | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._service_names: list[str] = []
        self.ctx: ServiceContext | None = None
        self.port = 0

    def _authenticator(self) -> Authenticator:
        if self.settings.insecure_dev_identity:
            log.warning(
                "INSECURE development identity: x-agent-id/x-namespace/x-access-tier metadata is trusted"
            )
            return DevIdentityAuthenticator()
        return NoAuthenticator()

    async def _connect_redis(self) -> tuple[Redis, int]:
        if self.settings.redis_url:
            url, mode = self.settings.redis_url, admin_pb2.REDIS_MODE_EXTERNAL
        else:
            self._embedded = EmbeddedRedis(self.settings.data_dir)
            url = await asyncio.to_thread(self._embedded.start)
            mode = admin_pb2.REDIS_MODE_EMBEDDED
        pool = BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            max_connections=self.settings.redis_max_connections,
            timeout=5,
        )
        client = Redis(connection_pool=pool)
        await client.ping()
        return client, mode

    async def start(self) -> int:
        """Connects Redis, binds and starts serving. Returns the bound port."""
        redis, mode = await self._connect_redis()
        self.ctx = ServiceContext(
            settings=self.settings, redis=redis, redis_mode=mode, server_version=__version__
        )
        tiers = required_tiers(m.PB2 for m in SERVICE_MODULES)
        options = [
            *KEEPALIVE_OPTIONS,
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
        ]
        server = grpc.aio.server(
            interceptors=[
                LoggingInterceptor(),
                ErrorInterceptor(),
                IdentityInterceptor(self._authenticator(), tiers),
            ],
            options=options,
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
        )
        self._service_names = [module.register(server, self.ctx) for module in SERVICE_MODULES]
        for add in self._extra_handlers:
            add(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        self.port = server.add_insecure_port(self.settings.listen)
        await server.start()
        self._server = server
        for name in ("", *self._service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", listen=self.settings.listen, port=self.port, version=__version__)
        return self.port

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, streams told to end, in-flight calls get `grace` seconds."""
        grace = self.settings.shutdown_grace if grace is None else grace
        log.info("shutting down", grace_s=grace)
        await self._health.enter_graceful_shutdown()
        if self.ctx is not None:
            self.ctx.shutdown.set()
        if self._server is not None:
            await self._server.stop(grace)
        if self.ctx is not None:
            await self.ctx.redis.aclose()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then stops gracefully."""
    server = AgentcoordServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
