"""grpc.health.v1 and server reflection are always on and need no credentials."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def test_health_reports_serving_overall_and_per_service(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        overall = stub.Check(health_pb2.HealthCheckRequest(service=""))
        admin = stub.Check(health_pb2.HealthCheckRequest(service="agentcoord.v1.AdminService"))

    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert admin.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_services(server):
    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        admin_file = database.FindFileContainingSymbol("agentcoord.v1.AdminService")

    assert {"agentcoord.v1.AdminService", "grpc.health.v1.Health"} <= services
    assert admin_file.name == "agentcoord/v1/admin.proto"
    assert [m.name for m in admin_file.service[0].method][:5] == [
        "WhoAmI", "GetServerStats", "IssueToken", "RevokeToken", "ListTokens"
    ]
    assert "CreateNamespace" in [m.name for m in admin_file.service[0].method]
