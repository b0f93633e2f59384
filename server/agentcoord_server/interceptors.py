"""Server interceptors: the canonical log line, error mapping and identity.

Installed outermost first: LoggingInterceptor → ErrorInterceptor → DrainInterceptor →
IdentityInterceptor → servicer.
Each wraps a method's handler once (cached per method), so per-call work is only the call itself.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import redis.exceptions
import structlog
from agentcoord.v1 import error_reason_pb2
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import errors
from .identity import (
    OPERATOR,
    AccessTier,
    Authenticator,
    FailedAuthLimiter,
    Principal,
    bind_principal,
    metadata_value,
    peer_address,
    tier_name,
)

log = structlog.get_logger("agentcoord.rpc")

ERROR_DOMAIN = "agentcoord"
# Every ErrorInfo.reason the server may send is a value of the contract's ErrorReason enum.
CONTRACT_REASONS = frozenset(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}

# The one table from domain errors to status codes (looked up along the class's MRO).
STATUS_CODES: Mapping[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DomainError: grpc.StatusCode.INTERNAL,
}

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
Wrapper = Callable[[Behavior, str], Behavior]


def _wrap_handler(
    handler: grpc.RpcMethodHandler, unary: Wrapper, stream: Wrapper, method: str
) -> grpc.RpcMethodHandler:
    """Returns handler with its behaviour wrapped (unary or server-streaming responses)."""
    if handler.request_streaming:
        return handler  # agentcoord has no client-streaming RPCs
    if handler.response_streaming:
        behavior = handler.unary_stream  # type: ignore[attr-defined]
        if not inspect.isasyncgenfunction(behavior):
            # A stream that writes with context.write() and returns (grpc's health Watch):
            # to a wrapper it is one awaited call, like a unary one.
            return handler._replace(unary_stream=unary(behavior, method))  # type: ignore[attr-defined]
        return handler._replace(unary_stream=stream(behavior, method))  # type: ignore[attr-defined]
    return handler._replace(unary_unary=unary(handler.unary_unary, method))  # type: ignore[attr-defined]


class _CachingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once and reuses it for every later call."""

    def __init__(self) -> None:
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method  # type: ignore[attr-defined]
        try:
            return self._cache[method]  # type: ignore[return-value]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        wrapped = None if handler is None else self.wrap(handler, method)
        self._cache[method] = wrapped
        return wrapped  # type: ignore[return-value]

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def _code_of(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    """The status the call ended with: the one set by an abort, else `default`."""
    code = context.code()
    if code is None:
        return default.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(int(code), str(code))


class LoggingInterceptor(_CachingInterceptor):
    """Binds request_id and method to the log context and writes one canonical line per RPC.

    The request id is the caller's `x-request-id` metadata or a new one; it is returned in the
    trailing metadata and in every error's ErrorInfo.
    """

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _wrap_handler(handler, self._unary, self._stream, method)

    @staticmethod
    def _begin(context: grpc.aio.ServicerContext, method: str) -> str:
        request_id = metadata_value(context.invocation_metadata() or (), "x-request-id")
        if not request_id or len(request_id) > 128:
            request_id = uuid.uuid4().hex
        # No clear_contextvars(): grpc.aio serves each RPC in a task of its own, with its own copy
        # of the context, so nothing bound here outlives the call (and clearing cost ~15% of a
        # unary call's throughput).
        structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
        context.set_trailing_metadata((("x-request-id", request_id),))
        return request_id

    @staticmethod
    def _end(context: grpc.aio.ServicerContext, started: float, default: grpc.StatusCode) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        log.info("rpc", code=_code_of(context, default), duration_ms=duration_ms)

    def _unary(self, behavior: Behavior, method: str) -> Behavior:
        async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._begin(context, method)
            started = time.perf_counter()
            outcome = grpc.StatusCode.UNKNOWN
            try:
                response = await behavior(request, context)
                outcome = grpc.StatusCode.OK
                return response
            except asyncio.CancelledError:
                outcome = grpc.StatusCode.CANCELLED
                raise
            finally:
                self._end(context, started, outcome)

        return logged

    def _stream(self, behavior: Behavior, method: str) -> Behavior:
        async def logged(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self._begin(context, method)
            started = time.perf_counter()
            outcome = grpc.StatusCode.UNKNOWN
            try:
                async for item in behavior(request, context):
                    yield item
                outcome = grpc.StatusCode.OK
            except (asyncio.CancelledError, GeneratorExit):
                outcome = grpc.StatusCode.CANCELLED
                raise
            finally:
                self._end(context, started, outcome)

        return logged


# The status travels in trailers, which a client refuses above 16 KiB (grpc's hard metadata
# limit; 8 KiB soft): texts that echo request data (a 200,000-character map key in a field path)
# are cut so the whole status stays under 8 KiB, whatever the request held.
MAX_MESSAGE_BYTES = 256
MAX_TEXT_BYTES = 160
MAX_VIOLATIONS = 8
MAX_METADATA = 8


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), marked with '…'."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def _violations(pairs: list[tuple[str, str]]) -> list[error_details_pb2.BadRequest.FieldViolation]:
    shown = pairs if len(pairs) <= MAX_VIOLATIONS else pairs[: MAX_VIOLATIONS - 1]
    out = [
        error_details_pb2.BadRequest.FieldViolation(
            field=_cut(f, MAX_TEXT_BYTES), description=_cut(d, MAX_TEXT_BYTES)
        )
        for f, d in shown
    ]
    if len(shown) < len(pairs):
        out.append(
            error_details_pb2.BadRequest.FieldViolation(
                field="…", description=f"{len(pairs) - len(shown)} more fields are invalid"
            )
        )
    return out


def _status_for(exc: errors.DomainError, code: grpc.StatusCode) -> grpc.Status:
    request_id = structlog.contextvars.get_contextvars().get("request_id", "")
    if exc.reason not in CONTRACT_REASONS:
        # tests/test_error_reasons.py keeps this from happening; if it does, clients still get
        # the reason, and the log says the contract needs it.
        log.error("error reason missing from the contract's ErrorReason", reason=exc.reason)
    metadata = {
        _cut(k, 64): _cut(v, MAX_TEXT_BYTES) for k, v in list(exc.metadata.items())[:MAX_METADATA]
    }
    info = error_details_pb2.ErrorInfo(
        reason=exc.reason, domain=ERROR_DOMAIN, metadata={**metadata, "request_id": request_id}
    )
    details: list[Any] = [info]
    if exc.field_violations:
        details.append(
            error_details_pb2.BadRequest(field_violations=_violations(exc.field_violations))
        )
    if exc.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(exc.retry_delay * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    message = _cut(exc.message, MAX_MESSAGE_BYTES)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    converted = rpc_status.to_status(status)
    # Keep the request id in the trailers of failed calls too.
    return _StatusWithTrailers(
        converted.code,
        converted.details,
        (*converted.trailing_metadata, ("x-request-id", request_id)),
    )


class _StatusWithTrailers(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def status_code_for(exc: errors.DomainError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


REDIS_UNAVAILABLE_ERRORS = (
    redis.exceptions.ConnectionError,  # also MaxConnectionsError, MasterNotFoundError
    redis.exceptions.TimeoutError,
    # A Redis Cluster during a failover or resharding: CLUSTERDOWN, TRYAGAIN, MOVED/ASK that
    # outlasted the client's redirections, "TTL exhausted", a slot no node covers yet.
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
    redis.exceptions.RedisClusterException,
    # A write that reached a primary just demoted to replica (Sentinel or cluster failover).
    redis.exceptions.ReadOnlyError,
)
"""Exceptions meaning "Redis cannot serve this now, retry": UNAVAILABLE (REDIS_UNAVAILABLE)."""

REDIS_UNAVAILABLE_REPLIES = ("NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")
"""Error replies (also inside a Lua script's error) that redis-py leaves as a plain
ResponseError but that mean the same: a primary refusing writes under `min-replicas-to-write`
with too few replicas, a replica that lost its primary, a cluster mid-failover."""


_REDIS_CONNECTION_FILE = os.path.join("redis", "asyncio", "connection.py")


def _lost_redis_transport(exc: BaseException) -> bool:
    """True for what redis-py's asyncio connection raises, instead of ConnectionError, when it
    writes on a transport closed under it (the peer reset it, or a cluster client tore its
    connections down to re-read the slot map during a failover): AttributeError or TypeError
    from asyncio (redis/redis-py#4287, redis-py 8.1), RuntimeError "the handler is closed"
    from uvloop. redis-py disconnects that connection, so a retry gets a fresh one. Only such
    errors raised under redis-py's connection module count, so a bug of ours stays INTERNAL."""
    if not isinstance(exc, AttributeError | TypeError | RuntimeError):
        return False
    tb = exc.__traceback__
    files = []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    innermost = files[-1] if files else ""
    return any(f.endswith(_REDIS_CONNECTION_FILE) for f in files) and (
        innermost.endswith(_REDIS_CONNECTION_FILE)
        or f"{os.sep}asyncio{os.sep}" in innermost
        or "uvloop" in innermost
    )


def _translate(exc: BaseException) -> errors.DomainError:
    """Any exception that escaped a servicer, as the domain error the client should see."""
    if isinstance(exc, errors.DomainError):
        return exc
    if (
        isinstance(exc, REDIS_UNAVAILABLE_ERRORS)
        or (
            isinstance(exc, redis.exceptions.ResponseError)
            and any(word in str(exc) for word in REDIS_UNAVAILABLE_REPLIES)
        )
        or _lost_redis_transport(exc)
    ):
        log.warning("redis unavailable", error=type(exc).__name__)
        return errors.Unavailable("Redis is unavailable; retry later", reason="REDIS_UNAVAILABLE")
    log.error("unhandled error", exc_info=exc)
    return errors.DomainError(
        "internal error; quote the request_id when reporting it", reason="INTERNAL"
    )


Deserializer = Callable[[bytes], Any]


def _parser(deserializer: Deserializer) -> Callable[[bytes], Any]:
    """Parses a request body with the method's own deserializer; a body that does not parse
    (random bytes, invalid UTF-8 in a string, nesting past protobuf's depth limit) is
    InvalidArgument MALFORMED_REQUEST instead of grpc's UNKNOWN."""
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = getattr(message_type, "full_name", "the method's request message")

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            raise errors.InvalidArgument(
                f"the request body is not a valid {type_name} message ({type(exc).__name__})",
                reason="MALFORMED_REQUEST",
                metadata={"message_type": type_name},
            ) from None

    return parse


class ErrorInterceptor(_CachingInterceptor):
    """Parses each request and maps every exception to a `google.rpc.Status` with ErrorInfo
    (and BadRequest).

    DomainError subclasses map through STATUS_CODES; Redis connection failures become
    UNAVAILABLE (retryable); anything else is a bug: INTERNAL with the request id and no stack
    trace on the wire (the trace is logged).

    Request bodies are parsed here rather than by grpc: grpc.aio deserializes before any
    interceptor runs and answers a body that does not parse with UNKNOWN, no request id and no
    log line. So each handler is given no request deserializer (grpc passes the bytes through)
    and the body is parsed once, here, inside the logging and error mapping.
    """

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        deserializer = handler.request_deserializer  # type: ignore[attr-defined]
        if deserializer is None or handler.request_streaming:
            return _wrap_handler(handler, self._unary, self._stream, method)
        parse = _parser(deserializer)
        handler = handler._replace(request_deserializer=None)  # type: ignore[attr-defined]
        return _wrap_handler(
            handler,
            lambda behavior, m: self._unary(behavior, m, parse),
            lambda behavior, m: self._stream(behavior, m, parse),
            method,
        )

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        domain = _translate(exc)
        try:
            status = _status_for(domain, status_code_for(domain))
        except Exception as bug:  # e.g. non-string ErrorInfo metadata
            # Left to grpc, this would go out as UNKNOWN "Unexpected <class>: <text>".
            domain = _translate(bug)
            status = _status_for(domain, status_code_for(domain))
        await context.abort_with_status(status)

    def _unary(
        self, behavior: Behavior, method: str, parse: Deserializer | None = None
    ) -> Behavior:
        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if parse is not None:
                    request = parse(request)
                return await behavior(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await self._abort(context, exc)

        return mapped

    def _stream(
        self, behavior: Behavior, method: str, parse: Deserializer | None = None
    ) -> Behavior:
        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                if parse is not None:
                    request = parse(request)
                async for item in behavior(request, context):
                    yield item
            except (asyncio.CancelledError, GeneratorExit, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await self._abort(context, exc)

        return mapped


class IdentityInterceptor(_CachingInterceptor):
    """Authenticates every agentcoord RPC and enforces its declared required_tier.

    Both happen before the servicer runs, so no storage is touched for a refused call.
    Methods outside `agentcoord.` (health, reflection) pass through unauthenticated; an
    agentcoord method that declares no tier is refused (fail closed).

    Server streams of a revocable identity (tokens) are re-authenticated, bypassing the auth
    cache, every `recheck_seconds` while they are open, by one watchdog task per stream: a
    stream whose token was revoked or expired ends with UNAUTHENTICATED within that bound even
    if the handler is waiting for something to send (DESIGN.md: "Long-lived streams re-check
    revocation"). Streamed items pass through with no per-item work. Servicers need do nothing
    for this.

    Failed authentications are counted per peer address by `limiter`: a peer over its limit
    is refused before its call is authenticated (so a flood of bad tokens from one peer costs
    no Redis lookups), while other peers' calls go on. The streams' re-checks are not counted.

    Raises (mapped by ErrorInterceptor): Unauthenticated, PermissionDenied, ResourceExhausted
    (TOO_MANY_FAILED_AUTHENTICATIONS).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        tiers: Mapping[str, AccessTier],
        *,
        operator_callable: frozenset[str] = frozenset(),
        recheck_seconds: float = 5.0,
        limiter: FailedAuthLimiter | None = None,
    ) -> None:
        super().__init__()
        if recheck_seconds <= 0:
            raise ValueError("recheck_seconds must be positive")
        self._authenticator = authenticator
        self._limiter = limiter if limiter is not None else FailedAuthLimiter(max_failures=0)
        self._tiers = dict(tiers)
        self._operator_callable = operator_callable
        self._recheck_seconds = recheck_seconds

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not method.startswith("/agentcoord."):
            return handler
        return _wrap_handler(handler, self._unary, self._stream, method)

    async def _admit(self, context: grpc.aio.ServicerContext, method: str) -> None:
        required = self._tiers.get(method, 0)
        if required == 0:
            raise errors.PermissionDenied(
                f"{method} declares no required tier", reason="NO_REQUIRED_TIER"
            )
        principal = await self._authenticate(context)
        structlog.contextvars.bind_contextvars(
            agent=principal.agent_id, namespace=principal.namespace
        )
        # The contract's rule (access.proto): the OPERATOR calls exactly the RPCs that require
        # OPERATOR or are operator_callable; every other tier those its tier reaches (below).
        if (
            principal.tier == OPERATOR
            and required != OPERATOR
            and method not in self._operator_callable
        ):
            raise errors.PermissionDenied(
                f"{method} reads or writes a namespace's data, which the OPERATOR never does",
                reason="OPERATOR_DATA_ACCESS",
                metadata={"required_tier": tier_name(required), "caller_tier": "OPERATOR"},
            )
        if principal.tier < required:
            raise errors.PermissionDenied(
                f"{method} needs tier {tier_name(required)}; caller has {tier_name(principal.tier)}",
                reason="TIER_TOO_LOW",
                metadata={
                    "required_tier": tier_name(required),
                    "caller_tier": tier_name(principal.tier),
                },
            )
        bind_principal(principal)

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        limiter = self._limiter
        if not limiter.enabled:
            return await self._authenticator.authenticate(context.invocation_metadata() or ())
        peer = peer_address(context.peer())
        wait = limiter.retry_after(peer)
        if wait > 0:
            seconds = math.ceil(wait)
            raise errors.ResourceExhausted(
                f"too many failed authentications from this address; retry in {seconds} s",
                reason="TOO_MANY_FAILED_AUTHENTICATIONS",
                metadata={"retry_after_seconds": str(seconds)},
                retry_delay=wait,
            )
        try:
            return await self._authenticator.authenticate(context.invocation_metadata() or ())
        except errors.Unauthenticated:
            limiter.record_failure(peer)
            raise

    def _unary(self, behavior: Behavior, method: str) -> Behavior:
        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(context, method)
            return await behavior(request, context)

        return admitted

    def _stream(self, behavior: Behavior, method: str) -> Behavior:
        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(context, method)
            if not self._authenticator.revocable:
                async for item in behavior(request, context):
                    yield item
                return
            rpc = asyncio.current_task()
            assert rpc is not None
            ending = asyncio.Event()
            watchdog = asyncio.create_task(self._watch(context, rpc, ending))
            try:
                async for item in behavior(request, context):
                    yield item
            except Exception:
                # The watchdog is already sending its status: a second abort (the handler's
                # error, mapped by ErrorInterceptor) would fail with "Abort already called!".
                if not ending.is_set():
                    raise
            finally:
                watchdog.cancel()

        return admitted

    async def _watch(
        self, context: grpc.aio.ServicerContext, rpc: asyncio.Task[Any], ending: asyncio.Event
    ) -> None:
        """Re-authenticates an open stream's caller (uncached) every recheck_seconds.

        Items pass from the handler to the wire untouched; only this one task per stream does
        the checking. When a check fails (revoked, expired, or Redis unreachable) it ends the
        call with that status and cancels the RPC's task, so a handler waiting for something to
        send is released at once (its finally blocks run). `ending` is set before the status
        is sent, so the stream wrapper knows the call's status is already decided.
        """
        metadata = context.invocation_metadata() or ()
        try:
            while True:
                await asyncio.sleep(self._recheck_seconds)
                await self._authenticator.authenticate(metadata, fresh=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            domain = _translate(exc)
            ending.set()
            try:
                await context.abort_with_status(_status_for(domain, status_code_for(domain)))
            except Exception:  # abort raises once the status is sent
                pass
            rpc.cancel()


class DrainInterceptor(_CachingInterceptor):
    """Answers agentcoord calls UNAVAILABLE (SERVER_SHUTTING_DOWN) once a stop has begun, and
    counts the calls admitted before, so the stop can wait for them.

    Why not leave this to grpc: once `server.stop()` runs, grpc core fails a call it has
    received but not yet handed to the application with CANCELLED, which clients rightly do not
    retry although the call never ran. So the server keeps serving through a drain window —
    health NOT_SERVING, every new call refused here with a retryable status, before anything
    reaches Redis — and only then stops (DESIGN.md, "Runtime"). Health and reflection pass
    through, so probes keep reading NOT_SERVING.

    Installed inside ErrorInterceptor (the refusal becomes a google.rpc.Status with the
    request id) and outside IdentityInterceptor (no token lookup for a refused call).
    """

    def __init__(self) -> None:
        super().__init__()
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()

    def begin(self) -> None:
        """From now on new agentcoord calls are refused."""
        self.draining = True
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """After `begin()`: waits until no admitted call is running, at most `timeout` seconds.
        Returns whether none is."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not method.startswith("/agentcoord."):
            return handler
        return _wrap_handler(handler, self._unary, self._stream, method)

    def _admit(self) -> None:
        if self.draining:
            raise errors.Unavailable(
                "the server is shutting down; retry on another server or after its restart",
                reason="SERVER_SHUTTING_DOWN",
            )
        self._in_flight += 1

    def _release(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self.draining:
            self._idle.set()

    def _unary(self, behavior: Behavior, method: str) -> Behavior:
        async def drained(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._admit()
            try:
                return await behavior(request, context)
            finally:
                self._release()

        return drained

    def _stream(self, behavior: Behavior, method: str) -> Behavior:
        async def drained(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self._admit()
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                self._release()

        return drained
