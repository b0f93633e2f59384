"""Channels with a client interceptor that attaches the caller's metadata to every call (and,
with OpenTelemetry installed, the current span's W3C trace context) and refuses, locally, calls
the caller's tier cannot make.

The only part of the client that differs between asyncio and sync; everything else is written
once in `_async/` and converted.

The fail-fast check (DESIGN.md "The contract": every client reads the one `required_tier`
declaration from the descriptors): the interceptor learns the caller's principal once, with
WhoAmI, lazily on the first call that needs more than OBSERVER (every principal has at least
OBSERVER), and raises AgentcoordError(PERMISSION_DENIED, reason "TIER_TOO_LOW") without a round
trip for a call whose required tier is above it (for the OPERATOR, whose tier stands apart:
reason "OPERATOR_DATA_ACCESS" for a method it may not call; OBSERVER methods are left to the
server, so no principal costs a WhoAmI for them). If WhoAmI fails, the call goes out and the
server answers: it stays the authority.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import pkgutil
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from agentcoord.v1 import access_pb2, admin_pb2

from .errors import AgentcoordError
from .reasons import ErrorReason

Metadata = Sequence[tuple[str, str]]

# Stay connected through idle periods, e.g. a subscription that waits for signals.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def call_metadata(token: str | None, metadata: Metadata) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <token>` (token from the argument or AGENTCOORD_TOKEN) + extras."""
    token = token or os.environ.get("AGENTCOORD_TOKEN") or None
    base = (("authorization", f"Bearer {token}"),) if token else ()
    return (*base, *((k.lower(), v) for k, v in metadata))


try:  # OpenTelemetry is optional: without it calls carry no trace context, at no cost
    from opentelemetry import propagate as _otel_propagate
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - depends on what is installed
    _otel_propagate = _otel_trace = None  # type: ignore[assignment]


def trace_context() -> tuple[tuple[str, str], ...]:
    """W3C trace context (`traceparent`, …) of the caller's current OpenTelemetry span, as
    metadata, so the server's span continues the caller's trace; () when OpenTelemetry is not
    installed or no span is active (checked first: the propagators' inject costs several µs)."""
    if _otel_trace is None or not _otel_trace.get_current_span().get_span_context().is_valid:
        return ()
    carrier: dict[str, str] = {}
    _otel_propagate.inject(carrier)
    return tuple(carrier.items())


def _merged(details_metadata: Any, extra: tuple[tuple[str, str], ...]) -> list[tuple[str, Any]]:
    return [*(details_metadata or ()), *extra, *trace_context()]


WHO_AM_I = "/agentcoord.v1.AdminService/WhoAmI"


@functools.cache
def _method_options() -> tuple[Mapping[str, int], frozenset[str]]:
    import agentcoord.v1 as generated

    tiers: dict[str, int] = {}
    for_operator: set[str] = set()
    for info in pkgutil.iter_modules(generated.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"agentcoord.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                path = f"/{service.full_name}/{method.name}"
                tiers[path] = options.Extensions[access_pb2.required_tier]
                if options.Extensions[access_pb2.operator_callable]:
                    for_operator.add(path)
    return tiers, frozenset(for_operator)


def required_tiers() -> Mapping[str, int]:
    """`/agentcoord.v1.<Service>/<Method>` → its declared required_tier, read once from the
    descriptors of every `agentcoord.v1.*_pb2` module (the same declaration the server reads)."""
    return _method_options()[0]


def operator_callable() -> frozenset[str]:
    """The methods declaring `(agentcoord.v1.operator_callable) = true`, from the descriptors."""
    return _method_options()[1]


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def _tier_name(tier: int) -> str:
    return access_pb2.AccessTier.Name(tier).removeprefix("ACCESS_TIER_")  # type: ignore[arg-type]


def _tier_too_low(method: str, required: int, own: int) -> AgentcoordError:
    return AgentcoordError(
        code=grpc.StatusCode.PERMISSION_DENIED,
        message=f"{method} needs tier {_tier_name(required)}; caller has {_tier_name(own)} "
        "(refused by the client, not sent)",
        reason=ErrorReason.TIER_TOO_LOW,
        metadata={"required_tier": _tier_name(required), "caller_tier": _tier_name(own)},
    )


def _refusal(method: str, required: int, own: int) -> AgentcoordError | None:
    """The error the contract's rule (access.proto, AccessTier) refuses the call with, or None:
    the OPERATOR calls only OPERATOR and operator_callable methods, every other tier those its
    tier reaches."""
    if own == access_pb2.ACCESS_TIER_OPERATOR:
        if required == own or method in operator_callable():
            return None
        return AgentcoordError(
            code=grpc.StatusCode.PERMISSION_DENIED,
            message=f"{method} reads or writes a namespace's data, which the OPERATOR never "
            "does (refused by the client, not sent)",
            reason=ErrorReason.OPERATOR_DATA_ACCESS,
            metadata={"required_tier": _tier_name(required), "caller_tier": _tier_name(own)},
        )
    return _tier_too_low(method, required, own) if own < required else None


def _needed_tier(details: Any) -> tuple[str, int]:
    """(method path, tier it needs beyond OBSERVER, or 0 when any principal may call it)."""
    method = _method_name(details)
    required = required_tiers().get(method, 0)
    return method, (required if required > access_pb2.ACCESS_TIER_OBSERVER else 0)


class _AsyncMetadataInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout: float | None) -> None:
        self._metadata = metadata
        self._timeout = timeout
        self._tier: int | None = None
        self._who_am_i: Any = None
        self._lock: asyncio.Lock | None = None

    def bind(self, channel: grpc.aio.Channel) -> None:
        """Gives the interceptor the channel it asks WhoAmI on (through itself: WhoAmI needs
        only OBSERVER, so that call never waits for a principal)."""
        self._who_am_i = channel.unary_unary(
            WHO_AM_I,
            request_serializer=admin_pb2.WhoAmIRequest.SerializeToString,
            response_deserializer=admin_pb2.WhoAmIResponse.FromString,
        )

    async def _own_tier(self) -> int | None:
        if self._tier is None and self._who_am_i is not None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:  # one WhoAmI however many calls start at once
                if self._tier is None:
                    try:
                        response = await self._who_am_i(
                            admin_pb2.WhoAmIRequest(), timeout=self._timeout
                        )
                    except grpc.RpcError:
                        return None  # let the real call go out: the server decides
                    self._tier = response.principal.tier
        return self._tier

    async def _check(self, details: Any) -> None:
        method, required = _needed_tier(details)
        if required:
            own = await self._own_tier()
            refused = None if own is None else _refusal(method, required, own)
            if refused is not None:
                raise refused

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        await self._check(client_call_details)
        details = client_call_details._replace(
            metadata=_merged(client_call_details.metadata, self._metadata)
        )
        return await continuation(details, request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        await self._check(client_call_details)
        details = client_call_details._replace(
            metadata=_merged(client_call_details.metadata, self._metadata)
        )
        return await continuation(details, request)


class _AsyncStreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """The unary-stream face of an _AsyncMetadataInterceptor.

    grpc.aio files each interceptor under the FIRST kind it is an instance of (unary-unary
    wins), so one object implementing both kinds never sees streaming calls: they would go
    out without the token. This adapter is passed alongside it.
    """

    def __init__(self, inner: _AsyncMetadataInterceptor) -> None:
        self._inner = inner

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await self._inner.intercept_unary_stream(continuation, client_call_details, request)


class _SyncMetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout: float | None) -> None:
        self._metadata = metadata
        self._timeout = timeout
        self._tier: int | None = None
        self._who_am_i: Any = None
        self._lock = threading.Lock()

    def bind(self, channel: grpc.Channel) -> None:
        """See _AsyncMetadataInterceptor.bind."""
        self._who_am_i = channel.unary_unary(
            WHO_AM_I,
            request_serializer=admin_pb2.WhoAmIRequest.SerializeToString,
            response_deserializer=admin_pb2.WhoAmIResponse.FromString,
        )

    def _own_tier(self) -> int | None:
        if self._tier is None and self._who_am_i is not None:
            with self._lock:
                if self._tier is None:
                    try:
                        response = self._who_am_i(admin_pb2.WhoAmIRequest(), timeout=self._timeout)
                    except grpc.RpcError:
                        return None
                    self._tier = response.principal.tier
        return self._tier

    def _check(self, details: Any) -> None:
        method, required = _needed_tier(details)
        if required:
            own = self._own_tier()
            refused = None if own is None else _refusal(method, required, own)
            if refused is not None:
                raise refused

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        self._check(client_call_details)
        details = client_call_details._replace(
            metadata=_merged(client_call_details.metadata, self._metadata)
        )
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        self._check(client_call_details)
        details = client_call_details._replace(
            metadata=_merged(client_call_details.metadata, self._metadata)
        )
        return continuation(details, request)


def _credentials(
    root_certificates: bytes | None,
    tls: bool,
    client_certificate: bytes | None = None,
    client_key: bytes | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS channel credentials, or None for plaintext. A client certificate and key (mTLS)
    imply TLS; they go together."""
    if (client_certificate is None) != (client_key is None):
        raise ValueError("client_certificate and client_key go together")
    if root_certificates is None and not tls and client_certificate is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=client_key,
        certificate_chain=client_certificate,
    )


class AsyncTransport:
    """A grpc.aio channel that sends `metadata` (and the bearer token) with every call and
    refuses calls above the caller's tier locally (see the module docstring).

    TLS: `root_certificates` (PEM) or `tls=True` (system roots); `client_certificate` and
    `client_key` (PEM) add a client certificate for servers that require one (mTLS).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
    ) -> None:
        self.timeout = timeout
        interceptor = _AsyncMetadataInterceptor(call_metadata(token, metadata), timeout)
        interceptors = [interceptor, _AsyncStreamInterceptor(interceptor)]
        opts = [*CHANNEL_OPTIONS, *options]
        creds = _credentials(root_certificates, tls, client_certificate, client_key)
        if creds is None:
            self.channel = grpc.aio.insecure_channel(
                target, options=opts, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                target, creds, options=opts, interceptors=interceptors
            )
        interceptor.bind(self.channel)

    async def close(self) -> None:
        await self.channel.close()


class SyncTransport:
    """The sync twin of AsyncTransport (same arguments, same behaviour)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
        client_certificate: bytes | None = None,
        client_key: bytes | None = None,
    ) -> None:
        self.timeout = timeout
        opts = [*CHANNEL_OPTIONS, *options]
        creds = _credentials(root_certificates, tls, client_certificate, client_key)
        raw = (
            grpc.insecure_channel(target, options=opts)
            if creds is None
            else grpc.secure_channel(target, creds, options=opts)
        )
        self._raw = raw
        interceptor = _SyncMetadataInterceptor(call_metadata(token, metadata), timeout)
        self.channel = grpc.intercept_channel(raw, interceptor)
        interceptor.bind(self.channel)

    def close(self) -> None:
        self._raw.close()


async def async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def sync_sleep(seconds: float) -> None:
    time.sleep(seconds)


def async_monotonic() -> float:
    return time.monotonic()


sync_monotonic = async_monotonic
