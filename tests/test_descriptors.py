"""The contract: every agentcoord RPC declares the tier it needs, in one place."""

from __future__ import annotations

from agentcoord.v1 import access_pb2
from agentcoord_server.identity import required_tiers
from agentcoord_server.services import SERVICE_MODULES


def test_every_rpc_of_every_service_declares_required_tier():
    tiers = required_tiers(module.PB2 for module in SERVICE_MODULES)

    assert tiers, "no RPCs found"
    undeclared = [path for path, tier in tiers.items() if tier == access_pb2.ACCESS_TIER_UNSPECIFIED]
    assert undeclared == []


def test_every_proto_service_is_served():
    served = {
        service.full_name
        for module in SERVICE_MODULES
        for service in module.PB2.DESCRIPTOR.services_by_name.values()
    }
    import pkgutil

    import agentcoord.v1 as generated

    declared = set()
    for info in pkgutil.iter_modules(generated.__path__):
        if info.name.endswith("_pb2"):
            module = __import__(f"agentcoord.v1.{info.name}", fromlist=["DESCRIPTOR"])
            declared |= {s.full_name for s in module.DESCRIPTOR.services_by_name.values()}

    assert declared == served
