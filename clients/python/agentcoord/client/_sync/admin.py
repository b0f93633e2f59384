# Generated from ../_async by `make generate` (unasync); do not edit.
"""AdminService calls: who_am_i, get_server_stats."""

from __future__ import annotations

from agentcoord.v1 import access_pb2, admin_pb2, admin_pb2_grpc

from .._transport import SyncTransport
from ._base import ServiceClient


class AdminClient(ServiceClient):
    def __init__(self, transport: SyncTransport) -> None:
        super().__init__(transport)
        self._stub = admin_pb2_grpc.AdminServiceStub(transport.channel)

    def who_am_i(self) -> access_pb2.Principal:
        """The principal the server authenticates this client as."""
        response = self._unary(self._stub.WhoAmI, admin_pb2.WhoAmIRequest())
        return response.principal  # type: ignore[no-any-return]

    def get_server_stats(self) -> admin_pb2.GetServerStatsResponse:
        """Server version, Redis mode and version, key counts per area of the caller's namespace,
        used memory (bytes) and uptime. OBSERVER or above."""
        return self._unary(self._stub.GetServerStats, admin_pb2.GetServerStatsRequest())  # type: ignore[no-any-return]
