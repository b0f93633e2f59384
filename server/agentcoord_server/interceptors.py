"""What every RPC goes through, folded into one wrapper per method, built once at start.

`RpcWrapper` wraps each method handler once, when the services register (`registrar`), so a
call runs one Python frame of ours around the servicer instead of a chain of interceptors. In
that frame, in this order (each step only when it applies):

1. metrics: the call is counted and timed (`--metrics-listen`; metrics.py);
2. the canonical log line: a request id (the caller's `x-request-id` or a new one) bound to the
   log context, returned in the trailing metadata and in every error's ErrorInfo, and one line
   per RPC when it ends (method, agent, namespace, code, duration_ms, request_id);
3. tracing: a SERVER span continuing the caller's trace (OTEL_*; tracing.py);
4. errors: the request body parsed (a body that does not parse is MALFORMED_REQUEST) and every
   exception mapped to a `google.rpc.Status` (ErrorInfo, BadRequest, RetryInfo);
5. drain (agentcoord methods): refused UNAVAILABLE once a stop has begun (`Drain`);
6. identity (agentcoord methods): authenticated and the method's required tier enforced before
   the servicer runs (`Identity`); open streams re-checked.

Health and reflection get 1–4 only.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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

_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def _code_of(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    """The status the call ended with: the one set by an abort, else `default`."""
    code = context.code()
    if code is None:
        return default.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(int(code), str(code))



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



async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Ends the call with the google.rpc.Status `exc` maps to (raises grpc's AbortError)."""
    domain = _translate(exc)
    try:
        status = _status_for(domain, status_code_for(domain))
    except Exception as bug:  # e.g. non-string ErrorInfo metadata
        # Left to grpc, this would go out as UNKNOWN "Unexpected <class>: <text>".
        domain = _translate(bug)
        status = _status_for(domain, status_code_for(domain))
    await context.abort_with_status(status)


class Drain:
    """Answers agentcoord calls UNAVAILABLE (SERVER_SHUTTING_DOWN) once a stop has begun, and
    counts the calls admitted before, so the stop can wait for them.

    Why not leave this to grpc: once `server.stop()` runs, grpc core fails a call it has
    received but not yet handed to the application with CANCELLED, which clients rightly do not
    retry although the call never ran. So the server keeps serving through a drain window —
    health NOT_SERVING, every new call refused here with a retryable status, before anything
    reaches Redis — and only then stops (DESIGN.md, "Runtime"). Health and reflection pass
    through, so probes keep reading NOT_SERVING.

    Checked inside the error mapping (the refusal becomes a google.rpc.Status with the request
    id) and before identity (no token lookup for a refused call).
    """

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()

    def begin(self) -> None:
        """From now on new agentcoord calls are refused."""
        self.draining = True
        if self.in_flight == 0:
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

    def admit(self) -> None:
        """Counts a call in; raises Unavailable (SERVER_SHUTTING_DOWN) once draining."""
        if self.draining:
            raise errors.Unavailable(
                "the server is shutting down; retry on another server or after its restart",
                reason="SERVER_SHUTTING_DOWN",
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.draining:
            self._idle.set()


class Identity:
    """Authenticates every agentcoord RPC and enforces its declared required_tier.

    Both happen before the servicer runs, so no storage is touched for a refused call.
    Methods outside `agentcoord.` (health, reflection) are not checked; an agentcoord method
    that declares no tier is refused (fail closed).

    Server streams of a revocable identity (tokens) are re-authenticated, bypassing the auth
    cache, every `recheck_seconds` while they are open, by one watchdog task per stream: a
    stream whose token was revoked or expired ends with UNAUTHENTICATED within that bound even
    if the handler is waiting for something to send (DESIGN.md: "Long-lived streams re-check
    revocation"). Streamed items pass through with no per-item work. Servicers need do nothing
    for this.

    Failed authentications are counted per peer address by `limiter`: a peer over its limit
    is refused before its call is authenticated (so a flood of bad tokens from one peer costs
    no Redis lookups), while other peers' calls go on. The streams' re-checks are not counted.

    Raises (mapped by the wrapper): Unauthenticated, PermissionDenied, ResourceExhausted
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
        if recheck_seconds <= 0:
            raise ValueError("recheck_seconds must be positive")
        self._authenticator = authenticator
        self._limiter = limiter if limiter is not None else FailedAuthLimiter(max_failures=0)
        self._tiers = dict(tiers)
        self._operator_callable = operator_callable
        self._recheck_seconds = recheck_seconds
        self.revocable = authenticator.revocable

    async def admit(
        self, context: grpc.aio.ServicerContext, metadata: Sequence[Any], method: str
    ) -> None:
        """Authenticates the call and checks its tier; binds the principal (and its agent and
        namespace to the log context)."""
        required = self._tiers.get(method, 0)
        if required == 0:
            raise errors.PermissionDenied(
                f"{method} declares no required tier", reason="NO_REQUIRED_TIER"
            )
        principal = await self._authenticate(context, metadata)
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

    async def _authenticate(
        self, context: grpc.aio.ServicerContext, metadata: Sequence[Any]
    ) -> Principal:
        limiter = self._limiter
        if not limiter.failing:
            # No peer has a failure on record (the usual case): nobody is over the limit, and
            # the peer's address is needed only if this call fails.
            try:
                return await self._authenticator.authenticate(metadata)
            except errors.Unauthenticated:
                limiter.record_failure(peer_address(context.peer()))
                raise
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
            return await self._authenticator.authenticate(metadata)
        except errors.Unauthenticated:
            limiter.record_failure(peer)
            raise

    async def _watch(
        self,
        context: grpc.aio.ServicerContext,
        metadata: Sequence[Any],
        rpc: asyncio.Task[Any],
        ending: asyncio.Event,
    ) -> None:
        """Re-authenticates an open stream's caller (uncached) every recheck_seconds.

        Items pass from the handler to the wire untouched; only this one task per stream does
        the checking. When a check fails (revoked, expired, or Redis unreachable) it ends the
        call with that status and cancels the RPC's task, so a handler waiting for something to
        send is released at once (its finally blocks run). `ending` is set before the status
        is sent, so the stream wrapper knows the call's status is already decided.
        """
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


class RequestIds:
    """New request ids: 32 hex characters (as uuid4().hex was), a random 64-bit prefix drawn
    once per process followed by a counter, so making one is a string format, not a
    getrandom() call. Build it in the serving process (after any fork)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_REQUEST_ID = "x-request-id"
_MAX_REQUEST_ID = 128
_OK = grpc.StatusCode.OK
_UNKNOWN = grpc.StatusCode.UNKNOWN
_CANCELLED = grpc.StatusCode.CANCELLED


def _caller_request_id(metadata: Sequence[Any]) -> str | None:
    for key, value in metadata:
        if key == _REQUEST_ID:
            if isinstance(value, bytes):
                value = value.decode(errors="replace")
            return value if value and len(value) <= _MAX_REQUEST_ID else None
    return None


class RpcWrapper:
    """Builds the one wrapper per method that does everything listed in this module's
    docstring; `registrar(server)` applies it to every handler a service registers.

    Args:
        identity: authentication and tiers for agentcoord methods (None: none; tests only).
        drain: the shutdown drain for agentcoord methods (None: none).
        metrics: a metrics.ServerMetrics (None: metrics off, nothing counted).
        tracing: a tracing.Tracing (None: tracing off, nothing traced).
    """

    def __init__(
        self,
        *,
        identity: Identity | None = None,
        drain: Drain | None = None,
        metrics: Any = None,
        tracing: Any = None,
    ) -> None:
        self._identity = identity
        self._drain = drain
        self._metrics = metrics
        self._tracing = tracing
        self._request_ids = RequestIds()

    def registrar(self, server: grpc.aio.Server) -> Any:
        """An object to register services with in place of `server`: every handler added
        through it is wrapped once (the generated `add_*Servicer_to_server` functions, health,
        reflection and any generic handler all take it)."""
        return _Registrar(server, self)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` with its behaviour wrapped; the request body is then parsed by the
        wrapper (so a body that does not parse gets a proper status), not by grpc."""
        if handler.request_streaming:
            return handler  # agentcoord has no client-streaming RPCs
        deserializer = handler.request_deserializer
        parse = None if deserializer is None else _parser(deserializer)
        handler = handler._replace(request_deserializer=None)  # type: ignore[attr-defined]
        if handler.response_streaming:
            behavior = handler.unary_stream
            if not inspect.isasyncgenfunction(behavior):
                # A stream that writes with context.write() and returns (grpc's health Watch):
                # to the wrapper it is one awaited call, like a unary one.
                return handler._replace(  # type: ignore[attr-defined]
                    unary_stream=self._unary(behavior, method, parse)
                )
            return handler._replace(  # type: ignore[attr-defined]
                unary_stream=self._stream(behavior, method, parse)
            )
        return handler._replace(  # type: ignore[attr-defined]
            unary_unary=self._unary(handler.unary_unary, method, parse)
        )

    def _parts(self, method: str, grpc_type: str) -> tuple[Any, ...]:
        agentcoord = method.startswith("/agentcoord.")
        stats = None if self._metrics is None else self._metrics.rpc(grpc_type, method)
        tracing = self._tracing
        span_name, span_attributes = ("", {}) if tracing is None else tracing.names(method)
        return (
            self._identity if agentcoord else None,
            self._drain if agentcoord else None,
            stats,
            tracing,
            span_name,
            span_attributes,
        )

    def _unary(self, behavior: Behavior, method: str, parse: Any) -> Behavior:
        identity, drain, stats, tracing, span_name, span_attributes = self._parts(method, "unary")
        new_request_id = self._request_ids.new
        bind = structlog.contextvars.bind_contextvars
        perf_counter = time.perf_counter

        async def rpc(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if stats is not None:
                stats.started += 1
            began = perf_counter()
            metadata = context.invocation_metadata() or ()
            request_id = _caller_request_id(metadata) or new_request_id()
            # No clear_contextvars(): grpc.aio serves each RPC in a task of its own, with its
            # own copy of the context, so nothing bound here outlives the call.
            bind(request_id=request_id, method=method)
            context.set_trailing_metadata(((_REQUEST_ID, request_id),))
            span = span_scope = None
            if tracing is not None:
                span_scope = tracing.start(metadata, span_name, span_attributes, request_id)
                span = span_scope.__enter__()
                tracing.bind(span)
            outcome = _UNKNOWN
            try:
                try:
                    if parse is not None:
                        request = parse(request)
                    if drain is None:
                        if identity is not None:
                            await identity.admit(context, metadata, method)
                        response = await behavior(request, context)
                    else:
                        drain.admit()
                        try:
                            if identity is not None:
                                await identity.admit(context, metadata, method)
                            response = await behavior(request, context)
                        finally:
                            drain.release()
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as exc:
                    await _abort(context, exc)
                outcome = _OK
                return response
            except asyncio.CancelledError:
                outcome = _CANCELLED
                raise
            finally:
                code = _code_of(context, outcome)
                if span_scope is not None:
                    tracing.finish(span, code)
                    span_scope.__exit__(None, None, None)
                log.info("rpc", code=code, duration_ms=round((perf_counter() - began) * 1000, 3))
                if stats is not None:
                    stats.handling.observe(perf_counter() - began)
                    handled = stats.handled
                    handled[code] = handled.get(code, 0) + 1

        return rpc

    def _stream(self, behavior: Behavior, method: str, parse: Any) -> Behavior:
        identity, drain, stats, tracing, span_name, span_attributes = self._parts(
            method, "server_stream"
        )
        new_request_id = self._request_ids.new
        bind = structlog.contextvars.bind_contextvars
        perf_counter = time.perf_counter

        async def rpc(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if stats is not None:
                stats.started += 1
            began = perf_counter()
            metadata = context.invocation_metadata() or ()
            request_id = _caller_request_id(metadata) or new_request_id()
            bind(request_id=request_id, method=method)
            context.set_trailing_metadata(((_REQUEST_ID, request_id),))
            span = span_scope = None
            if tracing is not None:
                span_scope = tracing.start(metadata, span_name, span_attributes, request_id)
                span = span_scope.__enter__()
                tracing.bind(span)
            outcome = _UNKNOWN
            admitted = False
            watchdog: asyncio.Task[Any] | None = None
            ending: asyncio.Event | None = None
            try:
                try:
                    if parse is not None:
                        request = parse(request)
                    if drain is not None:
                        drain.admit()
                        admitted = True
                    if identity is not None:
                        await identity.admit(context, metadata, method)
                        if identity.revocable:
                            rpc_task = asyncio.current_task()
                            assert rpc_task is not None
                            ending = asyncio.Event()
                            watchdog = asyncio.create_task(
                                identity._watch(context, metadata, rpc_task, ending)
                            )
                    if stats is None:
                        async for item in behavior(request, context):
                            yield item
                    else:
                        async for item in behavior(request, context):
                            stats.sent += 1
                            yield item
                except (asyncio.CancelledError, GeneratorExit, grpc.aio.AbortError):
                    raise
                except Exception as exc:
                    # When the watchdog is already sending its status, a second abort (the
                    # handler's error) would fail with "Abort already called!".
                    if ending is None or not ending.is_set():
                        await _abort(context, exc)
                finally:
                    if watchdog is not None:
                        watchdog.cancel()
                    if admitted:
                        drain.release()  # type: ignore[union-attr]
                outcome = _OK
            except (asyncio.CancelledError, GeneratorExit):
                outcome = _CANCELLED
                raise
            finally:
                code = _code_of(context, outcome)
                if span_scope is not None:
                    tracing.finish(span, code)
                    span_scope.__exit__(None, None, None)
                log.info("rpc", code=code, duration_ms=round((perf_counter() - began) * 1000, 3))
                if stats is not None:
                    stats.handling.observe(perf_counter() - began)
                    handled = stats.handled
                    handled[code] = handled.get(code, 0) + 1

        return rpc


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come out wrapped, each wrapped once (on its
    first call) and reused. Unknown methods are not remembered, so random method names cost
    no memory."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrapper: RpcWrapper) -> None:
        self._inner = inner
        self._wrapper = wrapper
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method  # type: ignore[attr-defined]
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrapped[method] = self._wrapper.wrap(handler, method)
        return wrapped


class _Registrar:
    """Stands in for a grpc.aio.Server while services register: see RpcWrapper.registrar."""

    def __init__(self, server: grpc.aio.Server, wrapper: RpcWrapper) -> None:
        self._server = server
        self._wrapper = wrapper

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._wrapper) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self._wrapper.wrap(handler, f"/{service_name}/{name}")
                for name, handler in method_handlers.items()
            },
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
