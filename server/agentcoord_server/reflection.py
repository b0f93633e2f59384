"""Server reflection that also resolves method names (`grpcurl describe pkg.Service.Method`).

grpcio-reflection answers `file_containing_symbol` with `DescriptorPool.FindFileContainingSymbol`,
and protobuf's upb pool finds services, messages, fields and enums that way but not methods:
`grpcurl describe agentcoord.v1.TaskService.ClaimTask` got "Symbol not found". The protocol
(reflection.proto: "fully-qualified symbol name, e.g. `<package>.<service>[.<method>]`") includes
methods, so a name the pool misses is retried as `<service>.<method>`: the file that defines the
service is the answer. Everything else is grpcio-reflection's own servicer (v1alpha, which
grpcurl falls back to).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

SERVICE_NAME = reflection.SERVICE_NAME


class MethodAwareReflectionServicer(ReflectionServicer):
    """grpcio-reflection's asyncio servicer, with method names resolved to their service's file."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            service_name, _, method_name = fully_qualified_name.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is not None and method_name in service.methods_by_name:
                return super()._file_containing_symbol(request, service.full_name)
        return super()._file_containing_symbol(request, fully_qualified_name)


def enable_server_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Adds the reflection service (v1alpha) for `service_names` to an asyncio server."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
        MethodAwareReflectionServicer(service_names), server
    )
