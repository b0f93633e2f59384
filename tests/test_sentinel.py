"""agentcoord behind Sentinel: one primary, one replica, one Sentinel; the primary is SIGKILLed
and agentcoord follows the promoted replica without a restart,
for calls and for an open Subscribe."""

from __future__ import annotations

import asyncio

import pytest
from agentcoord import AgentcoordError, AsyncClient
from agentcoord.v1 import admin_pb2

from .conftest import server_settings
from .redis_topologies import LocalSentinel
from .support import ServerThread
from .test_signals_stream import wait_for_state


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):  # type: ignore[no-untyped-def]
    watched = LocalSentinel(tmp_path_factory.mktemp("sentinel")).start()
    yield watched
    watched.stop()


async def _until_ok(call, timeout: float = 30):  # type: ignore[no-untyped-def]
    """Retries `call()` while it fails UNAVAILABLE; returns its result and the failures seen."""
    failures: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await call(), failures
            except AgentcoordError as error:
                if error.code.name != "UNAVAILABLE":
                    raise
                failures.append(error.code.name)
                await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
async def test_server_behind_sentinel_follows_a_failover_without_restarting(sentinel, namespace):
    server = ServerThread(server_settings(sentinel.url)).start()
    try:
        steward = AsyncClient(server.address, token=server.issue_token("s", "STEWARD", namespace))
        stats = await steward.admin.get_server_stats()
        await steward.memory.stash("before", {"v": 1})
        first = await steward.signals.send_signal("before")
        stream = steward.signals.subscribe(after_id=first.id, max_retries=10)
        receiving = asyncio.ensure_future(anext(stream))
        # The subscription is open, its reader blocked on the old primary.
        await wait_for_state(
            server, namespace, lambda s: s["subscribers"] == 1 and bool(s["readers"])
        )
        old = sentinel.master_port()
        # Replication is asynchronous: what this test checks is that the server follows the
        # failover, so the data written so far is on the replica before the primary dies.
        sentinel.wait_replicated()

        sentinel.kill(old)
        _, failures = await _until_ok(lambda: steward.memory.stash("after", {"v": 2}))
        promoted = sentinel.master_port()
        second, _ = await _until_ok(lambda: steward.signals.send_signal("after"))
        async with asyncio.timeout(30):
            resumed = await receiving
        await stream.aclose()  # type: ignore[attr-defined]
        found = await steward.memory.batch_retrieve(["before", "after"])
        await steward.close()
    finally:
        server.stop()

    assert stats.redis_mode == admin_pb2.REDIS_MODE_EXTERNAL and not stats.redis_nodes
    assert promoted == sentinel.replica != old
    assert failures  # the primary was really gone for a while
    assert found == {"before": {"v": 1}, "after": {"v": 2}}
    assert resumed.id == second.id  # the open Subscribe resumed on the promoted replica
