"""TaskService on servers of its own: short TTLs, and long-poll claims during shutdown."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from agentcoord import AgentcoordError, AsyncClient, Client
from agentcoord_server.config import TtlPolicy

from .conftest import server_settings
from .support import ServerThread

pytestmark = pytest.mark.every_backend


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_registration_lapses_after_the_coordination_ttl_without_a_heartbeat(redis_url, namespace):
    handle = ServerThread(server_settings(redis_url, ttl=TtlPolicy(coordination=1))).start()
    try:
        token = handle.issue_token("short-lived", "CONTRIBUTOR", namespace)
        with Client(handle.address, token=token) as client:
            client.tasks.register_agent(["review"])
            assert [a.agent_id for a in client.tasks.list_agents().agents] == ["short-lived"]

            time.sleep(1.2)

            assert list(client.tasks.list_agents().agents) == []
            with pytest.raises(AgentcoordError) as caught:
                client.tasks.heartbeat()
            assert caught.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        handle.stop()


async def test_waiting_claim_ends_with_no_task_when_the_server_shuts_down(redis_url, namespace):
    handle = ServerThread(server_settings(redis_url)).start()
    stopping = None
    try:
        token = handle.issue_token("waiter", "CONTRIBUTOR", namespace)
        async with AsyncClient(handle.address, token=token) as client:
            waiting = asyncio.create_task(client.tasks.claim_task(task_types=["review"], wait=30))
            await asyncio.sleep(0.3)

            # With a 10 s grace, a claim that ignored the shutdown would be cut off with an
            # error when the grace ran out; an empty answer means it ended on its own.
            stopping = handle.begin_stop(grace=10.0)

            assert await asyncio.wait_for(waiting, 15) is None
            await asyncio.wrap_future(stopping)
    finally:
        if stopping is None:
            handle.stop()


async def test_waiting_claim_gets_a_task_added_through_another_server_process(
    server, redis_url, namespace
):
    other = ServerThread(server_settings(redis_url)).start()
    try:
        waiter_token = server.issue_token("waiter", "CONTRIBUTOR", namespace)
        adder_token = other.issue_token("adder", "CONTRIBUTOR", namespace)
        async with (
            AsyncClient(server.address, token=waiter_token) as waiter,
            AsyncClient(other.address, token=adder_token) as adder,
        ):
            waiting = asyncio.create_task(waiter.tasks.claim_task(task_types=["review"], wait=10))
            await asyncio.sleep(0.3)

            await adder.tasks.add_task(task_id="remote", task_type="review")

            task = await asyncio.wait_for(waiting, 5)
            assert task is not None and task.task_id == "remote"
    finally:
        other.stop()
