# Generated from ../_async by `make generate` (unasync); do not edit.
"""What every service's client shares: calling a stub method and turning failures into
AgentcoordError."""

from __future__ import annotations

from collections.abc import Iterator, Callable
from typing import Any

import grpc

from .._transport import SyncTransport
from ..errors import AgentcoordError


class ServiceClient:
    """Base of the per-service clients; holds the shared transport."""

    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def _unary(
        self, method: Callable[..., Any], request: Any, timeout: float | None = None
    ) -> Any:
        """Calls a unary stub method. Raises AgentcoordError for any non-OK status."""
        try:
            return method(
                request, timeout=timeout if timeout is not None else self._transport.timeout
            )
        except grpc.RpcError as exc:
            raise AgentcoordError.from_rpc_error(exc) from None

    def _stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        """Iterates a server-streaming stub method. Raises AgentcoordError for any non-OK status."""
        call = method(request)
        try:
            for item in call:
                yield item
        except grpc.RpcError as exc:
            raise AgentcoordError.from_rpc_error(exc) from None
        finally:
            call.cancel()
