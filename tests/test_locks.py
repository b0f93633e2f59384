"""LockService: one holder at a time, fencing tokens that only grow, owner-only renew and
release, expiry, waits woken across server processes, deadlines, and the Python `lock()` helper.

The concurrency tests run two AgentcoordServer instances on one Redis, each on its own event
loop and thread (as two processes would be), with contenders split between them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from agentcoord import AgentcoordError, AsyncClient, ErrorReason
from agentcoord.v1 import locks_pb2, locks_pb2_grpc
from agentcoord_server.store import locks as lock_store

from .conftest import server_settings
from .support import ServerThread

pytestmark = pytest.mark.every_backend

WAIT_S = 20.0  # a waiting acquisition's long-poll; the safety re-check (30 s) never comes in it
WITHIN_S = 10.0
"""A waiter must get the lock well before its wait ends (at the end it looks once more)."""
CONTENDERS = 32


@pytest.fixture
def other_server(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    """A second server process on the same Redis. The safety re-check is pushed beyond every
    wait, so a waiter is only woken in time by a wake-up (or the holder's expiry timer)."""
    monkeypatch.setattr(lock_store, "RECHECK_SECONDS", 30.0)
    handle = ServerThread(server_settings(redis_url)).start()
    yield handle
    handle.stop()


def subscribers(redis_client: redis.Redis, channel: str) -> int:
    """Subscribers of `channel`; on a cluster summed over the nodes (PUBSUB NUMSUB counts only
    the node asked, and a server's subscription lives on the one node it connected to)."""
    if not isinstance(redis_client, redis.RedisCluster):
        return int(dict(redis_client.pubsub_numsub(channel)).get(channel, 0))
    total = 0
    for node in redis_client.get_nodes():
        with redis.Redis(host=node.host, port=node.port, decode_responses=True) as one:
            total += int(dict(one.pubsub_numsub(channel)).get(channel, 0))
    return total


async def subscribed(redis_client: redis.Redis, namespace: str) -> None:
    """Returns once a server process subscribed to the namespace's lock wake-ups."""
    channel = f"ac:{{{namespace}}}:locks:wake"
    for _ in range(1000):
        if subscribers(redis_client, channel) >= 1:
            return
        await asyncio.sleep(0.01)
    pytest.fail("no server subscribed to the namespace's lock wake-ups")


async def test_32_contenders_on_two_servers_hold_the_lock_one_at_a_time_with_growing_tokens(
    server, other_server, credentials, namespace
):
    clients = [
        AsyncClient(
            (server if n % 2 else other_server).address, **credentials(f"agent-{n:02d}")
        )
        for n in range(CONTENDERS)
    ]
    log: list[tuple[str, str, int]] = []  # (event, agent, fencing token), in order
    inside: list[str] = []

    async def contend(n: int, client: AsyncClient) -> None:
        agent = f"agent-{n:02d}"
        async with client.lock("shared", ttl=10, wait=60) as held:
            inside.append(agent)
            log.append(("enter", agent, held.fencing_token))
            holder = await client.locks.get_lock("shared")
            assert (holder.holder, holder.fencing_token) == (agent, held.fencing_token)
            await asyncio.sleep(0.005)
            log.append(("exit", agent, held.fencing_token))
            inside.remove(agent)

    try:
        await asyncio.gather(*(contend(n, c) for n, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()

    # Never two holders: every enter is followed by the same holder's exit before the next.
    assert [event for event, _, _ in log] == ["enter", "exit"] * CONTENDERS
    assert all(log[i][1:] == log[i + 1][1:] for i in range(0, len(log), 2))
    assert sorted(agent for event, agent, _ in log if event == "enter") == [
        f"agent-{n:02d}" for n in range(CONTENDERS)
    ]
    tokens = [token for event, _, token in log if event == "enter"]
    assert tokens == sorted(set(tokens)), "fencing tokens must strictly increase"


async def test_a_release_through_one_server_wakes_a_waiter_on_the_other(
    server, other_server, credentials, redis_client, namespace
):
    holder = AsyncClient(server.address, **credentials("holder"))
    waiter = AsyncClient(other_server.address, **credentials("waiter"))
    try:
        first = await holder.locks.acquire_lock("file-a", ttl=60)
        waiting = asyncio.create_task(waiter.locks.acquire_lock("file-a", ttl=60, wait=WAIT_S))
        await subscribed(redis_client, namespace)
        await asyncio.sleep(0.2)  # the waiter's attempt was refused and it sleeps

        await holder.locks.release_lock("file-a", first.fencing_token)

        try:
            second = await asyncio.wait_for(waiting, WITHIN_S)
        except TimeoutError:
            pytest.fail("the waiter was not woken: no wake-up crossed servers")
        assert second.holder == "waiter"
        assert second.fencing_token > first.fencing_token
    finally:
        await holder.close()
        await waiter.close()


async def test_an_expired_lock_is_free_and_wakes_a_waiter_at_the_holders_expiry(
    server, other_server, credentials
):
    dead = AsyncClient(server.address, **credentials("dead-holder"))
    waiter = AsyncClient(other_server.address, **credentials("waiter"))
    try:
        first = await dead.locks.acquire_lock("file-a", ttl=1)

        try:
            second = await asyncio.wait_for(
                waiter.locks.acquire_lock("file-a", ttl=30, wait=WAIT_S), WITHIN_S
            )
        except TimeoutError:
            pytest.fail("the waiter did not look again when the holder's TTL ran out")
        assert second.holder == "waiter"
        assert second.fencing_token > first.fencing_token

        with pytest.raises(AgentcoordError) as caught:
            await dead.locks.renew_lock("file-a", first.fencing_token)
        assert caught.value.reason == ErrorReason.LOCK_NOT_HELD
    finally:
        await dead.close()
        await waiter.close()


def test_fencing_tokens_keep_growing_after_release_and_expiry(make_client, redis_client, namespace):
    client = make_client("agent-1")
    first = client.locks.acquire_lock("file-a", ttl=5)
    client.locks.release_lock("file-a", first.fencing_token)
    # The lock's key is gone; the namespace's counter is what keeps tokens growing.
    assert redis_client.exists(f"ac:{{{namespace}}}:locks:l:file-a") == 0
    second = client.locks.acquire_lock("file-a", ttl=5)
    other = client.locks.acquire_lock("file-b", ttl=5)
    redis_client.delete(f"ac:{{{namespace}}}:locks:l:file-a")  # as if it had expired
    third = client.locks.acquire_lock("file-a", ttl=5)

    assert first.fencing_token < second.fencing_token < other.fencing_token < third.fencing_token


def test_a_held_lock_refuses_a_no_wait_acquire_even_by_its_holder(make_client):
    holder, other = make_client("holder"), make_client("other")
    lock = holder.locks.acquire_lock("file-a", ttl=30)

    for client in (other, holder):
        with pytest.raises(AgentcoordError) as caught:
            client.locks.acquire_lock("file-a", ttl=30)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.reason == ErrorReason.LOCK_HELD
        assert caught.value.metadata["holder"] == "holder"
        assert caught.value.metadata["expire_time"].startswith(
            lock.expire_time.ToDatetime().strftime("%Y-%m-%dT%H:%M")
        )
    assert holder.locks.get_lock("file-a").fencing_token == lock.fencing_token


def test_only_the_holder_with_its_token_renews_or_releases(make_client):
    holder, other = make_client("holder"), make_client("other")
    lock = holder.locks.acquire_lock("file-a", ttl=30)

    refused = []
    for call in (
        lambda: other.locks.renew_lock("file-a", lock.fencing_token),
        lambda: other.locks.release_lock("file-a", lock.fencing_token),
        lambda: holder.locks.renew_lock("file-a", lock.fencing_token + 1),
        lambda: holder.locks.release_lock("file-a", lock.fencing_token + 1),
        lambda: holder.locks.renew_lock("file-b", lock.fencing_token),
    ):
        with pytest.raises(AgentcoordError) as caught:
            call()
        refused.append((caught.value.code, caught.value.reason))

    assert refused == [(grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.LOCK_NOT_HELD)] * 5
    assert holder.locks.get_lock("file-a").holder == "holder"
    renewed = holder.locks.renew_lock("file-a", lock.fencing_token, ttl=60)
    assert renewed.fencing_token == lock.fencing_token
    assert renewed.expire_time.ToMilliseconds() > lock.expire_time.ToMilliseconds()
    released = holder.locks.release_lock("file-a", lock.fencing_token)
    assert released.holder == "holder"
    with pytest.raises(AgentcoordError) as caught:
        holder.locks.release_lock("file-a", lock.fencing_token)  # again: no longer held
    assert caught.value.reason == ErrorReason.LOCK_NOT_HELD


def test_get_lock_tells_holder_times_and_token_and_not_found_when_free(make_client):
    holder, observer = make_client("holder"), make_client("watcher", "OBSERVER")
    with pytest.raises(AgentcoordError) as caught:
        observer.locks.get_lock("file-a")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == ErrorReason.LOCK_NOT_FOUND

    lock = holder.locks.acquire_lock("file-a", ttl=30)
    seen = observer.locks.get_lock("file-a")

    assert seen == lock
    assert seen.holder == "holder" and seen.lock_id == "file-a"
    span = seen.expire_time.ToMilliseconds() - seen.acquire_time.ToMilliseconds()
    assert span == 30_000


def test_a_steward_force_releases_and_the_old_holder_is_fenced_out(make_client):
    holder, steward = make_client("holder"), make_client("boss", "STEWARD")
    validator = make_client("checker", "VALIDATOR")
    lock = holder.locks.acquire_lock("file-a", ttl=300)

    with pytest.raises(AgentcoordError) as caught:
        validator.locks.release_lock("file-a", force=True)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == ErrorReason.TIER_TOO_LOW
    assert holder.locks.get_lock("file-a").holder == "holder"

    released = steward.locks.release_lock("file-a", force=True)
    assert released.holder == "holder"
    with pytest.raises(AgentcoordError) as caught:
        holder.locks.renew_lock("file-a", lock.fencing_token)
    assert caught.value.reason == ErrorReason.LOCK_NOT_HELD
    with pytest.raises(AgentcoordError) as caught:
        steward.locks.release_lock("file-a", force=True)
    assert caught.value.reason == ErrorReason.LOCK_NOT_FOUND
    assert validator.locks.acquire_lock("file-a").fencing_token > lock.fencing_token


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (locks_pb2.AcquireLockRequest(lock_id="a:b"), "lock_id"),
        (locks_pb2.AcquireLockRequest(lock_id=""), "lock_id"),
        (locks_pb2.AcquireLockRequest(lock_id="x" * 129), "lock_id"),
        (locks_pb2.AcquireLockRequest(lock_id="a", ttl={"nanos": 999_000_000}), "ttl"),
        (locks_pb2.AcquireLockRequest(lock_id="a", ttl={"seconds": 3601}), "ttl"),
        (locks_pb2.AcquireLockRequest(lock_id="a", wait={"seconds": 61}), "wait"),
        (locks_pb2.AcquireLockRequest(lock_id="a", wait={"seconds": -1}), "wait"),
        (locks_pb2.RenewLockRequest(lock_id="a", fencing_token=0), "fencing_token"),
        (locks_pb2.RenewLockRequest(lock_id="a", fencing_token=1, ttl={"seconds": 0}), "ttl"),
        (locks_pb2.ReleaseLockRequest(lock_id="a", fencing_token=-3), "fencing_token"),
        (locks_pb2.ReleaseLockRequest(lock_id="a*", fencing_token=1), "lock_id"),
        (locks_pb2.GetLockRequest(lock_id="a b"), "lock_id"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_bad_requests_are_invalid_argument_naming_the_field(
    server, credentials, redis_client, namespace, request_, field
):
    stub = locks_pb2_grpc.LockServiceStub(grpc.insecure_channel(server.address))
    method = getattr(stub, type(request_).__name__.removesuffix("Request"))
    token = credentials("agent-1")["token"]

    with pytest.raises(grpc.RpcError) as caught:
        method(request_, metadata=[("authorization", f"Bearer {token}")], timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:")
    assert list(redis_client.scan_iter(match=f"ac:{{{namespace}}}:locks:*")) == []


def test_a_waiting_acquire_ends_before_the_calls_deadline_and_takes_nothing(
    server, credentials, make_client
):
    holder = make_client("holder")
    lock = holder.locks.acquire_lock("file-a", ttl=30)
    token = credentials("impatient")["token"]
    stub = locks_pb2_grpc.LockServiceStub(grpc.insecure_channel(server.address))
    request = locks_pb2.AcquireLockRequest(lock_id="file-a", wait={"seconds": 20})

    with pytest.raises(grpc.RpcError) as caught:
        stub.AcquireLock(request, metadata=[("authorization", f"Bearer {token}")], timeout=1.5)

    # The server answered within the deadline (not DEADLINE_EXCEEDED): the call is over, so
    # it can no longer acquire the lock once the holder lets go.
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    holder.locks.release_lock("file-a", lock.fencing_token)
    with pytest.raises(AgentcoordError) as free:
        holder.locks.get_lock("file-a")
    assert free.value.reason == ErrorReason.LOCK_NOT_FOUND


def test_a_wait_that_runs_out_is_lock_held(make_client):
    holder, other = make_client("holder"), make_client("other")
    holder.locks.acquire_lock("file-a", ttl=30)

    with pytest.raises(AgentcoordError) as caught:
        other.locks.acquire_lock("file-a", wait=0.5)

    assert caught.value.reason == ErrorReason.LOCK_HELD
    assert caught.value.metadata["holder"] == "holder"


async def test_lock_context_manager_renews_and_releases(make_aclient):
    client = make_aclient("agent-1")
    async with client.lock("file-a", ttl=1.2) as held:
        first = held.lock
        await asyncio.sleep(2.0)  # beyond the TTL: only the background renewals keep it
        assert (await client.locks.get_lock("file-a")).fencing_token == held.fencing_token
        assert not held.lost
    assert first is not None and held.lock.expire_time.ToMilliseconds() > (
        first.expire_time.ToMilliseconds()
    )
    with pytest.raises(AgentcoordError) as caught:
        await client.locks.get_lock("file-a")
    assert caught.value.reason == ErrorReason.LOCK_NOT_FOUND


async def test_a_lost_lock_cancels_the_block_which_ends_with_lock_not_held(make_aclient):
    client, steward = make_aclient("agent-1"), make_aclient("boss", "STEWARD")
    reached_end = False
    with pytest.raises(AgentcoordError) as caught:
        async with client.lock("file-a", ttl=1.5) as held:
            await steward.locks.release_lock("file-a", force=True)
            await asyncio.sleep(10)  # cancelled at the next renewal (ttl/3 = 0.5 s)
            reached_end = True

    assert caught.value.reason == ErrorReason.LOCK_NOT_HELD
    assert held.lost and not reached_end
    assert asyncio.current_task().cancelling() == 0  # the keeper's cancellation was taken back


def test_sync_lock_raises_the_loss_at_the_end_of_the_block(make_client):
    client, steward = make_client("agent-1"), make_client("boss", "STEWARD")
    with client.lock("file-a", ttl=1.5) as held:
        assert client.locks.get_lock("file-a").holder == "agent-1"
    assert not held.lost

    with pytest.raises(AgentcoordError) as caught:
        with client.lock("file-a", ttl=1.5) as held:
            steward.locks.release_lock("file-a", force=True)
            for _ in range(100):
                if held.lost:
                    break
                time.sleep(0.05)
    assert caught.value.reason == ErrorReason.LOCK_NOT_HELD
    assert held.lost


def test_lock_context_manager_waits_for_its_turn_and_gives_up_after_wait(make_client):
    holder, other = make_client("holder"), make_client("other")
    lock = holder.locks.acquire_lock("file-a", ttl=30)

    with pytest.raises(AgentcoordError) as caught:
        with other.lock("file-a", wait=0.3):
            pytest.fail("entered a held lock")
    assert caught.value.reason == ErrorReason.LOCK_HELD
    holder.locks.release_lock("file-a", lock.fencing_token)
    with other.lock("file-a", wait=0.3) as held:
        assert held.fencing_token > lock.fencing_token


def evalsha_calls(redis_client: redis.Redis) -> int:
    return int(redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def waiting(redis_client: redis.Redis, namespace: str) -> None:
    """Returns once the waiters sleep: a server subscribed to the namespace's lock wake-ups
    and no script ran for 0.3 s (each attempt was refused and its waiter sleeps)."""
    await subscribed(redis_client, namespace)
    calls = -1
    for _ in range(100):
        now = evalsha_calls(redis_client)
        if now == calls:
            return
        calls = now
        await asyncio.sleep(0.3)
    pytest.fail("the waiters never settled into waiting")


@pytest.mark.standalone_only  # counts a node's EVALSHA calls
async def test_a_release_wakes_one_waiter_not_every_one(
    server, other_server, credentials, redis_client, namespace
):
    holder = AsyncClient(server.address, **credentials("holder"))
    waiters = [AsyncClient(other_server.address, **credentials(f"waiter-{n}")) for n in range(4)]
    lock = await holder.locks.acquire_lock("file-a", ttl=60)
    attempts = [
        asyncio.create_task(w.locks.acquire_lock("file-a", ttl=60, wait=WAIT_S)) for w in waiters
    ]
    try:
        await waiting(redis_client, namespace)
        before = evalsha_calls(redis_client)

        await holder.locks.release_lock("file-a", lock.fencing_token)
        done, pending = await asyncio.wait(
            attempts, timeout=WITHIN_S, return_when=asyncio.FIRST_COMPLETED
        )

        assert len(done) == 1, "no waiter was woken"
        assert done.pop().result().fencing_token > lock.fencing_token
        # the release script and one acquisition: the other three waiters never asked Redis
        assert evalsha_calls(redis_client) - before == 2
        assert len(pending) == 3
    finally:
        for attempt in attempts:
            attempt.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)
        await holder.close()
        for w in waiters:
            await w.close()


async def test_a_waiting_acquire_ends_unavailable_when_the_server_shuts_down(
    server, redis_url, credentials, namespace
):
    handle = ServerThread(server_settings(redis_url)).start()
    stopping = None
    holder = AsyncClient(server.address, **credentials("holder"))
    try:
        await holder.locks.acquire_lock("file-a", ttl=60)
        token = handle.issue_token("waiter", "CONTRIBUTOR", namespace)
        async with AsyncClient(handle.address, token=token) as client:
            attempt = asyncio.create_task(client.locks.acquire_lock("file-a", wait=30))
            await asyncio.sleep(0.3)

            # With a 10 s grace, an acquisition that ignored the shutdown would be cut off when
            # the grace ran out; SERVER_SHUTTING_DOWN means it ended on its own, retryable.
            stopping = handle.begin_stop(grace=10.0)

            with pytest.raises(AgentcoordError) as caught:
                await asyncio.wait_for(attempt, 15)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert caught.value.reason == ErrorReason.SERVER_SHUTTING_DOWN
            await asyncio.wrap_future(stopping)
        assert (await holder.locks.get_lock("file-a")).holder == "holder"
    finally:
        await holder.close()
        if stopping is None:
            handle.stop()


@pytest.mark.standalone_only  # client logic: waits out a TTL, once is enough
async def test_a_lock_whose_renewals_fail_past_its_ttl_is_lost_on_the_client(
    redis_url, namespace
):
    """The server is stopped while a block holds a lock: no renewal can succeed, so once the
    TTL has passed the client gives the lock up (another agent may hold it by then) and the
    block ends with LOCK_NOT_HELD instead of running on unprotected."""
    handle = ServerThread(server_settings(redis_url)).start()
    stopped = False
    try:
        token = handle.issue_token("holder", "CONTRIBUTOR", namespace)
        async with AsyncClient(handle.address, token=token, timeout=0.5) as client:
            with pytest.raises(AgentcoordError) as caught:
                async with client.lock("file-a", ttl=1.5) as held:
                    await asyncio.to_thread(handle.stop)
                    stopped = True
                    await asyncio.sleep(15)
        assert caught.value.reason == ErrorReason.LOCK_NOT_HELD
        assert held.lost
    finally:
        if not stopped:
            handle.stop()
