"""Namespace quotas (issue #14 item 2): set by the OPERATOR, read by the namespace's STEWARD;
a call over a quota is RESOURCE_EXHAUSTED QUOTA_EXCEEDED with the quota's name, limit and use,
and writes nothing; the signal rate is one bucket in Redis for every server process."""

from __future__ import annotations

import uuid

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord_server.identity import OPERATOR_NAMESPACE

from .conftest import server_settings
from .support import ServerThread
from .test_ops_cli import cli, json_lines

pytestmark = pytest.mark.every_backend


@pytest.fixture
def operator(server):
    client = Client(server.address, token=server.issue_token("operator", "OPERATOR", OPERATOR_NAMESPACE))
    yield client
    client.close()


@pytest.fixture
def team(server, operator):
    """A registered namespace and a client of its first STEWARD (issued by the operator)."""
    name = f"q{uuid.uuid4().hex[:12]}"
    operator.admin.create_namespace(name)
    token = operator.admin.issue_token("lead", "STEWARD", namespace=name).token
    client = Client(server.address, token=token)
    yield name, client, token
    client.close()


def usage(response) -> dict[str, tuple[int, int]]:
    return {u.name: (u.limit, u.used) for u in response.usage}


def test_the_token_quota_refuses_the_token_beyond_it_and_writes_nothing(operator, team):
    name, steward, _ = team
    operator.admin.update_namespace_quota(name, max_tokens=2)
    steward.admin.issue_token("worker-1", "CONTRIBUTOR")

    with pytest.raises(AgentcoordError) as caught:
        steward.admin.issue_token("worker-2", "CONTRIBUTOR")
    listed = [t.agent_id for t in steward.admin.iter_tokens()]

    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    metadata = caught.value.metadata
    assert (metadata["quota"], metadata["limit"], metadata["used"]) == ("tokens", "2", "2")
    assert listed == ["lead", "worker-1"]
    assert usage(steward.admin.get_namespace_quota())["tokens"] == (2, 2)


def test_a_steward_reads_its_own_quotas_only_and_cannot_set_them(operator, team):
    name, steward, _ = team
    other = f"q{uuid.uuid4().hex[:12]}"
    operator.admin.create_namespace(other)
    operator.admin.update_namespace_quota(name, max_tokens=5, max_signals_per_second=7)

    own = steward.admin.get_namespace_quota()
    with pytest.raises(AgentcoordError) as update:
        steward.admin.update_namespace_quota(name, max_tokens=100)
    with pytest.raises(AgentcoordError) as foreign:
        steward.admin.get_namespace_quota(other)

    assert own.namespace == name
    assert (own.quota.max_tokens, own.quota.max_signals_per_second) == (5, 7)
    assert usage(own) == {"tokens": (5, 1), "signals_per_second": (7, 0), "pending_tasks": (0, 0)}
    assert update.value.reason == "TIER_TOO_LOW"
    assert foreign.value.reason == "NAMESPACE_MISMATCH"


def test_the_pending_tasks_quota_counts_every_type_and_frees_up_on_claim(operator, team):
    name, steward, _ = team
    operator.admin.update_namespace_quota(name, max_pending_tasks=2)
    steward.tasks.add_task(task_type="build", task_id="t1")
    steward.tasks.add_task(task_type="lint", task_id="t2")

    with pytest.raises(AgentcoordError) as caught:
        steward.tasks.add_task(task_type="build", task_id="t3")
    with pytest.raises(AgentcoordError) as missing:
        steward.tasks.get_task("t3")
    steward.tasks.claim_task(task_types=["build"])
    steward.tasks.add_task(task_type="build", task_id="t3")  # a claim made room

    metadata = caught.value.metadata
    assert caught.value.reason == "QUOTA_EXCEEDED"
    assert (metadata["quota"], metadata["limit"], metadata["used"]) == ("pending_tasks", "2", "2")
    assert missing.value.reason == "TASK_NOT_FOUND"  # the refused add wrote nothing
    assert usage(steward.admin.get_namespace_quota())["pending_tasks"] == (2, 2)


def test_quotas_of_an_unregistered_namespace_cannot_be_set(operator):
    with pytest.raises(AgentcoordError) as caught:
        operator.admin.update_namespace_quota(f"q{uuid.uuid4().hex[:12]}", max_tokens=1)

    assert caught.value.reason == "NAMESPACE_NOT_FOUND"


@pytest.mark.standalone_only  # starts a second server process on the session's Redis
def test_the_signal_rate_is_one_bucket_shared_by_every_server(server, operator, team, redis_url):
    name, steward, token = team
    operator.admin.update_namespace_quota(name, max_signals_per_second=1)
    second = ServerThread(server_settings(redis_url)).start()
    try:
        with Client(second.address, token=token) as elsewhere:
            accepted = refused = 0
            # One signal per second: twenty sends in a row meet an empty bucket long before
            # twenty seconds pass.
            for _ in range(20):
                try:
                    steward.signals.send_signal("tick", {})
                    accepted += 1
                except AgentcoordError as exc:
                    assert exc.reason == "QUOTA_EXCEEDED"
                    assert (exc.metadata["quota"], exc.metadata["limit"]) == ("signals_per_second", "1")
                    refused += 1
                    break
            with pytest.raises(AgentcoordError) as on_the_other_server:
                elsewhere.signals.send_signal("tick", {})
            kept = steward.signals.receive_signals(["tick"], limit=100).signals
    finally:
        second.stop()

    assert refused == 1
    assert on_the_other_server.value.reason == "QUOTA_EXCEEDED"
    assert len(kept) == accepted  # refused sends wrote nothing


def test_the_cli_sets_and_shows_a_namespaces_quotas(server, team):
    name, _, steward_token = team
    operator_token = server.issue_token("operator", "OPERATOR", OPERATOR_NAMESPACE)

    set_result = cli(server, operator_token, "namespaces", "quota", name, "--max-tokens", "3", "--json")
    kept = cli(server, operator_token, "namespaces", "quota", name, "--max-signals-per-second", "9", "--json")
    shown = cli(server, steward_token, "namespaces", "quota")

    assert set_result.exit_code == 0, set_result.output
    quotas = {q["name"]: q for q in json_lines(kept.output, "quotas")[0]["quotas"]}
    assert (quotas["tokens"]["limit"], quotas["signals_per_second"]["limit"]) == ("3", "9")
    assert shown.exit_code == 0 and "tokens" in shown.output and name in shown.output
