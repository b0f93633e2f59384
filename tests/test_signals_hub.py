"""SignalHub on its own (no gRPC): the races between subscribing, trimming and the reader.

A real Redis; the hub runs on the test's loop so its state can be inspected and its steps
interleaved with sends deterministically.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from agentcoord_server.store.signal_fanout import Progress, SignalHub
from agentcoord_server.store.signals import SignalEntry, SignalStore
from redis.asyncio import Redis

from .support import async_redis

pytestmark = pytest.mark.every_backend


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[Redis]:
    client = async_redis(redis_url)
    yield client
    await client.aclose()


async def next_signal(entries: AsyncIterator[list[SignalEntry] | Progress]) -> SignalEntry:
    async def run() -> SignalEntry:
        async for item in entries:
            if not isinstance(item, Progress):
                return item[0]
        raise AssertionError("the subscription ended")

    return await asyncio.wait_for(run(), 10)


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_earliest_subscription_survives_a_trim_between_subscribing_and_catching_up(
    aredis, namespace
):
    # Under steady traffic every send trims whatever just aged out, so the oldest retained id
    # moves between the moment a subscription learns it and its first read.
    store = SignalStore(aredis, retention=1)
    hub = SignalHub(aredis, store, queue_size=16, shutdown=asyncio.Event())
    await store.send(namespace, "alice", "a", {})
    await asyncio.sleep(1.1)
    await store.send(namespace, "alice", "b", {})  # trims a

    async with hub.subscribe(namespace, "bob", [], after=None, earliest=True) as subscription:
        await asyncio.sleep(1.1)
        c, _ = await store.send(namespace, "alice", "c", {})  # trims b: the floor moved on
        first = await next_signal(subscription.entries())

    assert first.id == c.id
