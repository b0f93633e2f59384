"""CompleteTask/FailTask with claim_next: the next task is leased in the same call and script."""

from __future__ import annotations

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord.v1 import tasks_pb2

from .support import task_record


def test_completion_with_claim_next_returns_the_next_highest_priority_task_under_a_new_lease(
    make_client,
):
    client = make_client("worker-1")
    client.tasks.add_task(task_id="first", task_type="review", priority=9)
    client.tasks.add_task(task_id="low", task_type="review", priority=2)
    client.tasks.add_task(task_id="high", task_type="review", priority=8)
    task = client.tasks.claim_task(task_types=["review"])

    done, next_task = client.tasks.complete_and_claim_next(
        task_id="first",
        fencing_token=task.lease.fencing_token,
        result={"ok": True},
        task_types=["review"],
        lease=30,
    )

    assert done.status == tasks_pb2.TASK_STATUS_COMPLETED
    assert done.result["ok"] is True
    assert next_task is not None
    assert next_task.task_id == "high"
    assert next_task.status == tasks_pb2.TASK_STATUS_CLAIMED
    assert next_task.assignee == "worker-1"
    assert next_task.lease.fencing_token > task.lease.fencing_token
    lease_ms = next_task.lease.expire_time.ToMilliseconds() - next_task.update_time.ToMilliseconds()
    assert lease_ms == 30_000
    assert client.tasks.get_task("low").status == tasks_pb2.TASK_STATUS_PENDING
    # the new lease is a real one: it completes the next task
    client.tasks.complete_task(task_id="high", fencing_token=next_task.lease.fencing_token)


def test_completion_with_claim_next_and_nothing_queued_returns_no_next_task(make_client):
    client = make_client()
    client.tasks.add_task(task_id="only", task_type="review")
    task = client.tasks.claim_task(task_types=["review"])

    done, next_task = client.tasks.complete_and_claim_next(
        task_id="only", fencing_token=task.lease.fencing_token, task_types=["review"]
    )

    assert done.status == tasks_pb2.TASK_STATUS_COMPLETED
    assert next_task is None


def test_stale_fencing_token_fails_the_completion_and_claims_nothing(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review", priority=9)
    client.tasks.add_task(task_id="t2", task_type="review")
    task = client.tasks.claim_task(task_types=["review"])

    with pytest.raises(AgentcoordError) as caught:
        client.tasks.complete_and_claim_next(
            task_id="t1", fencing_token=task.lease.fencing_token + 1, task_types=["review"]
        )

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "LEASE_LOST"
    assert client.tasks.get_task("t1").status == tasks_pb2.TASK_STATUS_CLAIMED
    assert client.tasks.get_task("t2").status == tasks_pb2.TASK_STATUS_PENDING


def test_claim_next_without_types_or_capabilities_completes_nothing(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    task = client.tasks.claim_task(task_types=["review"])

    with pytest.raises(AgentcoordError) as caught:
        client.tasks.complete_and_claim_next(task_id="t1", fencing_token=task.lease.fencing_token)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "NO_TASK_TYPES"
    assert client.tasks.get_task("t1").status == tasks_pb2.TASK_STATUS_CLAIMED


def test_claim_next_without_types_uses_the_registered_capabilities(make_client):
    client = make_client()
    client.tasks.register_agent(["build"])
    client.tasks.add_task(task_id="t1", task_type="build")
    client.tasks.add_task(task_id="t2", task_type="build")
    task = client.tasks.claim_task()

    _, next_task = client.tasks.complete_and_claim_next(
        task_id="t1", fencing_token=task.lease.fencing_token
    )

    assert next_task is not None and next_task.task_id == "t2"


def test_repeating_a_completion_with_claim_next_returns_the_same_next_task(make_client):
    client = make_client()
    for task_id in ("t1", "t2", "t3"):
        client.tasks.add_task(task_id=task_id, task_type="review")
    task = client.tasks.claim_task(task_types=["review"])
    token = task.lease.fencing_token

    _, first = client.tasks.complete_and_claim_next(
        task_id="t1", fencing_token=token, task_types=["review"]
    )
    _, again = client.tasks.complete_and_claim_next(
        task_id="t1", fencing_token=token, task_types=["review"]
    )

    assert first is not None and again is not None
    assert again.task_id == first.task_id == "t2"
    assert again.lease.fencing_token == first.lease.fencing_token
    assert client.tasks.get_task("t3").status == tasks_pb2.TASK_STATUS_PENDING


def test_failure_with_claim_next_settles_the_failure_and_leases_the_next_task(make_client):
    client = make_client("worker-1")
    client.tasks.add_task(task_id="bad", task_type="review", priority=9)
    client.tasks.add_task(task_id="next", task_type="review", priority=5)
    task = client.tasks.claim_task(task_types=["review"])

    failed, next_task = client.tasks.fail_and_claim_next(
        task_id="bad",
        fencing_token=task.lease.fencing_token,
        error="boom",
        backoff=60,
        task_types=["review"],
    )

    assert failed.status == tasks_pb2.TASK_STATUS_PENDING
    assert failed.last_error == "boom"
    assert next_task is not None and next_task.task_id == "next"
    assert next_task.assignee == "worker-1"


def test_worker_claims_each_next_task_with_the_completion_and_leaves_none_claimed(
    make_client, namespace, redis_client
):
    client = make_client()
    for n in range(5):
        client.tasks.add_task(task_id=f"t{n}", task_type="review", priority=9 - n)
    seen = []

    def handler(task):
        seen.append(task.task_id)
        return {"n": len(seen)}

    worker = client.tasks.worker(handler, task_types=["review"], wait=0)

    assert worker.run(max_tasks=3) == 3

    assert seen == ["t0", "t1", "t2"]
    # t1 and t2 were leased by the completions before them, not by a ClaimTask
    assert task_record(redis_client, namespace, "t0")["next"] == "t1"
    assert task_record(redis_client, namespace, "t1")["next"] == "t2"
    statuses = [client.tasks.get_task(f"t{n}").status for n in range(5)]
    assert statuses == [tasks_pb2.TASK_STATUS_COMPLETED] * 3 + [tasks_pb2.TASK_STATUS_PENDING] * 2


def test_claim_next_options_are_validated_before_anything_is_done(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    task = client.tasks.claim_task(task_types=["review"])

    with pytest.raises(AgentcoordError) as caught:
        client.tasks.complete_and_claim_next(
            task_id="t1", fencing_token=task.lease.fencing_token, task_types=["review"], lease=0.5
        )

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == ["claim_next.lease_duration"]
    assert client.tasks.get_task("t1").status == tasks_pb2.TASK_STATUS_CLAIMED
