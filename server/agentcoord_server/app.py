"""The server: build, add servicers, bind, start, wait; stop gracefully.

`AgentcoordServer` is what `agentcoord serve` and the tests run. Shutdown (DESIGN.md, "Runtime"):
health goes NOT_SERVING, streams are told to end, new calls are answered UNAVAILABLE for
`shutdown_drain` seconds, calls admitted before get `shutdown_grace` seconds more, then Redis
connections close and the embedded Redis stops cleanly. The embedded Redis is supervised
(redis_supervisor.py): if it dies, health is NOT_SERVING until it is back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from agentcoord.v1 import access_pb2, admin_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from . import __version__, reflection
from . import tracing as tracing_setup
from .config import Settings
from .embedded_redis import EmbeddedRedis
from .errors import AlreadyExists
from .identity import (
    OPERATOR_NAMESPACE,
    Authenticator,
    DevIdentityAuthenticator,
    FailedAuthLimiter,
    TokenAuthenticator,
    operator_callable,
    required_tiers,
)
from .interceptors import Drain, Identity, RpcWrapper
from .metrics import ServerMetrics
from .redis_client import close_redis, connect_redis, parse_redis_url
from .redis_supervisor import RedisSupervisor
from .services import SERVICE_MODULES, ServiceContext
from .store.keys import Keyspace
from .store.namespaces import NamespaceStore
from .store.scripts import preload_registered
from .store.tasks_migrate import migrate_task_layout
from .store.tokens import TokenStore

log = structlog.get_logger("agentcoord.server")

# Keepalive suited to long-lived server streams behind NATs and proxies.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]

BOOTSTRAP_FILE = "bootstrap-token"
"""Name of the 0600 file in the data directory that receives the first STEWARD token."""
OPERATOR_FILE = "operator-token"
"""Name of the 0600 file in the data directory that receives the first OPERATOR token."""
OPERATOR_AGENT = "operator"
BOOTSTRAP_NAMESPACE = "default"
BOOTSTRAP_AGENT = "steward"
# Held while one server bootstraps, so two starting at once on one Redis make one token.
BOOTSTRAP_LOCK = "ac:bootstrap-lock"
MIN_BOOTSTRAP_TOKEN_CHARS = 20


def write_secret_file(path: Path, secret: str) -> None:
    """Writes `secret` to `path`, readable by the owner only (0600) from the moment it exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on O_CREAT
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)


def _read(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from --tls-cert/--tls-key (and --tls-client-ca for mTLS), or None."""
    if settings.tls_cert is None:
        return None
    assert settings.tls_key is not None
    client_ca = _read(settings.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(_read(settings.tls_key), _read(settings.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def is_loopback(listen: str) -> bool:
    """True if `host:port` names only a loopback address (127.0.0.0/8, ::1, localhost)."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def bootstrap_tokens(settings: Settings, tokens: TokenStore, redis: Redis) -> None:
    """First start (no token in Redis): one STEWARD token for namespace `default` and the
    server-wide OPERATOR token (`<data dir>/operator-token`, or `--bootstrap-operator-token`).

    A generated token goes to `<data dir>/bootstrap-token` (0600) and the log says where;
    `--bootstrap-token` registers the given token instead and writes no file. Neither token
    is ever logged. With tokens present nothing is created (a supplied bootstrap token is
    then ignored, so revoking it stays effective across restarts).
    """
    path = Path(settings.data_dir) / BOOTSTRAP_FILE
    if await tokens.any_exist():
        if settings.bootstrap_token:
            log.info("tokens exist; the supplied bootstrap token was not registered")
        elif path.exists():
            log.info("tokens exist; the first STEWARD token was written to", path=str(path))
        # Tokens bootstrapped before the operator tier existed leave none, and no RPC can
        # make the first one: say how to get it (operator_token.py).
        if not await redis.zcard(Keyspace(OPERATOR_NAMESPACE).key("tokens", "index")):
            log.warning(
                "no OPERATOR token exists on this Redis; issue one with "
                "`agentcoord operator-token` (see the README, 'Operator token')"
            )
        return
    if not await redis.set(BOOTSTRAP_LOCK, "1", nx=True, px=30_000):
        log.info("another server is bootstrapping the first token")
        return
    try:
        if await tokens.any_exist():  # another server finished bootstrapping meanwhile
            return
        supplied = settings.bootstrap_token
        token, record = await tokens.issue(
            BOOTSTRAP_NAMESPACE,
            BOOTSTRAP_AGENT,
            access_pb2.ACCESS_TIER_STEWARD,
            description="bootstrap STEWARD token",
            issued_by="bootstrap",
            token=supplied,
        )
        # The server-wide operator (DESIGN.md "Tenancy"), and `default` registered as the
        # namespace the bootstrap STEWARD administers.
        operator_token, operator_record = await tokens.issue(
            OPERATOR_NAMESPACE,
            OPERATOR_AGENT,
            access_pb2.ACCESS_TIER_OPERATOR,
            description="bootstrap OPERATOR token",
            issued_by="bootstrap",
            token=settings.bootstrap_operator_token,
        )
        try:
            await NamespaceStore(redis, tokens).create(
                BOOTSTRAP_NAMESPACE, created_by="bootstrap", description="bootstrap namespace"
            )
        except AlreadyExists:
            pass
        if not settings.bootstrap_operator_token:
            operator_path = Path(settings.data_dir) / OPERATOR_FILE
            write_secret_file(operator_path, operator_token)
            log.warning(
                "bootstrap: wrote the OPERATOR token; use it to create namespaces",
                path=str(operator_path.resolve()),
                token_id=operator_record.token_id,
            )
        if supplied:
            log.info(
                "registered the supplied bootstrap token as STEWARD",
                namespace=BOOTSTRAP_NAMESPACE,
                token_id=record.token_id,
            )
            return
        write_secret_file(path, token)
        log.warning(
            "bootstrap: wrote a STEWARD token for namespace default; use it to issue others",
            path=str(path.resolve()),
            token_id=record.token_id,
        )
    finally:
        await redis.delete(BOOTSTRAP_LOCK)



class AgentcoordServer:
    """One agentcoord server process.

    Args:
        settings: the configuration.
        extra_handlers: callables `add(server)` that register more generic handlers (tests use
            this for a deliberately slow method).
        tracer_provider: an OpenTelemetry TracerProvider to trace with; None: the one the
            OTEL_* environment describes, if any (tracing.py).
        reuse_port: bind with SO_REUSEPORT, as one of `agentcoord serve --workers N`'s
            processes (workers.py); otherwise a port in use fails the start.
        metrics_dir: with metrics on, write them to this prometheus_client multiprocess
            directory for the workers' parent to serve, instead of serving /metrics.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        extra_handlers: Sequence[Callable[[grpc.aio.Server], None]] = (),
        tracer_provider: Any = None,
        reuse_port: bool = False,
        metrics_dir: Path | None = None,
    ) -> None:
        if settings.insecure_dev_identity and not is_loopback(settings.listen):
            raise ValueError("--insecure-dev-identity binds loopback addresses only")
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if settings.tls_client_ca is not None and settings.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        settings.check_size_limits()
        if not 0 <= settings.auth_cache_seconds <= 5:
            raise ValueError("the auth cache bound must be between 0 and 5 seconds")
        if settings.bootstrap_token is not None and (
            len(settings.bootstrap_token) < MIN_BOOTSTRAP_TOKEN_CHARS
            or len(settings.bootstrap_token) > 512
            or any(c.isspace() for c in settings.bootstrap_token)
        ):
            raise ValueError(
                f"the bootstrap token must be {MIN_BOOTSTRAP_TOKEN_CHARS}-512 characters "
                "without whitespace"
            )
        self.settings = settings
        self._extra_handlers = extra_handlers
        self._reuse_port = reuse_port
        self._metrics_dir = metrics_dir
        self._embedded: EmbeddedRedis | None = None
        self._supervisor: RedisSupervisor | None = None
        self._drain = Drain()
        self.failed = asyncio.Event()
        """Set when the server cannot go on serving (the embedded Redis died for good)."""
        self.failure = ""
        self._redis: Redis | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._service_names: list[str] = []
        self.ctx: ServiceContext | None = None
        self.port = 0
        # Operations (metrics.py, tracing.py): nothing is installed for what is off.
        self.metrics = ServerMetrics() if settings.metrics_listen else None
        self._tracer_provider = tracer_provider
        self.tracing: tracing_setup.Tracing | None = None

    def _authenticator(self, tokens: TokenStore) -> Authenticator:
        if self.settings.insecure_dev_identity:
            log.warning(
                "INSECURE development identity: x-agent-id/x-namespace/x-access-tier metadata is trusted"
            )
            return DevIdentityAuthenticator()
        return TokenAuthenticator(tokens, cache_seconds=self.settings.auth_cache_seconds)

    async def _connect_redis(self) -> tuple[Redis, int]:
        if self.settings.redis_url:
            url = self.settings.redis_url
        else:
            self._embedded = EmbeddedRedis(self.settings.data_dir)
            self._supervisor = RedisSupervisor(
                self._embedded,
                on_down=self._redis_down,
                on_up=self._redis_up,
                on_failed=self._redis_failed,
            )
            url = await self._supervisor.start()
        client, mode = await connect_redis(
            parse_redis_url(url),
            max_connections=self.settings.redis_max_connections,
            timeout=self.settings.redis_timeout,
        )
        self._redis = client
        if self._embedded is not None:
            mode = admin_pb2.REDIS_MODE_EMBEDDED
        return client, mode

    async def start(self) -> int:
        """Connects Redis, binds and starts serving. Returns the bound port.

        If a step fails (Redis unreachable, port in use…), what had been started — the embedded
        redis-server, the Redis connections — is stopped before the error propagates, so a
        failed start leaves no process behind.
        """
        try:
            return await self._start()
        except BaseException:
            await self._release()
            raise

    async def _release(self) -> None:
        """Closes the Redis connections and stops the embedded Redis (each at most once)."""
        if self.metrics is not None:
            # First, and off the loop: a worker's metrics writer flushes once more, reading
            # the server's state on this loop and from Redis.
            await asyncio.to_thread(self.metrics.stop_http)
        redis, self._redis = self._redis, None
        if redis is not None:
            await close_redis(redis)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor.stop()
        tracing, self.tracing = self.tracing, None
        if tracing is not None:
            tracing.shutdown()

    async def _set_health(self, status: int) -> None:
        for name in ("", *self._service_names):
            await self._health.set(name, status)  # type: ignore[arg-type]

    async def _redis_down(self) -> None:
        # Open Subscribe streams end by themselves: their reader's connection fails, and they
        # end UNAVAILABLE (REDIS_UNAVAILABLE), so clients resume from their cursor.
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _redis_up(self) -> None:
        if self._redis is not None:
            # A new redis-server has an empty script cache: load them all before SERVING.
            await preload_registered(self._redis)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _redis_failed(self, failure: str) -> None:
        self.failure = failure
        self.failed.set()

    async def _start(self) -> int:
        redis, mode = await self._connect_redis()
        self._instrument(redis)
        self.ctx = ServiceContext(
            settings=self.settings, redis=redis, redis_mode=mode, server_version=__version__
        )
        tokens = TokenStore(redis)
        authenticator = (
            self._authenticator(tokens)
            if self.metrics is None
            else self.metrics.instrument_authenticator(self._authenticator, tokens)
        )
        if authenticator.revocable and not self._reuse_port:  # a worker's parent did it
            await bootstrap_tokens(self.settings, tokens, redis)
        tiers = required_tiers(m.PB2 for m in SERVICE_MODULES)
        for_operator = operator_callable(m.PB2 for m in SERVICE_MODULES)
        options = [
            *KEEPALIVE_OPTIONS,
            # grpc enables SO_REUSEPORT by default: a second server on a port in use would then
            # start and silently share the port's connections instead of failing to bind. The
            # workers of `serve --workers N` share it on purpose; their parent has checked that
            # no other program holds the port and keeps it reserved (workers.py).
            ("grpc.so_reuseport", 1 if self._reuse_port else 0),
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
        ]
        wrapper = RpcWrapper(
            identity=Identity(
                authenticator,
                tiers,
                operator_callable=for_operator,
                # Streams re-check at the cache bound (uncached), so revocation reaches them
                # within it too; at least every 0.1 s when caching is off.
                recheck_seconds=self.settings.auth_cache_seconds or 0.1,
                limiter=FailedAuthLimiter(
                    max_failures=self.settings.auth_failure_limit,
                    window_seconds=self.settings.auth_failure_window,
                ),
            ),
            drain=self._drain,
            metrics=self.metrics,
            tracing=self.tracing,
        )
        # No grpc interceptors: every handler is wrapped once, as it registers (interceptors.py).
        server = grpc.aio.server(
            options=options, maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs
        )
        registrar = wrapper.registrar(server)
        self._service_names = [module.register(registrar, self.ctx) for module in SERVICE_MODULES]
        scripts = await preload_registered(redis)
        # Before serving: tasks of the layout before issue 13 must be claimable at once.
        moved = await migrate_task_layout(redis, task_ttl=self.settings.ttl.task)
        if moved:
            log.info("moved tasks to the current key layout", tasks=moved)
        for add in self._extra_handlers:
            add(registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, registrar)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], registrar
        )
        credentials = server_credentials(self.settings)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                self.port = server.add_secure_port(self.settings.listen, credentials)
        except RuntimeError as exc:  # grpc says only "Failed to bind to address …"
            raise ServeFailed(
                f"cannot listen on {self.settings.listen}: the address is in use or not "
                "available here (see --listen)"
            ) from exc
        # Before the gRPC server starts: a metrics port in use then fails the start cleanly.
        metrics_port = self._serve_metrics(redis)
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            listen=self.settings.listen,
            port=self.port,
            pid=os.getpid(),
            version=__version__,
            tls=credentials is not None,
            mtls=self.settings.tls_client_ca is not None,
            lua_scripts=scripts,
            metrics_port=metrics_port,
            tracing=self.tracing is not None,
        )
        return self.port

    def _instrument(self, redis: Redis) -> None:
        """Metrics and tracing hooks on the Redis client, before any store is built."""
        if self.metrics is not None:
            self.metrics.instrument_redis(redis)
        if self._tracer_provider is not None:
            self.tracing = tracing_setup.Tracing(self._tracer_provider)
        else:
            provider = tracing_setup.provider_from_environment()
            if provider is not None:
                self.tracing = tracing_setup.Tracing(provider, owned=True)
        if self.tracing is not None:
            self.tracing.instrument_redis(redis)

    def _serve_metrics(self, redis: Redis) -> int | None:
        """Starts /metrics (--metrics-listen); returns its port, or None when metrics are off."""
        if self.metrics is None or self.settings.metrics_listen is None:
            return None
        from .services import signals as signals_service
        from .services import tasks as tasks_service

        ctx = self.ctx
        assert ctx is not None
        self.metrics.initialize(
            ("server_stream" if m.server_streaming else "unary", f"/{s.full_name}/{m.name}")
            for module in SERVICE_MODULES
            for s in module.PB2.DESCRIPTOR.services_by_name.values()
            for m in s.methods
        )
        self.metrics.watch(
            asyncio.get_running_loop(),
            redis,
            lambda: signals_service.hub_for(ctx),
            tasks_service.store_for(ctx),
            task_ttl=self.settings.ttl.task,
        )
        if self._metrics_dir is not None:
            # A worker: its parent serves them, on the port it put in our settings.
            self.metrics.write_to(self._metrics_dir)
            return int(self.settings.metrics_listen.rpartition(":")[2])
        return self.metrics.start_http(self.settings.metrics_listen)

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(
        self, grace: float | None = None, *, drain: float | None = None, exiting: bool = False
    ) -> None:
        """Drained stop. Health goes NOT_SERVING and streams are told to end; for `drain`
        seconds (default settings.shutdown_drain) the server keeps serving but answers every
        new agentcoord call UNAVAILABLE (SERVER_SHUTTING_DOWN), which clients retry elsewhere
        or later; calls admitted before then get up to `grace` seconds (default
        settings.shutdown_grace) more; then grpc stops and Redis is released.

        exiting: the process exits right after this returns (`agentcoord serve`). grpc is then
        left running: its shutdown answers calls it has received but not yet handed to us with
        CANCELLED, while the process's exit closes the connections, which clients see as
        UNAVAILABLE — so a client never gets CANCELLED for a call that never ran.
        """
        grace = self.settings.shutdown_grace if grace is None else grace
        drain = self.settings.shutdown_drain if drain is None else drain
        log.info("shutting down", drain_s=drain, grace_s=grace)
        self._drain.begin()
        await self._health.enter_graceful_shutdown()
        if self.ctx is not None:
            self.ctx.shutdown.set()
        if drain > 0:
            await asyncio.sleep(drain)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if not await self._drain.wait_idle(grace):
            log.warning("calls still running when the grace period ended", grace_s=grace)
        if self._server is not None and not exiting:
            await self._server.stop(max(0.0, deadline - loop.time()))
        await self._release()
        log.info("stopped")


class ServeFailed(RuntimeError):
    """The server stopped because it could not go on serving; the message is one line."""


REDIS_DOWN_SIGNAL = signal.SIGUSR1
"""What the parent of `serve --workers N` sends its workers when the embedded Redis died."""
REDIS_UP_SIGNAL = signal.SIGUSR2
"""… and when it is back (the parent has loaded the scripts)."""


async def serve(
    settings: Settings, *, reuse_port: bool = False, metrics_dir: Path | None = None
) -> None:
    """Runs until SIGTERM or SIGINT, then stops (drained). The caller must exit the process
    right after it returns or raises: see `AgentcoordServer.stop(exiting=True)`.

    reuse_port, metrics_dir: as one of the processes of `serve --workers N` (workers.py; see
    AgentcoordServer). Such a worker also goes NOT_SERVING on REDIS_DOWN_SIGNAL and SERVING
    again on REDIS_UP_SIGNAL, sent by its parent, which supervises the embedded Redis.

    Raises DataDirectoryInUse / EmbeddedRedisError if the embedded Redis cannot start, and
    ServeFailed (after stopping) if it died and could not be brought back.
    """
    server = AgentcoordServer(settings, reuse_port=reuse_port, metrics_dir=metrics_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reuse_port:
        pending: set[asyncio.Future[None]] = set()

        async def change_health(change: Callable[[], Any]) -> None:
            try:
                await change()
            except Exception as exc:  # Redis died again: the next signal says so
                log.warning("following the embedded Redis failed", error=repr(exc))

        def notified(change: Callable[[], Any]) -> None:
            future = asyncio.ensure_future(change_health(change))
            pending.add(future)  # held until done
            future.add_done_callback(pending.discard)

        loop.add_signal_handler(REDIS_DOWN_SIGNAL, notified, server._redis_down)
        loop.add_signal_handler(REDIS_UP_SIGNAL, notified, server._redis_up)
    await server.start()
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.failed.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
        await server.stop(exiting=True)
    if server.failure:
        raise ServeFailed(server.failure)
