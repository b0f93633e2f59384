"""The worker helpers: claim, renew while the handler works, complete or fail."""

from __future__ import annotations

import asyncio
import time

import pytest
from agentcoord.client.task_worker import PermanentTaskError
from agentcoord.v1 import tasks_pb2

pytestmark = pytest.mark.every_backend


def test_sync_worker_completes_tasks_with_the_handlers_result(make_client):
    client = make_client("worker")
    for n in range(3):
        client.tasks.add_task(task_id=f"t{n}", task_type="double", payload={"n": n})
    worker = client.tasks.worker(
        lambda task: {"doubled": task.payload["n"] * 2}, task_types=["double"], wait=0
    )

    processed = worker.run(stop_when_idle=True)

    assert processed == 3 and worker.completed == 3
    assert [client.tasks.get_task(f"t{n}").result["doubled"] for n in range(3)] == [0, 2, 4]


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_sync_worker_renews_the_lease_while_a_slow_handler_works(make_client):
    client = make_client("worker")
    client.tasks.add_task(task_id="slow", task_type="slow")

    def handler(task):
        time.sleep(1.6)  # longer than the 1 s lease: only renewal keeps it
        return {"done": True}

    worker = client.tasks.worker(handler, task_types=["slow"], lease=1, wait=0)

    done = worker.run_once()

    assert done.status == tasks_pb2.TASK_STATUS_COMPLETED
    assert worker.completed == 1 and worker.lost == 0


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_async_worker_renews_the_lease_while_a_slow_handler_works(make_aclient):
    client = make_aclient("worker")
    await client.tasks.add_task(task_id="slow", task_type="slow")

    async def handler(task):
        await asyncio.sleep(1.6)
        return {"done": True}

    worker = client.tasks.worker(handler, task_types=["slow"], lease=1, wait=0)

    done = await worker.run_once()

    assert done.status == tasks_pb2.TASK_STATUS_COMPLETED
    assert done.attempts == 1


async def test_async_worker_fails_retryably_on_error_and_dead_letters_on_permanent_error(
    make_aclient,
):
    client = make_aclient("worker")
    await client.tasks.add_task(task_id="flaky", task_type="job", max_attempts=3, priority=10)
    await client.tasks.add_task(task_id="doomed", task_type="job", max_attempts=3, priority=1)

    async def handler(task):
        if task.task_id == "flaky":
            raise RuntimeError("try again")
        raise PermanentTaskError("cannot ever work")

    worker = client.tasks.worker(handler, task_types=["job"], wait=0)
    flaky = await worker.run_once()
    assert flaky.task_id == "flaky"
    assert flaky.status == tasks_pb2.TASK_STATUS_PENDING
    assert flaky.last_error == "RuntimeError: try again"

    await client.tasks.cancel_task("flaky")
    doomed = await worker.run_once()
    assert doomed.task_id == "doomed"
    assert doomed.status == tasks_pb2.TASK_STATUS_DEAD_LETTERED
    assert worker.failed == 2
