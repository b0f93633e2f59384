"""Namespace isolation over every RPC (issue #14 item 3), driven by the descriptors so a new RPC
is covered without touching this file.

Namespace B holds one of everything (memory entry, session and its shared context,
collaboration state, staged and library pattern, conflict, pending and claimed tasks, a
registered agent, signals, tokens), every value carrying a marker string. For every RPC, tokens
of namespace A of each tier — with the very agent id B's data belongs to — and the OPERATOR call
it with a request whose id fields name B's ids (filled by field name, recursively). Then:
no response, stream item or error carries B's marker (nothing read or delivered), and every key
of B is byte-for-byte what it was (DUMP: nothing written, claimed, acknowledged or deleted).
A control shows the requests really name B's data: B's own token, sending the same read
requests, gets the marker back from many RPCs.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from agentcoord import Client
from agentcoord.v1 import signals_pb2
from agentcoord_server.identity import OPERATOR_NAMESPACE, operator_callable, required_tiers
from agentcoord_server.services import SERVICE_MODULES
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor

pytestmark = pytest.mark.every_backend

A_TIERS = ["OBSERVER", "CONTRIBUTOR", "VALIDATOR", "STEWARD"]
AGENT = "shared-agent"  # B's data belongs to it, and A's tokens are issued to the same id
OPERATOR_TIER = 5

RPCS = [
    method
    for module in SERVICE_MODULES
    for service in module.PB2.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
REQUIRED = required_tiers(m.PB2 for m in SERVICE_MODULES)
FOR_OPERATOR = operator_callable(m.PB2 for m in SERVICE_MODULES)
READS = (
    "Get", "List", "Retrieve", "BatchRetrieve", "Receive", "Load", "Aggregate", "WhoAmI", "Subscribe",
    "Watch",
)


def path_of(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def request_for(method, ids: dict[str, str], fencing_token: int):
    """`method`'s request naming B's ids; a Subscribe starts at the oldest retained signal (by
    default it would see only signals sent while it is open, and B's were sent before)."""
    request = message_factory.GetMessageClass(method.input_type)()
    fill(request, ids, fencing_token)
    if method.name == "Subscribe":
        request.start = signals_pb2.START_POSITION_EARLIEST
    if method.name == "WatchEntries":
        # A watch of B's owner from the first revision, values included (the filled
        # session_id would make it a refused request rather than a watch).
        request.session_id = ""
        request.after_revision = 0
        request.include_values = True
    return request


def fill(message, ids: dict[str, str], fencing_token: int, depth: int = 0) -> None:
    """Sets every string field whose name is in `ids` (repeated ones to a one-item list) and
    every fencing_token, recursing into agentcoord messages."""
    for field in message.DESCRIPTOR.fields:
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_STRING:
            value = ids.get(field.name) or ids.get(field.name.removesuffix("s"))
            if value is None or field.message_type is not None:
                continue
            if repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)
        elif field.name == "fencing_token" and not repeated:
            setattr(message, field.name, fencing_token)
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not repeated
            and field.message_type.full_name.startswith("agentcoord.")
            and depth < 3
        ):
            fill(getattr(message, field.name), ids, fencing_token, depth + 1)


def call(address: str, method, request, token: str) -> bytes:
    """Sends `request`; returns everything that came back (response or stream items, or the
    error's message and details) as bytes, to search for the marker."""
    metadata = [("authorization", f"Bearer {token}")]
    path = path_of(method)
    received = b""
    with grpc.insecure_channel(address) as channel:
        try:
            if method.server_streaming:
                stream = channel.unary_stream(
                    path, request_serializer=type(request).SerializeToString
                )(request, metadata=metadata, timeout=1.0)
                for item in stream:
                    received += item
            else:
                received += channel.unary_unary(
                    path, request_serializer=type(request).SerializeToString
                )(request, metadata=metadata, timeout=5)
        except grpc.RpcError as exc:
            received += (exc.details() or "").encode()
            for key, value in exc.trailing_metadata() or ():
                received += value if isinstance(value, bytes) else f"{key}={value}".encode()
    return received


def fingerprint(redis_client, namespace: str) -> dict[str, bytes]:
    keys = sorted(redis_client.scan_iter(match=f"ac:{{{namespace}}}:*", count=1000))
    return {key: redis_client.dump(key) for key in keys}


@pytest.fixture(scope="module")
def namespace_b(server):
    """Namespace B with one of everything, shared by the module's tests (each checks B is left
    unchanged, so sharing hides nothing); returns (name, ids by field name, fencing token,
    marker, a STEWARD token of B)."""
    name = f"b{uuid.uuid4().hex[:12]}"
    marker = f"MARK{uuid.uuid4().hex}"
    steward = server.issue_token(AGENT, "STEWARD", name)
    with Client(server.address, token=steward) as b:
        b.memory.stash("k1", {"m": marker})
        b.memory.create_session("s1", purpose=marker)
        b.memory.share_context("s1", "k1", marker)
        b.memory.save_collaboration_state("s1", {"extra": {"m": marker}})
        b.staging.stage_pattern(
            pattern_id="p1", pattern_type="t1", name=marker, confidence=0.95, description=marker
        )
        b.staging.promote_pattern("p1")
        b.staging.stage_pattern(
            pattern_id="p1", pattern_type="t1", name=marker, confidence=0.5, description=marker
        )
        b.staging.create_conflict(
            conflict_id="c1", positions={AGENT: marker}, batna=marker, description=marker
        )
        b.tasks.register_agent(["build"])
        b.tasks.add_task(task_type="build", task_id="t1", description=marker, payload={"m": marker})
        claimed = b.tasks.claim_task(task_types=["build"])
        assert claimed is not None
        b.tasks.add_task(task_type="build", task_id="t2", description=marker, payload={"m": marker})
        b.signals.send_signal("alert", {"m": marker})
        b.signals.send_signal("alert", {"m": marker}, target_agent=AGENT)
        b.locks.acquire_lock("l1", ttl=3600)  # held by AGENT, A's agents' very id
        token_id = b.admin.list_tokens().tokens[0].token_id
    ids = {
        "key": "k1",
        "keys": "k1",
        "key_prefix": "k",
        "owner": AGENT,
        "agent_id": AGENT,
        "target_agent": AGENT,
        "assignee": AGENT,
        "author": AGENT,
        "session_id": "s1",
        "pattern_id": "p1",
        "pattern_type": "t1",
        "conflict_id": "c1",
        "task_id": "t1",
        "task_type": "build",
        "lock_id": "l1",
        "capabilitie": "build",
        "signal_type": "alert",
        "token_id": token_id,
        "namespace": name,
        "name": name,
    }
    return name, ids, claimed.lease.fencing_token, marker, steward


@pytest.mark.parametrize("method", RPCS, ids=path_of)
def test_no_token_of_another_namespace_reaches_namespace_b(
    method, server, namespace, namespace_b, redis_client
):
    name, ids, fencing_token, marker, _ = namespace_b
    path = path_of(method)
    callers = {t: server.issue_token(AGENT, t, namespace) for t in A_TIERS}
    # The operator administers namespaces and their tokens by name: that is its job, not a
    # leak. Every RPC that reaches a namespace's data refuses it.
    if REQUIRED[path] != OPERATOR_TIER and path not in FOR_OPERATOR:
        callers["OPERATOR"] = server.issue_token("operator", "OPERATOR", OPERATOR_NAMESPACE)
    request = request_for(method, ids, fencing_token)
    before = fingerprint(redis_client, name)

    leaked = {
        tier: marker.encode() in call(server.address, method, request, token)
        for tier, token in callers.items()
    }

    assert leaked == {tier: False for tier in callers}, f"{path} returned namespace B's data"
    assert fingerprint(redis_client, name) == before, f"{path} changed namespace B's keys"


def test_the_requests_name_namespace_bs_data(server, namespace_b):
    """The control: B's own STEWARD, sending the same requests to the read RPCs, gets B's
    marker back from many of them, so the test above would see a leak if there were one."""
    _, ids, fencing_token, marker, steward = namespace_b
    reads = [m for m in RPCS if m.name.startswith(READS)]
    seen = set()
    for method in reads:
        request = request_for(method, ids, fencing_token)
        if marker.encode() in call(server.address, method, request, steward):
            seen.add(method.name)

    assert {
        "Retrieve",
        "GetSharedContext",
        "LoadCollaborationState",
        "GetStagedPattern",
        "GetPattern",
        "GetConflict",
        "GetTask",
        "ListTasks",
        "ReceiveSignals",
        "Subscribe",
        "WatchEntries",
    } <= seen, seen
