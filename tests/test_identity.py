"""Server enforcement: bearer token → principal; UNAUTHENTICATED / PERMISSION_DENIED before any
storage access; the tier matrix of every RPC of every registered service; namespaces."""

from __future__ import annotations

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import access_pb2
from agentcoord_server.identity import OPERATOR_NAMESPACE, operator_callable, required_tiers
from agentcoord_server.services import SERVICE_MODULES
from google.protobuf import message_factory

pytestmark = pytest.mark.every_backend

TIERS = ["OBSERVER", "CONTRIBUTOR", "VALIDATOR", "STEWARD", "OPERATOR"]


def all_rpcs():
    """Every method of every service the server registers, so new services are covered."""
    for module in SERVICE_MODULES:
        for service in module.PB2.DESCRIPTOR.services_by_name.values():
            yield from service.methods


RPCS = list(all_rpcs())
REQUIRED = required_tiers(m.PB2 for m in SERVICE_MODULES)
OPERATOR_CALLABLE = operator_callable(m.PB2 for m in SERVICE_MODULES)


def path_of(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def raw_call(address: str, method, token: str | None, timeout: float = 2.0) -> grpc.StatusCode:
    """Calls `method` with an empty request over a raw channel (no client-side fail-fast) and
    returns the status code (OK, or DEADLINE_EXCEEDED for a stream still open and silent)."""
    request = message_factory.GetMessageClass(method.input_type)()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        try:
            if method.server_streaming:
                call = channel.unary_stream(
                    path_of(method), request_serializer=type(request).SerializeToString
                )(request, metadata=metadata, timeout=timeout)
                for _ in call:
                    break
                call.cancel()
            else:
                channel.unary_unary(
                    path_of(method), request_serializer=type(request).SerializeToString
                )(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def namespace_keys(redis_client, namespace: str) -> set[str]:
    return set(redis_client.scan_iter(match=f"ac:{{{namespace}}}:*", count=1000))


@pytest.mark.parametrize("method", RPCS, ids=path_of)
def test_tier_matrix_lower_tiers_are_denied_and_the_required_tier_is_admitted(
    method, server, namespace, redis_client
):
    required = REQUIRED[path_of(method)]
    lower = [t for t in TIERS if access_pb2.AccessTier.Value(f"ACCESS_TIER_{t}") < required]
    # The OPERATOR stands apart (access.proto): only OPERATOR RPCs and operator_callable ones.
    operator_admitted = (
        required == access_pb2.ACCESS_TIER_OPERATOR or path_of(method) in OPERATOR_CALLABLE
    )
    if not operator_admitted:
        lower.append("OPERATOR")
    tokens = {
        t: server.issue_token(
            f"agent-{t.lower()}", t, OPERATOR_NAMESPACE if t == "OPERATOR" else namespace
        )
        for t in TIERS
    }
    before = namespace_keys(redis_client, namespace)

    denied = {t: raw_call(server.address, method, tokens[t]) for t in lower}
    unauthenticated = raw_call(server.address, method, None)
    wrote = namespace_keys(redis_client, namespace) - before
    admitted = raw_call(server.address, method, tokens[TIERS[required - 1]], timeout=0.5)

    assert denied == {t: grpc.StatusCode.PERMISSION_DENIED for t in lower}
    assert unauthenticated == grpc.StatusCode.UNAUTHENTICATED
    assert wrote == set(), "a refused call wrote to Redis"
    assert admitted not in {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


def test_tier_too_low_carries_reason_and_both_tiers(server, namespace):
    token = server.issue_token("watcher", "OBSERVER", namespace)
    issue = next(m for m in RPCS if m.name == "IssueToken")
    request = message_factory.GetMessageClass(issue.input_type)()

    with grpc.insecure_channel(server.address) as channel:
        stub = channel.unary_unary(path_of(issue), request_serializer=type(request).SerializeToString)
        with pytest.raises(grpc.RpcError) as caught:
            stub(request, metadata=[("authorization", f"Bearer {token}")], timeout=5)
    error = AgentcoordError.from_rpc_error(caught.value)

    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "TIER_TOO_LOW"
    assert (error.metadata["required_tier"], error.metadata["caller_tier"]) == ("STEWARD", "OBSERVER")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "MISSING_TOKEN"),
        ("Basic dXNlcjpwYXNz", "INVALID_TOKEN"),
        ("Bearer ", "INVALID_TOKEN"),
        ("Bearer " + "x" * 600, "INVALID_TOKEN"),
        ("Bearer agc_never-issued-never-issued-never-issued-1", "UNKNOWN_TOKEN"),
    ],
)
def test_missing_malformed_and_unknown_tokens_are_unauthenticated(server, header, reason):
    metadata = [("authorization", header)] if header is not None else []
    with Client(server.address, metadata=metadata) as client, pytest.raises(AgentcoordError) as caught:
        client.admin.who_am_i()

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == reason
    assert "x" * 50 not in caught.value.message


def test_bearer_scheme_is_case_insensitive(server, namespace):
    token = server.issue_token("w1", "OBSERVER", namespace)
    with Client(server.address, metadata=[("authorization", f"bearer {token}")]) as client:
        assert client.admin.who_am_i().agent_id == "w1"


def test_identity_headers_cannot_change_who_a_token_holder_is(server, namespace):
    token = server.issue_token("w1", "CONTRIBUTOR", namespace)
    claims = [("x-agent-id", "someone-else"), ("x-access-tier", "STEWARD"), ("x-namespace", "default")]

    with Client(server.address, token=token, metadata=claims) as client:
        principal = client.admin.who_am_i()

    assert (principal.agent_id, principal.namespace, principal.tier) == (
        "w1",
        namespace,
        access_pb2.ACCESS_TIER_CONTRIBUTOR,
    )


def test_a_contributor_sees_only_its_own_namespace(make_client, namespace):
    make_client("w1", "CONTRIBUTOR", f"{namespace}-other").memory.stash("a", 1)
    client = make_client("w1", "CONTRIBUTOR")

    principal = client.admin.who_am_i()
    stats = client.admin.get_server_stats()

    assert principal.namespace == namespace
    assert stats.namespace_stats.namespace == namespace
    assert stats.namespace_stats.memory_entries == 0


def test_tokens_issued_by_a_steward_name_the_steward_as_issuer_whatever_the_request_says(
    make_client, namespace
):
    steward = make_client("lead", "STEWARD")

    issued = steward.admin.issue_token("w1", "OBSERVER", description="issued_by=someone-else")

    assert issued.info.issued_by == "lead"
    assert issued.info.namespace == namespace


def test_steward_lists_only_its_own_namespaces_tokens(make_client, namespace):
    make_client("boss", "STEWARD", ns=f"{namespace}-other").admin.issue_token("spy", "OBSERVER")

    listed = list(make_client("lead", "STEWARD").admin.iter_tokens())

    assert [(t.agent_id, t.namespace) for t in listed] == [("lead", namespace)]


def test_every_registered_rpc_is_covered_by_the_matrix():
    assert {path_of(m) for m in RPCS} == set(REQUIRED)
    assert all(tier != access_pb2.ACCESS_TIER_UNSPECIFIED for tier in REQUIRED.values())
