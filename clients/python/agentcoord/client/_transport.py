"""Channels with a client interceptor that attaches the caller's metadata to every call.

The only part of the client that differs between asyncio and sync; everything else is written
once in `_async/` and converted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

import grpc

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


def _merged(details_metadata: Any, extra: tuple[tuple[str, str], ...]) -> list[tuple[str, Any]]:
    return [*(details_metadata or ()), *extra]


class _AsyncMetadataInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        details = client_call_details._replace(
            metadata=_merged(client_call_details.metadata, self._metadata)
        )
        return await continuation(details, request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        details = client_call_details._replace(
            metadata=_merged(client_call_details.metadata, self._metadata)
        )
        return await continuation(details, request)


class _SyncMetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        details = client_call_details._replace(
            metadata=_merged(client_call_details.metadata, self._metadata)
        )
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        details = client_call_details._replace(
            metadata=_merged(client_call_details.metadata, self._metadata)
        )
        return continuation(details, request)


def _credentials(root_certificates: bytes | None, tls: bool) -> grpc.ChannelCredentials | None:
    if root_certificates is None and not tls:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


class AsyncTransport:
    """A grpc.aio channel that sends `metadata` (and the bearer token) with every call."""

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
    ) -> None:
        self.timeout = timeout
        interceptors = [_AsyncMetadataInterceptor(call_metadata(token, metadata))]
        opts = [*CHANNEL_OPTIONS, *options]
        creds = _credentials(root_certificates, tls)
        if creds is None:
            self.channel = grpc.aio.insecure_channel(
                target, options=opts, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                target, creds, options=opts, interceptors=interceptors
            )

    async def close(self) -> None:
        await self.channel.close()


class SyncTransport:
    """A grpc channel that sends `metadata` (and the bearer token) with every call."""

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
    ) -> None:
        self.timeout = timeout
        opts = [*CHANNEL_OPTIONS, *options]
        creds = _credentials(root_certificates, tls)
        raw = (
            grpc.insecure_channel(target, options=opts)
            if creds is None
            else grpc.secure_channel(target, creds, options=opts)
        )
        self._raw = raw
        self.channel = grpc.intercept_channel(
            raw, _SyncMetadataInterceptor(call_metadata(token, metadata))
        )

    def close(self) -> None:
        self._raw.close()


async def async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def sync_sleep(seconds: float) -> None:
    time.sleep(seconds)


def async_monotonic() -> float:
    return time.monotonic()


sync_monotonic = async_monotonic
