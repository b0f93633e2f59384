"""Namespaces as administered things (issue #14 item 1): the OPERATOR creates, lists and deletes
them and issues their tokens; a STEWARD administers only its own; the OPERATOR never touches a
namespace's data; deletion removes every key and token and resumes after an interruption."""

from __future__ import annotations

import uuid

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import admin_pb2
from agentcoord_server.identity import OPERATOR_NAMESPACE

pytestmark = pytest.mark.every_backend


def fresh() -> str:
    return f"n{uuid.uuid4().hex[:12]}"


@pytest.fixture
def operator(server):
    client = Client(
        server.address, token=server.issue_token("operator", "OPERATOR", OPERATOR_NAMESPACE)
    )
    yield client
    client.close()


def namespace_keys(redis_client, namespace: str) -> set[str]:
    return set(redis_client.scan_iter(match=f"ac:{{{namespace}}}:*", count=1000))


def test_operator_creates_a_namespace_and_issues_its_first_steward(server, operator):
    name = fresh()
    created = operator.admin.create_namespace(name, description="team blue")
    first = operator.admin.issue_token("blue-lead", "STEWARD", namespace=name)

    with Client(server.address, token=first.token) as steward:
        worker = steward.admin.issue_token("blue-1", "CONTRIBUTOR")
        principal = steward.admin.who_am_i()
    with Client(server.address, token=worker.token) as agent:
        agent.memory.stash("k", {"v": 1})
        assert agent.memory.retrieve("k") == {"v": 1}

    assert (created.name, created.state) == (name, admin_pb2.NAMESPACE_STATE_ACTIVE)
    assert (principal.namespace, principal.agent_id) == (name, "blue-lead")
    assert worker.info.namespace == name
    assert name in {n.name for n in operator.admin.iter_namespaces()}


def test_creating_an_existing_or_reserved_namespace_is_refused(operator):
    name = fresh()
    operator.admin.create_namespace(name)

    with pytest.raises(AgentcoordError) as again:
        operator.admin.create_namespace(name)
    with pytest.raises(AgentcoordError) as reserved:
        operator.admin.create_namespace("_mine")

    assert (again.value.code, again.value.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "NAMESPACE_EXISTS",
    )
    assert (reserved.value.code, reserved.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "RESERVED_NAMESPACE",
    )


def test_operator_cannot_issue_into_an_unregistered_namespace(operator):
    with pytest.raises(AgentcoordError) as caught:
        operator.admin.issue_token("x", "STEWARD", namespace=fresh())

    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "NAMESPACE_NOT_FOUND",
    )


def test_operator_never_reads_or_writes_a_namespaces_data(server, operator, make_client, namespace):
    make_client("owner", "CONTRIBUTOR").memory.stash("secret", 1)

    for call in (
        lambda: operator.memory.stash("k", 1),
        lambda: operator.tasks.claim_task(task_types=["any"]),
    ):
        with pytest.raises(AgentcoordError) as caught:
            call()
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "OPERATOR_DATA_ACCESS",
        )
    # An OBSERVER read is left to the server by the client; the server refuses it too.
    with pytest.raises(AgentcoordError) as read:
        operator.memory.retrieve("secret", owner="owner")
    assert read.value.reason == "OPERATOR_DATA_ACCESS"


def test_steward_cannot_create_namespaces_nor_reach_another_namespaces_tokens(
    make_client, operator
):
    other = fresh()
    operator.admin.create_namespace(other)
    steward = make_client("lead", "STEWARD")

    with pytest.raises(AgentcoordError) as create:
        steward.admin.create_namespace(fresh())
    with pytest.raises(AgentcoordError) as issue:
        steward.admin.issue_token("spy", "STEWARD", namespace=other)
    with pytest.raises(AgentcoordError) as listing:
        steward.admin.list_tokens(namespace=other)

    assert (create.value.code, create.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "TIER_TOO_LOW",
    )
    assert issue.value.reason == listing.value.reason == "NAMESPACE_MISMATCH"


def test_operator_stats_are_server_wide_and_stewards_see_only_their_own(server, operator):
    blue, red = fresh(), fresh()
    for name in (blue, red):
        operator.admin.create_namespace(name)
    steward_token = operator.admin.issue_token("blue-lead", "STEWARD", namespace=blue).token
    with Client(server.address, token=steward_token) as steward:
        steward.memory.stash("k", 1)
        own = steward.admin.get_server_stats()

    wide = operator.admin.get_server_stats()

    by_name = {s.namespace: s for s in wide.namespaces}
    assert {blue, red} <= set(by_name) or wide.namespaces_truncated
    if blue in by_name:
        assert by_name[blue].memory_entries == 1
    assert not wide.HasField("namespace_stats")
    assert own.namespace_stats.namespace == blue and not own.namespaces


def test_deleting_a_namespace_removes_its_keys_and_revokes_its_tokens(
    server, operator, redis_client
):
    name = fresh()
    operator.admin.create_namespace(name)
    token = operator.admin.issue_token("blue-1", "CONTRIBUTOR", namespace=name).token
    with Client(server.address, token=token) as agent:
        agent.memory.stash("k", {"v": 1})
        agent.tasks.add_task(task_type="build", payload={"n": 1})
        agent.signals.send_signal("hello", {})
    assert namespace_keys(redis_client, name)

    deleted = operator.admin.delete_namespace(name)

    assert deleted.name == name
    assert namespace_keys(redis_client, name) == set()
    assert name not in {n.name for n in operator.admin.iter_namespaces()}
    with Client(server.address, token=token) as agent, pytest.raises(AgentcoordError) as caught:
        agent.admin.who_am_i()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.standalone_only  # waits out the auth cache bound twice, as the test above does
def test_an_interrupted_deletion_refuses_new_tokens_and_resumes(server, operator, redis_client):
    name = fresh()
    operator.admin.create_namespace(name)
    token = operator.admin.issue_token("blue-1", "CONTRIBUTOR", namespace=name).token
    with Client(server.address, token=token) as agent:
        agent.memory.stash("k", 1)
    # What a deletion killed right after its first step leaves behind.
    redis_client.hset(f"ac:{{{name}}}:namespace", "state", "deleting")

    with pytest.raises(AgentcoordError) as issue:
        operator.admin.issue_token("late", "CONTRIBUTOR", namespace=name)
    with pytest.raises(AgentcoordError) as create:
        operator.admin.create_namespace(name)
    listed = {n.name: n.state for n in operator.admin.iter_namespaces()}
    operator.admin.delete_namespace(name)

    assert issue.value.reason == create.value.reason == "NAMESPACE_DELETING"
    assert listed[name] == admin_pb2.NAMESPACE_STATE_DELETING
    assert namespace_keys(redis_client, name) == set()
    operator.admin.create_namespace(name)  # the name is free again


def test_deleting_an_unregistered_namespace_is_not_found(operator):
    with pytest.raises(AgentcoordError) as caught:
        operator.admin.delete_namespace(fresh())

    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "NAMESPACE_NOT_FOUND",
    )
