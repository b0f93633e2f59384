"""TaskService: agent registrations, listing, cancelling, dead-letter admin, aggregation."""

from __future__ import annotations

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord.v1 import tasks_pb2

from .support import expire_task, task_ttl_ms

pytestmark = pytest.mark.every_backend


def claim_and_complete(client, task_type, result=None):
    task = client.tasks.claim_task(task_types=[task_type])
    return client.tasks.complete_task(
        task_id=task.task_id, fencing_token=task.lease.fencing_token, result=result
    )


# -- agents --------------------------------------------------------------------------------


def test_registered_agent_is_listed_with_capabilities_and_lapses_after_coordination_ttl(
    make_client, redis_client, namespace
):
    client = make_client("security-agent")

    agent = client.tasks.register_agent(["security_review", "style"])

    assert agent.agent_id == "security-agent"
    assert list(agent.capabilities) == ["security_review", "style"]
    listed = client.tasks.list_agents()
    assert [(a.agent_id, list(a.capabilities)) for a in listed.agents] == [
        ("security-agent", ["security_review", "style"])
    ]
    pttl = redis_client.pttl(f"ac:{{{namespace}}}:agents:a:security-agent")
    assert 295_000 < pttl <= 300_000  # COORDINATION TTL, 5 min by default
    assert agent.expire_time.ToMilliseconds() - agent.last_seen_time.ToMilliseconds() == 300_000


def test_lapsed_registration_is_not_listed_and_cannot_heartbeat(
    make_client, redis_client, namespace
):
    client = make_client("gone")
    client.tasks.register_agent(["review"])
    make_client("here").tasks.register_agent(["review"])
    redis_client.delete(f"ac:{{{namespace}}}:agents:a:gone")  # what the TTL does on lapse

    assert [a.agent_id for a in client.tasks.list_agents().agents] == ["here"]
    with pytest.raises(AgentcoordError) as caught:
        client.tasks.heartbeat()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "AGENT_NOT_REGISTERED"


def test_heartbeat_renews_the_registration(make_client, redis_client, namespace):
    client = make_client("a1")
    client.tasks.register_agent(["review"])
    key = f"ac:{{{namespace}}}:agents:a:a1"
    redis_client.pexpire(key, 1000)

    agent = client.tasks.heartbeat()

    assert redis_client.pttl(key) > 295_000
    assert list(agent.capabilities) == ["review"]


def test_a_claim_counts_as_a_heartbeat(make_client, redis_client, namespace):
    client = make_client("a1")
    client.tasks.register_agent(["review"])
    key = f"ac:{{{namespace}}}:agents:a:a1"
    redis_client.pexpire(key, 1000)

    assert client.tasks.claim_task() is None

    assert redis_client.pttl(key) > 295_000


def test_deregistered_agent_is_not_listed(make_client):
    client = make_client("a1")
    client.tasks.register_agent(["review"])

    assert client.tasks.deregister_agent() is True
    assert client.tasks.deregister_agent() is False
    assert list(client.tasks.list_agents().agents) == []


def test_list_agents_pages_through_every_agent_once(make_client):
    for n in range(5):
        make_client(f"agent-{n}").tasks.register_agent(["review"])
    reader = make_client("reader", "OBSERVER")

    seen, token = [], ""
    while True:
        page = reader.tasks.list_agents(page_size=2, page_token=token)
        assert len(page.agents) <= 2
        seen += [a.agent_id for a in page.agents]
        token = page.next_page_token
        if not token:
            break

    assert seen == [f"agent-{n}" for n in range(5)]


def test_bad_capability_is_invalid_argument_and_registers_nothing(
    make_client, redis_client, namespace
):
    with pytest.raises(AgentcoordError) as caught:
        make_client().tasks.register_agent(["ok", "not ok"])

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == ["capabilities[1]"]
    assert list(redis_client.scan_iter(match=f"ac:{{{namespace}}}:agents:*")) == []


# -- listing -------------------------------------------------------------------------------


def test_list_tasks_filters_by_status_type_and_assignee(make_client):
    adder, worker = make_client("adder"), make_client("worker")
    for n in range(3):
        adder.tasks.add_task(task_id=f"r{n}", task_type="review")
    adder.tasks.add_task(task_id="p0", task_type="perf")
    worker.tasks.claim_task(task_types=["review"])

    def ids(**filters):
        return [t.task_id for t in adder.tasks.list_tasks(**filters).tasks]

    assert ids() == ["r0", "r1", "r2", "p0"]
    assert ids(task_type="review") == ["r0", "r1", "r2"]
    assert ids(status="claimed") == ["r0"]
    assert ids(status="pending", task_type="review") == ["r1", "r2"]
    assert ids(assignee="worker") == ["r0"]


def test_list_tasks_pages_through_every_task_once(make_client):
    client = make_client()
    ids = [f"t{n}" for n in range(7)]
    for task_id in ids:
        client.tasks.add_task(task_id=task_id, task_type="review")

    seen, token = [], ""
    while True:
        page = client.tasks.list_tasks(page_size=3, page_token=token)
        seen += [t.task_id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break

    assert seen == ids


def test_malformed_page_token_is_invalid_argument(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client().tasks.list_tasks(page_token="nonsense")

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_get_unknown_task_is_not_found(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client().tasks.get_task("nope")

    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "TASK_NOT_FOUND"


# -- cancelling ----------------------------------------------------------------------------


def test_adder_can_cancel_a_pending_task_and_it_is_never_claimed(make_client):
    client = make_client("adder")
    client.tasks.add_task(task_id="t1", task_type="review")

    cancelled = client.tasks.cancel_task("t1")

    assert cancelled.status == tasks_pb2.TASK_STATUS_CANCELLED
    assert client.tasks.claim_task(task_types=["review"]) is None


def test_another_contributor_cannot_cancel_but_a_validator_can(make_client):
    make_client("adder").tasks.add_task(task_id="t1", task_type="review")

    with pytest.raises(AgentcoordError) as caught:
        make_client("stranger").tasks.cancel_task("t1")
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "NOT_TASK_ADDER"

    lead = make_client("lead", "VALIDATOR")
    assert lead.tasks.cancel_task("t1").status == tasks_pb2.TASK_STATUS_CANCELLED


def test_cancelling_a_claimed_task_revokes_its_lease(make_client):
    adder, worker = make_client("adder"), make_client("worker")
    adder.tasks.add_task(task_id="t1", task_type="review")
    task = worker.tasks.claim_task(task_types=["review"])

    adder.tasks.cancel_task("t1")

    with pytest.raises(AgentcoordError) as caught:
        worker.tasks.complete_task(task_id="t1", fencing_token=task.lease.fencing_token)
    assert caught.value.reason == "LEASE_LOST"


def test_cancelling_a_completed_task_is_failed_precondition(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    claim_and_complete(client, "review")

    with pytest.raises(AgentcoordError) as caught:
        client.tasks.cancel_task("t1")

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "TASK_COMPLETED"


# -- dead letters --------------------------------------------------------------------------


def dead_letter(client, task_id):
    client.tasks.add_task(task_id=task_id, task_type="review", max_attempts=1)
    task = client.tasks.claim_task(task_types=["review"])
    return client.tasks.fail_task(
        task_id=task_id, fencing_token=task.lease.fencing_token, error="x"
    )


def test_validator_requeues_a_dead_letter_with_attempts_reset(make_client):
    worker = make_client("worker")
    dead_letter(worker, "t1")

    requeued = make_client("lead", "VALIDATOR").tasks.requeue_dead_letter("t1")

    assert requeued.status == tasks_pb2.TASK_STATUS_PENDING
    assert requeued.attempts == 0
    assert list(worker.tasks.list_dead_letters().tasks) == []
    assert worker.tasks.claim_task(task_types=["review"]).task_id == "t1"


def test_contributor_cannot_requeue_a_dead_letter(make_client):
    worker = make_client("worker")
    dead_letter(worker, "t1")

    with pytest.raises(AgentcoordError) as caught:
        worker.tasks.requeue_dead_letter("t1")

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert worker.tasks.get_task("t1").status == tasks_pb2.TASK_STATUS_DEAD_LETTERED


def test_requeueing_a_task_that_is_not_dead_is_failed_precondition(make_client):
    make_client().tasks.add_task(task_id="t1", task_type="review")

    with pytest.raises(AgentcoordError) as caught:
        make_client("lead", "VALIDATOR").tasks.requeue_dead_letter("t1")

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "NOT_DEAD_LETTERED"


def test_list_dead_letters_pages_oldest_first(make_client):
    client = make_client()
    for n in range(5):
        dead_letter(client, f"d{n}")

    seen, token = [], ""
    while True:
        page = client.tasks.list_dead_letters(page_size=2, page_token=token)
        seen += [t.task_id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break

    assert seen == [f"d{n}" for n in range(5)]


# -- aggregation ---------------------------------------------------------------------------


def test_aggregate_counts_completions_by_agent_and_type_with_recent_results(make_client):
    adder = make_client("adder")
    for n in range(3):
        adder.tasks.add_task(task_id=f"s{n}", task_type="security")
    adder.tasks.add_task(task_id="p0", task_type="perf")
    alice, bob = make_client("alice"), make_client("bob")
    claim_and_complete(alice, "security", {"vulns": 0})
    claim_and_complete(bob, "security", {"vulns": 2})
    claim_and_complete(alice, "perf", {"ms": 12})

    overall = adder.tasks.aggregate_results()
    security = adder.tasks.aggregate_results("security")

    assert overall.total_completed == 3
    assert dict(overall.by_agent) == {"alice": 2, "bob": 1}
    assert dict(overall.by_type) == {"security": 2, "perf": 1}
    assert [r.task_id for r in overall.recent_results] == ["p0", "s1", "s0"]
    assert overall.recent_results[0].result["ms"] == 12
    assert overall.recent_results[0].agent_id == "alice"
    assert security.total_completed == 2
    assert dict(security.by_agent) == {"alice": 1, "bob": 1}
    assert dict(security.by_type) == {"security": 2}
    assert [r.task_id for r in security.recent_results] == ["s1", "s0"]


def test_aggregate_keeps_a_large_result_out_of_the_summary(make_client):
    client = make_client()
    client.tasks.add_task(task_id="big", task_type="review")

    done = claim_and_complete(client, "review", {"blob": "x" * 5000})

    summary = client.tasks.aggregate_results().recent_results[0]
    assert summary.result_omitted and not summary.HasField("result")
    assert len(done.result["blob"]) == 5000


def test_list_agents_reaches_an_agent_behind_many_lapsed_registrations(
    make_client, redis_client, namespace
):
    make_client("zed").tasks.register_agent(["review"])
    index = f"ac:{{{namespace}}}:agents:index"
    redis_client.zadd(index, {f"lapsed-{n:03d}": 0 for n in range(300)})  # registrations gone

    seen, token = [], ""
    for _ in range(400):
        page = make_client("reader", "OBSERVER").tasks.list_agents(page_size=1, page_token=token)
        seen += [a.agent_id for a in page.agents]
        token = page.next_page_token
        if not token:
            break

    assert seen == ["zed"]



def test_task_index_lives_as_long_as_the_tasks_in_it(make_client, redis_client, namespace):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    index = f"ac:{{{namespace}}}:tasks:index"
    redis_client.pexpire(index, 60_000)  # as if t1 was added long ago

    task = client.tasks.claim_task(task_types=["review"], lease=600)
    client.tasks.complete_task(task_id="t1", fencing_token=task.lease.fencing_token)

    assert redis_client.pttl(index) >= task_ttl_ms(redis_client, namespace, "t1") - 1000
    assert [t.task_id for t in client.tasks.list_tasks().tasks] == ["t1"]



def test_a_reused_task_id_is_not_listed_as_a_dead_letter(make_client, redis_client, namespace):
    client = make_client()
    dead_letter(client, "t1")
    expire_task(redis_client, namespace, "t1")  # what the TASK TTL does
    client.tasks.add_task(task_id="t1", task_type="review")

    assert list(client.tasks.list_dead_letters().tasks) == []



def test_dead_letters_dying_in_the_same_millisecond_page_in_member_order(
    make_client, redis_client, namespace
):
    client = make_client()
    ids = ["B", "C", "a", "a-b", "ab", "a_b"]
    for task_id in ids:
        dead_letter(client, task_id)
    redis_client.zadd(f"ac:{{{namespace}}}:tasks:dead", dict.fromkeys(ids, 1_000))

    seen, token = [], ""
    while True:
        page = client.tasks.list_dead_letters(page_size=1, page_token=token)
        seen += [t.task_id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break

    assert seen == sorted(ids)  # Redis orders equal scores by bytes: every id exactly once


def test_aggregate_for_a_type_whose_counts_lapsed_is_consistent(
    make_client, redis_client, namespace
):
    client = make_client("alice")
    for task_id, task_type in [("s0", "security"), ("p0", "perf")]:
        client.tasks.add_task(task_id=task_id, task_type=task_type)
        claim_and_complete(client, task_type)
    # "security" had no completion for the TASK TTL while "perf" kept the namespace's stats alive.
    redis_client.hdel(f"ac:{{{namespace}}}:tasks:stats:type_agents", "security:alice")

    security = client.tasks.aggregate_results("security")

    assert security.total_completed == sum(security.by_agent.values())
    assert dict(security.by_type) == ({"security": 1} if security.total_completed else {})
