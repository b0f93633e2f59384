"""Tasks in time (issue 16, item 4 and 5): scheduled tasks, backoff policies, dependencies, and a
cancellation that reaches the worker holding the task."""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest
from agentcoord import AgentcoordError
from agentcoord.v1 import tasks_pb2

pytestmark = pytest.mark.every_backend


def _ms(ts) -> int:
    return ts.ToMilliseconds()


def _in(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)


# -- scheduled -----------------------------------------------------------------------------


def test_scheduled_task_is_not_claimed_before_not_before(make_client):
    client = make_client("lead")
    added = client.tasks.add_task(task_id="later", task_type="sched", not_before=_in(1.5))

    assert added.status == tasks_pb2.TASK_STATUS_PENDING
    assert added.wait_reason == tasks_pb2.TASK_WAIT_REASON_SCHEDULED
    assert _ms(added.available_time) == _ms(added.not_before)
    early = client.tasks.claim_task(task_types=["sched"])
    # A waiting claim sleeps until the time the claim script reports, then takes it.
    claimed = client.tasks.claim_task(task_types=["sched"], wait=10)

    assert early is None or _ms(early.update_time) >= _ms(added.not_before)
    assert claimed is not None and claimed.task_id == "later"
    assert _ms(claimed.update_time) >= _ms(added.not_before)  # server times
    assert claimed.wait_reason == tasks_pb2.TASK_WAIT_REASON_UNSPECIFIED


def test_not_before_in_the_past_is_claimable_at_once(make_client):
    client = make_client("lead")
    client.tasks.add_task(task_id="now", task_type="sched", not_before=_in(-60))

    assert client.tasks.claim_task(task_types=["sched"]).task_id == "now"


def test_not_before_beyond_the_task_ttl_is_invalid(make_client):
    client = make_client("lead")
    with pytest.raises(AgentcoordError) as caught:
        client.tasks.add_task(task_type="sched", not_before=_in(30 * 24 * 3600))
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert caught.value.field_violations[0][0] == "not_before"


# -- backoff policy ------------------------------------------------------------------------


def test_backoff_policy_grows_the_delay_between_attempts_up_to_its_maximum(make_client):
    client = make_client("worker")
    added = client.tasks.add_task(
        task_id="flaky",
        task_type="flaky",
        max_attempts=5,
        backoff_initial=0.2,
        backoff_multiplier=2,
        backoff_max=0.5,
    )
    assert _ms(added.backoff_policy.initial) == 200
    assert added.backoff_policy.multiplier == 2
    assert _ms(added.backoff_policy.maximum) == 500

    delays = []
    for _ in range(3):
        task = client.tasks.claim_task(task_types=["flaky"], wait=10)
        failed = client.tasks.fail_task(
            task_id="flaky", fencing_token=task.lease.fencing_token, error="boom"
        )
        assert failed.wait_reason == tasks_pb2.TASK_WAIT_REASON_BACKOFF
        delays.append(_ms(failed.available_time) - _ms(failed.update_time))

    assert delays == [200, 400, 500]


def test_an_explicit_failtask_backoff_overrides_the_policy(make_client):
    client = make_client("worker")
    client.tasks.add_task(task_id="t", task_type="bo", backoff_initial=60)
    task = client.tasks.claim_task(task_types=["bo"])

    failed = client.tasks.fail_task(task_id="t", fencing_token=task.lease.fencing_token, backoff=0)

    assert failed.wait_reason == tasks_pb2.TASK_WAIT_REASON_UNSPECIFIED
    assert client.tasks.claim_task(task_types=["bo"]).task_id == "t"


@pytest.mark.standalone_only  # waits out a lease: once is enough
def test_an_expired_lease_waits_out_the_backoff_policy(make_client):
    client = make_client("worker")
    client.tasks.add_task(task_id="t", task_type="exp", backoff_initial=30)
    client.tasks.claim_task(task_types=["exp"], lease=1)
    time.sleep(1.2)

    task = client.tasks.get_task("t")  # settles the expired lease

    assert task.status == tasks_pb2.TASK_STATUS_PENDING
    assert task.last_error == "lease expired"
    assert task.wait_reason == tasks_pb2.TASK_WAIT_REASON_BACKOFF
    assert _ms(task.available_time) - _ms(task.update_time) == 30_000
    assert client.tasks.claim_task(task_types=["exp"]) is None


def test_a_backoff_policy_needs_an_initial_delay_in_bounds(make_client):
    client = make_client("lead")
    with pytest.raises(AgentcoordError) as caught:
        client.tasks.add_task(task_type="bo", backoff_initial=1, backoff_multiplier=50)
    assert caught.value.field_violations[0][0] == "backoff_policy.multiplier"
    with pytest.raises(AgentcoordError) as caught:
        client.tasks.add_task(task_type="bo", backoff_initial=10, backoff_max=1)
    assert caught.value.field_violations[0][0] == "backoff_policy.maximum"


# -- dependencies --------------------------------------------------------------------------


def test_unknown_dependency_is_not_found_and_adds_nothing(make_client):
    client = make_client("lead")
    with pytest.raises(AgentcoordError) as caught:
        client.tasks.add_task(task_id="syn", task_type="syn", depends_on=["nope"])
    assert caught.value.code.name == "NOT_FOUND"
    assert caught.value.reason == "DEPENDENCY_NOT_FOUND"
    assert caught.value.metadata["task_id"] == "nope"
    with pytest.raises(AgentcoordError):
        client.tasks.get_task("syn")


def test_list_tasks_shows_why_a_dependent_waits(make_client):
    client = make_client("lead")
    for n in range(3):
        client.tasks.add_task(task_id=f"r{n}", task_type="review")
    client.tasks.add_task(task_id="syn", task_type="syn", depends_on=["r0", "r1", "r2"])
    task = client.tasks.claim_task(task_types=["review"])
    client.tasks.complete_task(task_id=task.task_id, fencing_token=task.lease.fencing_token)

    listed = {t.task_id: t for t in client.tasks.list_tasks(task_type="syn").tasks}

    syn = listed["syn"]
    assert syn.status == tasks_pb2.TASK_STATUS_PENDING
    assert syn.wait_reason == tasks_pb2.TASK_WAIT_REASON_DEPENDENCIES
    assert list(syn.depends_on) == ["r0", "r1", "r2"]
    assert syn.dependencies_outstanding == 2
    assert syn.dependency_failure_policy == tasks_pb2.DEPENDENCY_FAILURE_POLICY_CANCEL
    assert client.tasks.claim_task(task_types=["syn"]) is None


async def test_a_dependent_task_is_never_claimed_before_its_dependencies_complete(make_aclient):
    lead = make_aclient("lead")
    deps = [f"dep{n}" for n in range(12)]
    for dep in deps[:-1]:
        await lead.tasks.add_task(task_id=dep, task_type="part")
    await lead.tasks.add_task(task_id=deps[-1], task_type="last-part")
    await lead.tasks.add_task(task_id="synthesis", task_type="synthesis", depends_on=deps)

    claimed: list[tasks_pb2.Task] = []
    rounds = [0] * 16
    done = asyncio.Event()
    looked = asyncio.Condition()

    async def claimer(n: int) -> None:
        client = make_aclient(f"claimer-{n}")
        while not done.is_set():
            task = await client.tasks.claim_task(task_types=["synthesis"], wait=0.5)
            rounds[n] += 1
            if task is not None:
                claimed.append(task)
                done.set()
            async with looked:
                looked.notify_all()

    async def complete_all(client, task_type: str) -> None:  # type: ignore[no-untyped-def]
        while (task := await client.tasks.claim_task(task_types=[task_type])) is not None:
            await client.tasks.complete_task(
                task_id=task.task_id, fencing_token=task.lease.fencing_token
            )

    claimers = [asyncio.create_task(claimer(n)) for n in range(16)]
    # 11 of the 12 dependencies complete while 16 claimers wait for the dependent…
    await asyncio.gather(*(complete_all(make_aclient(f"worker-{n}"), "part") for n in range(4)))
    seen = list(rounds)
    async with looked:  # until every claimer has looked twice since
        await looked.wait_for(
            lambda: done.is_set() or all(r >= s + 2 for r, s in zip(rounds, seen, strict=True))
        )
    waiting = await lead.tasks.get_task("synthesis")
    assert claimed == []
    assert waiting.wait_reason == tasks_pb2.TASK_WAIT_REASON_DEPENDENCIES
    assert waiting.dependencies_outstanding == 1
    # …and the last one releases it to exactly one of them.
    await complete_all(lead, "last-part")
    await asyncio.wait_for(done.wait(), 15)
    await asyncio.gather(*claimers)

    assert [t.task_id for t in claimed] == ["synthesis"]
    completions = [_ms((await lead.tasks.get_task(dep)).complete_time) for dep in deps]
    assert _ms(claimed[0].update_time) >= max(completions)  # server times


def test_a_dead_dependency_cancels_the_dependent_and_its_dependents(make_client):
    client = make_client("lead")
    client.tasks.add_task(task_id="dep", task_type="part", max_attempts=1)
    client.tasks.add_task(task_id="mid", task_type="syn", depends_on=["dep"])
    client.tasks.add_task(task_id="top", task_type="syn", depends_on=["mid"])
    task = client.tasks.claim_task(task_types=["part"])

    client.tasks.fail_task(task_id="dep", fencing_token=task.lease.fencing_token, error="x")

    for task_id, cause in [("mid", "dep"), ("top", "mid")]:
        task = client.tasks.get_task(task_id)
        assert task.status == tasks_pb2.TASK_STATUS_CANCELLED
        assert task.last_error.startswith(f"dependency {cause} was ")


def test_a_cancelled_dependency_lets_a_run_anyway_dependent_run(make_client):
    client = make_client("lead")
    client.tasks.add_task(task_id="a", task_type="part")
    client.tasks.add_task(task_id="b", task_type="part")
    client.tasks.add_task(
        task_id="syn", task_type="syn", depends_on=["a", "b"], on_dependency_failure="run_anyway"
    )
    client.tasks.cancel_task("a")
    assert client.tasks.claim_task(task_types=["syn"]) is None
    task = client.tasks.claim_task(task_types=["part"])
    client.tasks.complete_task(task_id="b", fencing_token=task.lease.fencing_token)

    claimed = client.tasks.claim_task(task_types=["syn"])

    assert claimed is not None and claimed.task_id == "syn"


def test_a_dependency_already_cancelled_settles_the_new_task_at_once(make_client):
    client = make_client("lead")
    client.tasks.add_task(task_id="a", task_type="part")
    client.tasks.cancel_task("a")

    cancelled = client.tasks.add_task(task_id="c", task_type="syn", depends_on=["a"])
    anyway = client.tasks.add_task(
        task_id="r", task_type="syn", depends_on=["a"], on_dependency_failure="run_anyway"
    )

    assert cancelled.status == tasks_pb2.TASK_STATUS_CANCELLED
    assert anyway.wait_reason == tasks_pb2.TASK_WAIT_REASON_UNSPECIFIED
    assert client.tasks.claim_task(task_types=["syn"]).task_id == "r"


# -- cancellation reaches the worker ---------------------------------------------------------


def test_cancel_of_a_claimed_task_answers_the_holders_renewal_and_heartbeat(make_client):
    lead, worker = make_client("lead"), make_client("worker")
    worker.tasks.register_agent(["review"])
    lead.tasks.add_task(task_id="t", task_type="review")
    task = worker.tasks.claim_task()

    lead.tasks.cancel_task("t")

    with pytest.raises(AgentcoordError) as caught:
        worker.tasks.renew_task_lease(task_id="t", fencing_token=task.lease.fencing_token)
    assert caught.value.code.name == "FAILED_PRECONDITION"
    assert caught.value.reason == "TASK_CANCELLED"
    with pytest.raises(AgentcoordError) as caught:
        worker.tasks.heartbeat()
    assert caught.value.reason == "TASK_CANCELLED"
    assert caught.value.metadata["task_ids"] == "t"
    worker.tasks.heartbeat()  # told once
    with pytest.raises(AgentcoordError) as caught:  # completing stays refused as before
        worker.tasks.complete_task(task_id="t", fencing_token=task.lease.fencing_token)
    assert caught.value.reason == "LEASE_LOST"


def test_cancel_sends_the_holder_a_targeted_signal(make_client):
    lead, worker = make_client("lead"), make_client("worker")
    lead.tasks.add_task(task_id="t", task_type="review")
    task = worker.tasks.claim_task(task_types=["review"])

    lead.tasks.cancel_task("t")

    page = worker.signals.receive_signals(["task.cancelled"])
    assert [(s.sender, s.target_agent) for s in page.signals] == [("lead", "worker")]
    data = page.signals[0].data
    assert data["task_id"] == "t" and data["fencing_token"] == task.lease.fencing_token


async def test_cancel_stops_the_workers_handler(make_aclient):
    lead, client = make_aclient("lead"), make_aclient("worker")
    await lead.tasks.add_task(task_id="long", task_type="long")
    started, stopped = asyncio.Event(), asyncio.Event()

    async def handler(task):
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {"never": True}

    # A long lease: only the signal (or a renewal every 20 s) can tell the worker.
    worker = client.tasks.worker(handler, task_types=["long"], lease=60, wait=0.5)
    running = asyncio.create_task(worker.run(max_tasks=1))
    await asyncio.wait_for(started.wait(), 10)
    await lead.tasks.cancel_task("long")

    await asyncio.wait_for(stopped.wait(), 15)
    assert await asyncio.wait_for(running, 10) == 1
    assert worker.cancelled == 1 and worker.completed == 0
    assert (await lead.tasks.get_task("long")).status == tasks_pb2.TASK_STATUS_CANCELLED


@pytest.mark.standalone_only  # waits out a renewal: once is enough
def test_sync_worker_skips_the_completion_of_a_task_cancelled_while_its_handler_ran(make_client):
    lead, client = make_client("lead"), make_client("worker")
    lead.tasks.add_task(task_id="t", task_type="sync-cancel")

    def handler(task):
        lead.tasks.cancel_task(task.task_id)
        time.sleep(1.2)  # a thread cannot be interrupted: the renewal (every 1/3 s) tells it
        return {"stale": True}

    worker = client.tasks.worker(handler, task_types=["sync-cancel"], lease=1, wait=0)

    worker.run(max_tasks=1)

    assert worker.cancelled == 1 and worker.completed == 0 and worker.lost == 0
    task = lead.tasks.get_task("t")
    assert task.status == tasks_pb2.TASK_STATUS_CANCELLED and not task.result.fields
