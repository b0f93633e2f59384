"""TaskService: priority queues, exactly-one claims, leases, redelivery and dead letters."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord.v1 import tasks_pb2

from .support import expire_task, queued_tasks, set_task_fields, task_record, task_ttl_ms

pytestmark = pytest.mark.every_backend


def task_keys(redis_client, namespace):
    return list(redis_client.scan_iter(match=f"ac:{{{namespace}}}:tasks:*", count=1000))


def test_claims_follow_priority_then_fifo_order(make_client):
    client = make_client()
    for task_id, priority in [("a", 5), ("b", 9), ("c", 5), ("d", 1), ("e", 9), ("f", 10)]:
        client.tasks.add_task(task_id=task_id, task_type="review", priority=priority)

    order = []
    while (task := client.tasks.claim_task(task_types=["review"])) is not None:
        order.append(task.task_id)

    assert order == ["f", "b", "e", "a", "c", "d"]


def test_claim_over_several_types_takes_the_highest_priority_then_the_oldest(make_client):
    client = make_client()
    client.tasks.add_task(task_id="sec-old", task_type="security", priority=7)
    client.tasks.add_task(task_id="perf-high", task_type="perf", priority=8)
    client.tasks.add_task(task_id="perf-old", task_type="perf", priority=7)
    client.tasks.add_task(task_id="style", task_type="style", priority=10)

    order = []
    while (task := client.tasks.claim_task(task_types=["security", "perf"])) is not None:
        order.append(task.task_id)

    assert order == ["perf-high", "sec-old", "perf-old"]
    assert client.tasks.get_task("style").status == tasks_pb2.TASK_STATUS_PENDING


def test_claim_returns_the_task_with_a_lease_and_fencing_token(make_client):
    client = make_client("worker-1")
    client.tasks.add_task(task_id="t1", task_type="review", payload={"file": "auth.py"})

    task = client.tasks.claim_task(task_types=["review"], lease=30)

    assert task.status == tasks_pb2.TASK_STATUS_CLAIMED
    assert task.assignee == "worker-1"
    assert task.attempts == 1
    assert task.payload["file"] == "auth.py"
    assert task.lease.fencing_token > 0
    lease_s = task.lease.expire_time.ToMilliseconds() - task.update_time.ToMilliseconds()
    assert lease_s == 30_000


def test_second_claim_of_last_task_gets_nothing(make_client):
    first, second = make_client("w1"), make_client("w2")
    first.tasks.add_task(task_id="only", task_type="review")

    assert first.tasks.claim_task(task_types=["review"]).task_id == "only"
    assert second.tasks.claim_task(task_types=["review"]) is None


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_32_concurrent_claimers_complete_each_of_500_tasks_exactly_once(make_aclient):
    adder = make_aclient("adder")
    ids = [f"t{i:03d}" for i in range(500)]
    await asyncio.gather(
        *(
            adder.tasks.add_task(task_id=i, task_type="load", priority=1 + n % 10)
            for n, i in enumerate(ids)
        )
    )
    workers = [make_aclient(f"worker-{n}") for n in range(32)]
    claimed: list[str] = []
    completed: list[str] = []

    async def work(client):
        while (task := await client.tasks.claim_task(task_types=["load"])) is not None:
            claimed.append(task.task_id)
            await client.tasks.complete_task(
                task_id=task.task_id, fencing_token=task.lease.fencing_token, result={"ok": True}
            )
            completed.append(task.task_id)

    await asyncio.gather(*(work(w) for w in workers))

    assert len(claimed) == 500 and sorted(claimed) == ids  # no task claimed twice
    assert sorted(completed) == ids
    totals = await adder.tasks.aggregate_results()
    assert totals.total_completed == 500
    assert sum(totals.by_agent.values()) == 500
    assert dict(totals.by_type) == {"load": 500}


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_tasks_abandoned_by_crashed_workers_are_completed_exactly_once_by_the_others(
    make_aclient,
):
    adder = make_aclient("adder")
    ids = [f"t{i:03d}" for i in range(100)]
    await asyncio.gather(*(adder.tasks.add_task(task_id=i, task_type="job") for i in ids))
    abandoned: list[str] = []

    async def crash(client):
        for _ in range(5):  # claims under a 1 s lease, then dies without a word
            task = await client.tasks.claim_task(task_types=["job"], lease=1)
            abandoned.append(task.task_id)

    await asyncio.gather(*(crash(make_aclient(f"crasher-{n}")) for n in range(2)))
    completed: list[str] = []

    async def work(client):
        while len(completed) < len(ids):
            task = await client.tasks.claim_task(task_types=["job"], lease=30, wait=2)
            if task is None:
                return
            await client.tasks.complete_task(
                task_id=task.task_id, fencing_token=task.lease.fencing_token
            )
            completed.append(task.task_id)

    await asyncio.gather(*(work(make_aclient(f"worker-{n}")) for n in range(8)))

    assert sorted(completed) == ids  # every task, each exactly once
    assert (await adder.tasks.aggregate_results()).total_completed == 100
    redelivered = [await adder.tasks.get_task(i) for i in abandoned]
    assert len(abandoned) == 10
    assert all(t.attempts == 2 and not t.assignee.startswith("crasher") for t in redelivered)


async def test_concurrent_claims_of_one_task_have_exactly_one_winner(make_aclient):
    await make_aclient("adder").tasks.add_task(task_id="prize", task_type="race")
    clients = [make_aclient(f"w{n}") for n in range(32)]

    results = await asyncio.gather(*(c.tasks.claim_task(task_types=["race"]) for c in clients))

    assert [r.task_id for r in results if r is not None] == ["prize"]


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_task_of_a_worker_that_stopped_renewing_is_handed_out_again(make_aclient):
    dead, alive = make_aclient("dead-worker"), make_aclient("alive-worker")
    await dead.tasks.add_task(task_id="t1", task_type="review")
    first = await dead.tasks.claim_task(task_types=["review"], lease=1)

    # No background job: the waiting claim itself reclaims the expired lease.
    second = await alive.tasks.claim_task(task_types=["review"], lease=30, wait=5)

    assert second is not None and second.task_id == "t1"
    assert second.assignee == "alive-worker"
    assert second.attempts == 2
    assert second.last_error == "lease expired"
    assert second.lease.fencing_token > first.lease.fencing_token


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_completion_with_a_lost_lease_is_refused_and_changes_nothing(make_aclient):
    dead, alive = make_aclient("dead-worker"), make_aclient("alive-worker")
    await dead.tasks.add_task(task_id="t1", task_type="review")
    stale = await dead.tasks.claim_task(task_types=["review"], lease=1)
    fresh = await alive.tasks.claim_task(task_types=["review"], wait=5)
    assert fresh is not None

    with pytest.raises(AgentcoordError) as caught:
        await dead.tasks.complete_task(
            task_id="t1", fencing_token=stale.lease.fencing_token, result={"late": True}
        )

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "LEASE_LOST"
    task = await alive.tasks.get_task("t1")
    assert task.status == tasks_pb2.TASK_STATUS_CLAIMED
    assert task.assignee == "alive-worker"
    assert (await alive.tasks.aggregate_results()).total_completed == 0


def test_completion_after_the_lease_expired_is_refused_even_before_anyone_reclaims(
    make_client, redis_client, namespace
):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    task = client.tasks.claim_task(task_types=["review"], lease=1)
    set_task_fields(redis_client, namespace, "t1", lease_exp=1)  # the lease ran out long ago

    with pytest.raises(AgentcoordError) as caught:
        client.tasks.complete_task(task_id="t1", fencing_token=task.lease.fencing_token)

    assert caught.value.reason == "LEASE_LOST"


def test_completion_by_another_agent_or_with_another_token_is_refused(make_client):
    owner, other = make_client("owner"), make_client("other")
    owner.tasks.add_task(task_id="t1", task_type="review")
    task = owner.tasks.claim_task(task_types=["review"])

    for client, token in [(other, task.lease.fencing_token), (owner, task.lease.fencing_token + 1)]:
        with pytest.raises(AgentcoordError) as caught:
            client.tasks.complete_task(task_id="t1", fencing_token=token)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.reason == "LEASE_LOST"


def test_repeating_a_completion_with_the_same_lease_returns_the_same_result(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    task = client.tasks.claim_task(task_types=["review"])
    token = task.lease.fencing_token

    first = client.tasks.complete_task(task_id="t1", fencing_token=token, result={"n": 1})
    again = client.tasks.complete_task(task_id="t1", fencing_token=token, result={"n": 2})

    assert first.status == again.status == tasks_pb2.TASK_STATUS_COMPLETED
    assert again.result["n"] == 1
    assert again.complete_time == first.complete_time
    assert client.tasks.aggregate_results().total_completed == 1


def test_renewing_extends_the_lease(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    task = client.tasks.claim_task(task_types=["review"], lease=5)

    lease = client.tasks.renew_task_lease(
        task_id="t1", fencing_token=task.lease.fencing_token, lease=600
    )

    assert lease.fencing_token == task.lease.fencing_token
    assert lease.expire_time.ToMilliseconds() >= task.lease.expire_time.ToMilliseconds() + 590_000
    assert client.tasks.get_task("t1").lease.expire_time == lease.expire_time


def test_renewing_a_lease_one_does_not_hold_is_lease_lost(make_client):
    owner, other = make_client("owner"), make_client("other")
    owner.tasks.add_task(task_id="t1", task_type="review")
    task = owner.tasks.claim_task(task_types=["review"])

    with pytest.raises(AgentcoordError) as caught:
        other.tasks.renew_task_lease(task_id="t1", fencing_token=task.lease.fencing_token)

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "LEASE_LOST"


def test_retryable_failure_puts_the_task_back_with_the_attempt_counted(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review", max_attempts=3)
    task = client.tasks.claim_task(task_types=["review"])

    failed = client.tasks.fail_task(
        task_id="t1", fencing_token=task.lease.fencing_token, error="flaky", retryable=True
    )

    assert failed.status == tasks_pb2.TASK_STATUS_PENDING
    assert failed.last_error == "flaky"
    again = client.tasks.claim_task(task_types=["review"])
    assert again.task_id == "t1" and again.attempts == 2


def test_task_is_dead_lettered_after_max_attempts(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review", max_attempts=2)

    statuses = []
    for _ in range(2):
        task = client.tasks.claim_task(task_types=["review"])
        failed = client.tasks.fail_task(
            task_id="t1", fencing_token=task.lease.fencing_token, error="boom"
        )
        statuses.append(failed.status)

    assert statuses == [tasks_pb2.TASK_STATUS_PENDING, tasks_pb2.TASK_STATUS_DEAD_LETTERED]
    assert client.tasks.claim_task(task_types=["review"]) is None
    dead = client.tasks.list_dead_letters()
    assert [t.task_id for t in dead.tasks] == ["t1"]
    assert dead.tasks[0].attempts == 2


def test_lease_expiry_on_the_last_attempt_dead_letters_the_task(
    make_client, redis_client, namespace
):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review", max_attempts=1)
    client.tasks.claim_task(task_types=["review"], lease=1)
    expire_lease(redis_client, namespace, "t1", "review")  # expired long ago

    assert client.tasks.claim_task(task_types=["review"]) is None

    task = client.tasks.get_task("t1")
    assert task.status == tasks_pb2.TASK_STATUS_DEAD_LETTERED
    assert task.last_error == "lease expired"


def test_failure_that_does_not_say_whether_it_is_retryable_is_retried(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    task = client.tasks.claim_task(task_types=["review"])
    # As grpcurl or another language's client would send it: no retryable field at all.
    request = tasks_pb2.FailTaskRequest(task_id="t1", fencing_token=task.lease.fencing_token)

    response = client.tasks._unary(client.tasks._stub.FailTask, request)

    assert response.task.status == tasks_pb2.TASK_STATUS_PENDING


def test_non_retryable_failure_dead_letters_at_once(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review", max_attempts=5)
    task = client.tasks.claim_task(task_types=["review"])

    failed = client.tasks.fail_task(
        task_id="t1", fencing_token=task.lease.fencing_token, error="bad input", retryable=False
    )

    assert failed.status == tasks_pb2.TASK_STATUS_DEAD_LETTERED
    assert failed.attempts == 1


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_failure_with_backoff_is_not_claimable_until_the_backoff_ends(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    task = client.tasks.claim_task(task_types=["review"])

    failed = client.tasks.fail_task(
        task_id="t1", fencing_token=task.lease.fencing_token, error="busy", backoff=1.0
    )

    assert failed.status == tasks_pb2.TASK_STATUS_PENDING
    assert failed.available_time.ToMilliseconds() == failed.update_time.ToMilliseconds() + 1000
    assert client.tasks.claim_task(task_types=["review"]) is None
    later = client.tasks.claim_task(task_types=["review"], wait=3)
    assert later is not None and later.task_id == "t1"


def test_add_task_with_the_same_request_id_returns_the_existing_task(
    make_client, redis_client, namespace
):
    client = make_client()
    first = client.tasks.add_task(task_type="review", description="once", request_id="req-1")
    retry = client.tasks.add_task(task_type="review", description="twice", request_id="req-1")

    assert retry.task_id == first.task_id
    assert retry.description == "once"
    assert queued_tasks(redis_client, namespace, "review") == 1


async def test_concurrent_retries_of_one_add_task_add_exactly_one_task(
    make_aclient, redis_client, namespace
):
    clients = [make_aclient("adder") for _ in range(16)]  # one agent retrying on 16 channels

    tasks = await asyncio.gather(
        *(c.tasks.add_task(task_type="review", request_id="req-1") for c in clients)
    )

    assert len({t.task_id for t in tasks}) == 1
    assert queued_tasks(redis_client, namespace, "review") == 1
    assert redis_client.zcard(f"ac:{{{namespace}}}:tasks:index") == 1

def test_request_ids_are_scoped_to_the_adding_agent(make_client):
    one = make_client("one").tasks.add_task(task_type="review", request_id="req-1")
    two = make_client("two").tasks.add_task(task_type="review", request_id="req-1")

    assert one.task_id != two.task_id


def test_adding_a_taken_task_id_is_already_exists(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")

    with pytest.raises(AgentcoordError) as caught:
        client.tasks.add_task(task_id="t1", task_type="other")

    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.reason == "TASK_EXISTS"
    assert client.tasks.get_task("t1").task_type == "review"


def test_added_task_gets_defaults_a_server_made_id_and_the_task_ttl(
    make_client, redis_client, namespace
):
    task = make_client("adder").tasks.add_task(task_type="review", priority=0, max_attempts=0)

    assert len(task.task_id) == 32
    assert (task.priority, task.max_attempts, task.attempts) == (5, 3, 0)
    assert task.created_by == "adder"
    assert task.status == tasks_pb2.TASK_STATUS_PENDING
    pttl = task_ttl_ms(redis_client, namespace, task.task_id)
    assert 4 * 3600 * 1000 - 5000 < pttl <= 4 * 3600 * 1000


async def test_waiting_claim_returns_a_task_added_while_it_waits(make_aclient):
    worker, adder = make_aclient("worker"), make_aclient("adder")
    waiting = asyncio.create_task(worker.tasks.claim_task(task_types=["review"], wait=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()

    await adder.tasks.add_task(task_id="late", task_type="review")

    task = await asyncio.wait_for(waiting, 5)
    assert task is not None and task.task_id == "late"


async def test_waiting_claim_with_nothing_to_claim_returns_no_task(make_aclient):
    assert await make_aclient().tasks.claim_task(task_types=["review"], wait=0.3) is None


def test_claim_without_types_uses_the_registered_capabilities(make_client):
    client = make_client()
    client.tasks.register_agent(["security"])
    client.tasks.add_task(task_id="perf", task_type="perf", priority=10)
    client.tasks.add_task(task_id="sec", task_type="security")

    assert client.tasks.claim_task().task_id == "sec"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task_type": "review", "priority": 11}, "priority"),
        ({"task_type": "review", "priority": -1}, "priority"),
        ({"task_type": "re:view"}, "task_type"),
        ({"task_type": ""}, "task_type"),
        ({"task_type": "review", "task_id": "a*b"}, "task_id"),
        ({"task_type": "review", "max_attempts": 101}, "max_attempts"),
        ({"task_type": "review", "request_id": "r 1"}, "request_id"),
        ({"task_type": "review", "description": "x" * 4097}, "description"),
    ],
)
def test_bad_add_task_is_invalid_argument_and_writes_nothing(
    make_client, redis_client, namespace, kwargs, field
):
    with pytest.raises(AgentcoordError) as caught:
        make_client().tasks.add_task(**kwargs)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == [field]
    assert task_keys(redis_client, namespace) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task_types": ["review"], "wait": 61}, "wait"),
        ({"task_types": ["review"], "lease": 0.5}, "lease_duration"),
        ({"task_types": ["review"], "lease": 3601}, "lease_duration"),
        ({"task_types": ["re:view"]}, "task_types[0]"),
        ({}, "task_types"),  # no types and no registered capabilities
    ],
)
def test_bad_claim_is_invalid_argument_and_claims_nothing(
    make_client, redis_client, namespace, kwargs, field
):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")

    with pytest.raises(AgentcoordError) as caught:
        client.tasks.claim_task(**kwargs)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == [field]
    assert client.tasks.get_task("t1").status == tasks_pb2.TASK_STATUS_PENDING
    assert redis_client.get(f"ac:{{{namespace}}}:tasks:fence") is None


def test_bad_fail_task_is_invalid_argument_and_leaves_the_claim(make_client):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    task = client.tasks.claim_task(task_types=["review"])

    with pytest.raises(AgentcoordError) as caught:
        client.tasks.fail_task(task_id="t1", fencing_token=task.lease.fencing_token, backoff=3601)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert client.tasks.get_task("t1").status == tasks_pb2.TASK_STATUS_CLAIMED


def test_observer_cannot_add_or_claim(make_client):
    observer = make_client("watcher", "OBSERVER")

    for call in (
        lambda: observer.tasks.add_task(task_type="review"),
        lambda: observer.tasks.claim_task(task_types=["review"]),
    ):
        with pytest.raises(AgentcoordError) as caught:
            call()
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_tasks_of_another_namespace_are_invisible(make_client, namespace):
    make_client("a", ns=namespace).tasks.add_task(task_id="t1", task_type="review")
    other = make_client("a", ns=namespace + "x")

    assert other.tasks.claim_task(task_types=["review"]) is None
    with pytest.raises(AgentcoordError) as caught:
        other.tasks.get_task("t1")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


# -- reads report an expired lease as settled ---------------------------------------------


def expire_lease(redis_client, namespace, task_id, task_type):
    """Makes the task's lease have run out long ago, as if its worker died (no sleeping)."""
    set_task_fields(redis_client, namespace, task_id, lease_exp=1)
    redis_client.zadd(f"ac:{{{namespace}}}:tasks:l", {task_id: 1})


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_get_task_reports_a_task_whose_lease_ran_out_as_pending_again(make_client):
    dead, reader = make_client("dead-worker"), make_client("reader", "OBSERVER")
    dead.tasks.add_task(task_id="t1", task_type="review")
    dead.tasks.claim_task(task_types=["review"], lease=1)
    assert reader.tasks.get_task("t1").status == tasks_pb2.TASK_STATUS_CLAIMED

    time.sleep(1.1)  # the lease runs out; nobody claims "review" meanwhile
    task = reader.tasks.get_task("t1")

    assert task.status == tasks_pb2.TASK_STATUS_PENDING
    assert task.attempts == 1
    assert task.last_error == "lease expired"
    assert not task.HasField("lease")


def test_get_task_settles_the_expired_lease_so_the_next_claim_sees_the_same_state(
    make_client, redis_client, namespace
):
    client = make_client("worker")
    client.tasks.add_task(task_id="t1", task_type="review")
    first = client.tasks.claim_task(task_types=["review"])
    expire_lease(redis_client, namespace, "t1", "review")

    seen = client.tasks.get_task("t1")
    again = client.tasks.get_task("t1")

    assert seen.status == again.status == tasks_pb2.TASK_STATUS_PENDING
    assert again.update_time == seen.update_time  # settled once, not on every read
    assert redis_client.zscore(f"ac:{{{namespace}}}:tasks:l", "t1") is None
    claimed = client.tasks.claim_task(task_types=["review"])
    assert claimed.task_id == "t1" and claimed.attempts == 2
    assert claimed.lease.fencing_token > first.lease.fencing_token


def test_get_task_reports_an_expired_last_attempt_as_dead_lettered(
    make_client, redis_client, namespace
):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review", max_attempts=1)
    client.tasks.claim_task(task_types=["review"])
    expire_lease(redis_client, namespace, "t1", "review")

    task = client.tasks.get_task("t1")

    assert task.status == tasks_pb2.TASK_STATUS_DEAD_LETTERED
    assert task.last_error == "lease expired"
    assert [t.task_id for t in client.tasks.list_dead_letters().tasks] == ["t1"]


def test_list_tasks_reports_expired_leases_as_settled_under_every_filter(
    make_client, redis_client, namespace
):
    client = make_client("worker")
    for task_id in ("gone", "live"):
        client.tasks.add_task(task_id=task_id, task_type="review")
        client.tasks.claim_task(task_types=["review"])
    expire_lease(redis_client, namespace, "gone", "review")

    def ids(**filters):
        return [t.task_id for t in client.tasks.list_tasks(**filters).tasks]

    assert ids(status="claimed") == ["live"]
    assert ids(status="pending") == ["gone"]
    assert ids(assignee="worker") == ["gone", "live"]  # the last holder stays the assignee
    (gone,) = [t for t in client.tasks.list_tasks().tasks if t.task_id == "gone"]
    assert gone.status == tasks_pb2.TASK_STATUS_PENDING and gone.last_error == "lease expired"



def test_a_task_id_reused_with_another_type_is_claimed_only_as_its_new_type(
    make_client, redis_client, namespace
):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    expire_task(redis_client, namespace, "t1")  # what the TASK TTL does
    client.tasks.add_task(task_id="t1", task_type="deploy")

    assert client.tasks.claim_task(task_types=["review"]) is None
    claimed = client.tasks.claim_task(task_types=["deploy"])
    assert claimed is not None and claimed.task_id == "t1" and claimed.task_type == "deploy"


def test_an_expired_task_is_deleted_by_the_next_add_with_its_queue_entry(
    make_client, redis_client, namespace
):
    client = make_client()
    client.tasks.add_task(task_id="t1", task_type="review")
    expire_task(redis_client, namespace, "t1")  # its TASK TTL ran out: absent to every read

    client.tasks.add_task(task_id="t2", task_type="review")

    assert task_record(redis_client, namespace, "t1") is None  # memory given back, lazily
    assert queued_tasks(redis_client, namespace, "review") == 1
    assert client.tasks.claim_task(task_types=["review"]).task_id == "t2"
    assert client.tasks.claim_task(task_types=["review"]) is None
