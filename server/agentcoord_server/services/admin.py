"""AdminService: WhoAmI and GetServerStats (proto/agentcoord/v1/admin.proto)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc
from agentcoord.v1 import admin_pb2, admin_pb2_grpc
from google.protobuf import duration_pb2

from ..identity import current_principal
from ..store.admin import AdminStore

if TYPE_CHECKING:
    from . import ServiceContext

PB2 = admin_pb2


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._store = AdminStore(ctx.redis)

    async def WhoAmI(
        self, request: admin_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.WhoAmIResponse:
        return admin_pb2.WhoAmIResponse(principal=current_principal().to_proto())

    async def GetServerStats(
        self, request: admin_pb2.GetServerStatsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetServerStatsResponse:
        stats = await self._store.stats(current_principal().namespace)
        mode = admin_pb2.REDIS_MODE_CLUSTER if stats.cluster_enabled else self._ctx.redis_mode
        uptime = duration_pb2.Duration()
        uptime.FromNanoseconds(int((time.monotonic() - self._ctx.started_at) * 1e9))
        return admin_pb2.GetServerStatsResponse(
            server_version=self._ctx.server_version,
            redis_mode=mode,  # type: ignore[arg-type]
            redis_version=stats.redis_version,
            key_counts=stats.key_counts,
            used_memory_bytes=stats.used_memory_bytes,
            uptime=uptime,
        )


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(ctx), server)  # type: ignore[no-untyped-call]
    return admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
