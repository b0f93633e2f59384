"""Waiting claims are woken across server processes, one waiter per added task.

Two AgentcoordServer instances on one Redis, each on its own event loop and thread (as two
processes would be), with the safety re-check set far beyond the claims' wait: a claim can
only get its task in time if the wake-up crossed from one server to the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from agentcoord import AsyncClient
from agentcoord_server.store import tasks as task_store

from .conftest import server_settings
from .support import ServerThread

WAIT_S = 20.0  # the claims' long-poll; the re-check (30 s) never comes within it
WITHIN_S = 10.0
"""A claim must answer well before its wait ends: at the end of its wait it looks once more,
which would find the task without any wake-up."""


@pytest.fixture
def other_server(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    monkeypatch.setattr(task_store, "RECHECK_SECONDS", 30.0)
    handle = ServerThread(server_settings(redis_url)).start()
    yield handle
    handle.stop()


async def subscribed(redis_client: redis.Redis, namespace: str) -> None:
    """Returns once a server process subscribed to the namespace's wake-ups (a claim waits)."""
    channel = f"ac:{{{namespace}}}:tasks:wake"
    for _ in range(1000):
        if dict(redis_client.pubsub_numsub(channel)).get(channel, 0) >= 1:
            return
        await asyncio.sleep(0.01)
    pytest.fail("no server subscribed to the namespace's wake-ups")


def evalsha_calls(redis_client: redis.Redis) -> int:
    return int(redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def waiting(redis_client: redis.Redis, namespace: str) -> None:
    """Returns once the claims are waiting: a server subscribed to the namespace's wake-ups
    and no claim script ran for 0.3 s (each claim found the queue empty and sleeps)."""
    await subscribed(redis_client, namespace)
    calls = -1
    for _ in range(100):
        now = evalsha_calls(redis_client)
        if now == calls:
            return
        calls = now
        await asyncio.sleep(0.3)
    pytest.fail("the claims never settled into waiting")


async def test_claim_waiting_on_one_server_gets_a_task_added_through_another(
    server, other_server, credentials, redis_client, namespace
):
    adder = AsyncClient(server.address, **credentials("lead"))
    worker = AsyncClient(other_server.address, **credentials("worker"))
    try:
        claim = asyncio.create_task(worker.tasks.claim_task(task_types=["review"], wait=WAIT_S))
        await waiting(redis_client, namespace)

        await adder.tasks.add_task(task_id="t1", task_type="review")

        try:
            task = await asyncio.wait_for(claim, WITHIN_S)
        except TimeoutError:
            pytest.fail("the claim was not woken: no wake-up crossed servers")
        assert task.task_id == "t1"
        assert task.assignee == "worker"
    finally:
        await adder.close()
        await worker.close()


async def test_an_added_task_wakes_one_waiting_claim_not_every_one(
    server, other_server, credentials, redis_client, namespace
):
    adder = AsyncClient(server.address, **credentials("lead"))
    workers = [AsyncClient(other_server.address, **credentials(f"worker-{n}")) for n in range(4)]
    claims = [
        asyncio.create_task(w.tasks.claim_task(task_types=["review"], wait=WAIT_S)) for w in workers
    ]
    try:
        await waiting(redis_client, namespace)
        before = evalsha_calls(redis_client)

        await adder.tasks.add_task(task_id="t1", task_type="review")
        done, pending = await asyncio.wait(
            claims, timeout=WITHIN_S, return_when=asyncio.FIRST_COMPLETED
        )

        assert [c.result().task_id for c in done] == ["t1"], "no claim was woken"
        # one AddTask script and one claim script: the other three waiters never asked Redis
        assert evalsha_calls(redis_client) - before == 2
        assert len(pending) == 3

        await adder.tasks.add_task(task_id="t2", task_type="other")  # wakes nobody
        await adder.tasks.add_task(task_id="t3", task_type="review")
        done, pending = await asyncio.wait(
            pending, timeout=WITHIN_S, return_when=asyncio.FIRST_COMPLETED
        )
        assert [c.result().task_id for c in done] == ["t3"]
    finally:
        for claim in claims:
            claim.cancel()
        await asyncio.gather(*claims, return_exceptions=True)
        await adder.close()
        for w in workers:
            await w.close()


async def test_a_claim_waiting_for_an_expired_lease_gets_the_task_when_it_runs_out(
    server, other_server, credentials, namespace
):
    dead = AsyncClient(server.address, **credentials("dead-worker"))
    worker = AsyncClient(other_server.address, **credentials("worker"))
    try:
        await dead.tasks.add_task(task_id="t1", task_type="review")
        assert await dead.tasks.claim_task(task_types=["review"], lease=1) is not None

        try:
            task = await asyncio.wait_for(
                worker.tasks.claim_task(task_types=["review"], wait=WAIT_S), WITHIN_S
            )
        except TimeoutError:
            pytest.fail("the claim did not look again when the lease ran out")
        assert task.task_id == "t1" and task.attempts == 2
    finally:
        await dead.close()
        await worker.close()


async def test_wake_ups_resume_after_the_subscriber_connection_is_killed(
    server, other_server, credentials, redis_client, namespace
):
    adder = AsyncClient(server.address, **credentials("lead"))
    worker = AsyncClient(other_server.address, **credentials("worker"))
    try:
        claim = asyncio.create_task(worker.tasks.claim_task(task_types=["review"], wait=WAIT_S))
        await waiting(redis_client, namespace)

        assert redis_client.client_kill_filter(_type="pubsub") >= 1
        await waiting(redis_client, namespace)  # resubscribed, the claim waits again
        await adder.tasks.add_task(task_id="t1", task_type="review")

        try:
            task = await asyncio.wait_for(claim, WITHIN_S)
        except TimeoutError:
            pytest.fail("no wake-up after the subscriber reconnected")
        assert task is not None and task.task_id == "t1"
    finally:
        await adder.close()
        await worker.close()
