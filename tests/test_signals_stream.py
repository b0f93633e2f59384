"""SignalService, streamed: Subscribe with catch-up, live fan-out, resume, limits and cleanup.

Real servers, real Redis, real gRPC streams. The server-side state (readers, subscriptions) is
read on the server's own loop through `hub_for(handle.server.ctx)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from agentcoord import AgentcoordError, AsyncClient
from agentcoord.v1 import access_pb2, signals_pb2, signals_pb2_grpc
from agentcoord_server.config import TtlPolicy
from agentcoord_server.services.signals import hub_for
from agentcoord_server.store.tokens import TokenStore

from .conftest import server_settings
from .support import ServerThread

pytestmark = pytest.mark.every_backend

TIMEOUT = 20.0


async def take(stream: AsyncIterator[Any], count: int, timeout: float = TIMEOUT) -> list[Any]:
    """The next `count` items of `stream` (fails the test after `timeout` seconds)."""

    async def run() -> list[Any]:
        got: list[Any] = []
        async for item in stream:
            got.append(item)
            if len(got) == count:
                break
        return got

    return await asyncio.wait_for(run(), timeout)


def hub_state(handle: ServerThread, namespace: str) -> dict[str, Any]:
    """Read on the server's loop: subscriber count of `namespace`, every running reader task,
    and the namespace's subscriptions."""

    async def read() -> dict[str, Any]:
        hub = hub_for(handle.server.ctx)
        return {
            "subscribers": hub.stats().get(namespace, 0),
            "readers": [t for t in hub.reader_tasks() if t.get_name().endswith(f":{namespace}")],
            "subscriptions": hub.subscriptions(namespace),
        }

    return handle.run(read())


async def wait_for_state(
    handle: ServerThread,
    namespace: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = await asyncio.to_thread(hub_state, handle, namespace)
        if check(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"server state never matched: {state}")
        await asyncio.sleep(0.02)


def reader_connection(redis_client, namespace: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one Redis connection of this namespace's signal reader, once it has connected (the
    reader opens it in the background, so it may lag the first signal a catch-up delivered)."""
    deadline = time.monotonic() + timeout
    while True:
        named = [
            c for c in redis_client.client_list() if c.get("name") == f"agentcoord-signals:{namespace}"
        ]
        if len(named) == 1:
            return named[0]
        assert time.monotonic() < deadline, f"reader connections: {named}"
        time.sleep(0.02)


def reader_connections(redis_client, namespace: str) -> int:
    """Redis connections named for this namespace's signal reader (CLIENT LIST)."""
    return sum(
        1 for c in redis_client.client_list() if c.get("name") == f"agentcoord-signals:{namespace}"
    )


async def test_subscription_delivers_stored_then_live_signals_in_order(make_aclient):
    alice, bob = make_aclient("alice"), make_aclient("bob")
    anchor = await alice.signals.send_signal("start")
    stored = [(await alice.signals.send_signal("step", {"n": i})).id for i in range(3)]
    stream = bob.signals.subscribe(after_id=anchor.id)

    first = await take(stream, 3)
    live = [(await alice.signals.send_signal("step", {"n": i})).id for i in range(3, 6)]
    rest = await take(stream, 3)
    await stream.aclose()

    assert [s.id for s in first] == stored
    assert [s.id for s in rest] == live
    assert [s.data["n"] for s in first + rest] == [0, 1, 2, 3, 4, 5]


async def test_subscription_from_latest_skips_what_was_sent_before(make_aclient):
    alice, bob = make_aclient("alice"), make_aclient("bob")
    await alice.signals.send_signal("old")
    stream = bob.signals.subscribe()
    pending = asyncio.ensure_future(take(stream, 1))
    await asyncio.sleep(0.3)  # let the subscription start before the next signal
    new = await alice.signals.send_signal("new")

    assert [s.id for s in await pending] == [new.id]
    await stream.aclose()


async def test_subscription_from_earliest_starts_with_the_oldest_retained(make_aclient):
    alice, bob = make_aclient("alice"), make_aclient("bob")
    sent = [(await alice.signals.send_signal("x")).id for _ in range(3)]
    stream = bob.signals.subscribe(earliest=True)

    assert [s.id for s in await take(stream, 3)] == sent
    await stream.aclose()


async def test_live_stream_keeps_targeted_signals_private_and_filters_every_kind(
    make_aclient,
):
    alice, bob, carol = make_aclient("alice"), make_aclient("bob"), make_aclient("carol")
    await alice.memory.create_session("review")
    await bob.memory.join_session("review")
    anchor = await alice.signals.send_signal("start")
    carol_all = carol.signals.subscribe(after_id=anchor.id)
    carol_done = carol.signals.subscribe(["done"], after_id=anchor.id)
    await alice.signals.send_signal("done", target_agent="bob")
    await alice.signals.send_signal("done", session_id="review")
    await alice.signals.send_signal("noise")
    await alice.signals.send_signal("noise", target_agent="carol")
    to_carol = await alice.signals.send_signal("done", target_agent="carol")
    last = await alice.signals.send_signal("done")

    everything = await take(carol_all, 3)
    only_done = await take(carol_done, 2)
    await carol_all.aclose()
    await carol_done.aclose()

    assert [(s.signal_type, s.target_agent) for s in everything] == [
        ("noise", ""),
        ("noise", "carol"),
        ("done", "carol"),
    ]
    assert [s.id for s in only_done] == [to_carol.id, last.id]


async def test_resume_across_a_server_restart_loses_nothing_and_repeats_nothing(
    redis_url, credentials
):
    first = ServerThread(server_settings(redis_url)).start()
    try:
        alice = AsyncClient(first.address, **credentials("alice"))
        bob = AsyncClient(first.address, **credentials("bob"))
        anchor = await alice.signals.send_signal("start")
        stream = bob.signals.subscribe(after_id=anchor.id, max_retries=0)
        sent = [(await alice.signals.send_signal("step", {"n": i})).id for i in range(5)]
        seen = [s.id for s in await take(stream, 3)]
        await asyncio.to_thread(first.stop)
        with pytest.raises(AgentcoordError) as caught:
            async for signal in stream:  # whatever was already on the wire, then the status
                seen.append(signal.id)
        await alice.close()
        await bob.close()
    finally:
        first.stop()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE

    second = ServerThread(server_settings(redis_url)).start()
    try:
        async with (
            AsyncClient(second.address, **credentials("alice")) as alice,
            AsyncClient(second.address, **credentials("bob")) as bob,
        ):
            sent += [(await alice.signals.send_signal("step", {"n": i})).id for i in range(5, 8)]
            resumed = bob.signals.subscribe(after_id=seen[-1])
            seen += [s.id for s in await take(resumed, len(sent) - len(seen))]
            extra = await alice.signals.send_signal("end")
            tail = await take(resumed, 1)
            await resumed.aclose()
    finally:
        second.stop()

    assert seen == sent
    assert [s.id for s in tail] == [extra.id]


async def test_200_concurrent_subscribers_each_receive_every_broadcast_through_one_reader(
    server, make_aclient, namespace_redis, namespace
):
    sender = make_aclient("alice")
    listeners = [make_aclient(f"agent-{i}", tier="OBSERVER") for i in range(10)]
    anchor = await sender.signals.send_signal("start")
    streams = [
        listeners[i % 10].signals.subscribe(["news"], after_id=anchor.id) for i in range(200)
    ]
    count = 20
    receivers = [asyncio.ensure_future(take(s, count, timeout=60)) for s in streams]

    state = await wait_for_state(server, namespace, lambda s: s["subscribers"] == 200)
    assert len(state["readers"]) == 1
    assert reader_connections(namespace_redis, namespace) == 1
    sent = [(await sender.signals.send_signal("news", {"n": i})).id for i in range(count)]
    results = await asyncio.gather(*receivers)
    for stream in streams:
        await stream.aclose()

    assert all([s.id for s in got] == sent for got in results)


def stream_watchdogs(handle: ServerThread) -> set[asyncio.Task[Any]]:
    """The running tasks on the server's loop re-checking an open stream's token (one per
    stream)."""

    async def find() -> set[asyncio.Task[Any]]:
        return {
            task
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "").endswith("Identity._watch")
        }

    return handle.run(find())


async def test_cancelled_streams_leave_no_subscriber_reader_or_connection_behind(
    server, make_aclient, namespace_redis, namespace
):
    alice, bob = make_aclient("alice"), make_aclient("bob")
    watchdogs_before = await asyncio.to_thread(stream_watchdogs, server)
    anchor = await alice.signals.send_signal("start")
    one = bob.signals.subscribe(after_id=anchor.id)
    two = bob.signals.subscribe(after_id=anchor.id)
    await alice.signals.send_signal("x")
    await take(one, 1)
    await take(two, 1)
    running = await wait_for_state(server, namespace, lambda s: s["subscribers"] == 2)
    watchdogs_running = await asyncio.to_thread(stream_watchdogs, server)
    reader = running["readers"][0]

    await one.aclose()
    half = await wait_for_state(server, namespace, lambda s: s["subscribers"] == 1)
    await two.aclose()
    await wait_for_state(server, namespace, lambda s: s["subscribers"] == 0 and not s["readers"])
    for _ in range(250):  # the reader's connection closes just after its task ends
        if reader.done() and not reader_connections(namespace_redis, namespace):
            break
        await asyncio.sleep(0.02)

    ours = watchdogs_running - watchdogs_before
    for _ in range(250):
        if all(task.done() for task in ours):
            break
        await asyncio.sleep(0.02)

    assert half["readers"] == [reader]
    assert reader.done()
    assert reader_connections(namespace_redis, namespace) == 0
    assert len(ours) == 2
    assert all(task.done() for task in ours)


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_subscribing_after_a_trimmed_cursor_is_out_of_range(redis_url, credentials):
    handle = ServerThread(server_settings(redis_url, ttl=TtlPolicy(coordination=1))).start()
    try:
        async with AsyncClient(handle.address, **credentials("alice")) as alice:
            s0 = await alice.signals.send_signal("old")
            await alice.signals.send_signal("old")
            await asyncio.sleep(1.1)
            s2 = await alice.signals.send_signal("new")
            with pytest.raises(AgentcoordError) as caught:
                await take(alice.signals.subscribe(after_id=s0.id), 1)
            earliest = alice.signals.subscribe(earliest=True)
            retained = await take(earliest, 1)
            await earliest.aclose()
    finally:
        handle.stop()

    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert caught.value.reason == "CURSOR_TRIMMED"
    assert [s.id for s in retained] == [s2.id]


@pytest.fixture
def small_queue_server(redis_url):
    handle = ServerThread(server_settings(redis_url, signal_queue_size=4)).start()
    yield handle
    handle.stop()


async def flood_a_stalled_subscriber(
    handle: ServerThread, credentials, namespace: str, **subscribe
):
    """bob subscribes and stops reading; alice sends signals of 128 KiB until the transport's
    buffers are full and bob's server-side buffer (4) overflows. Returns (stream, sent ids, bob)."""
    alice = AsyncClient(handle.address, **credentials("alice"))
    bob = AsyncClient(handle.address, **credentials("bob"))
    anchor = await alice.signals.send_signal("start")
    stream = bob.signals.subscribe(after_id=anchor.id, **subscribe)
    ready = await alice.signals.send_signal("ready")
    assert [s.id for s in await take(stream, 1)] == [ready.id]
    blob = "x" * 131_072
    sent = [ready.id]

    def overflowed(state: dict[str, Any]) -> bool:
        return any(sub.error is not None for sub in state["subscriptions"])

    for i in range(400):
        sent.append((await alice.signals.send_signal("big", {"n": i, "blob": blob})).id)
        if i % 20 == 19 and overflowed(await asyncio.to_thread(hub_state, handle, namespace)):
            break
    await wait_for_state(handle, namespace, overflowed)
    await alice.close()
    return stream, sent, bob


async def test_a_subscriber_that_falls_behind_ends_with_resource_exhausted(
    small_queue_server, credentials, namespace
):
    stream, sent, bob = await flood_a_stalled_subscriber(
        small_queue_server, credentials, namespace, max_retries=0
    )
    got = [sent[0]]
    with pytest.raises(AgentcoordError) as caught:
        async for signal in stream:
            got.append(signal.id)
    await bob.close()

    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason == "SUBSCRIBER_TOO_SLOW"
    assert got == sent[: len(got)] and len(got) < len(sent)


async def test_the_client_resumes_after_falling_behind_without_loss_or_duplicate(
    small_queue_server, credentials, namespace
):
    stream, sent, bob = await flood_a_stalled_subscriber(small_queue_server, credentials, namespace)
    got = [sent[0]] + [s.id for s in await take(stream, len(sent) - 1)]
    await stream.aclose()
    await bob.close()

    assert got == sent


async def test_streams_end_unavailable_when_the_server_shuts_down(redis_url, credentials):
    handle = ServerThread(server_settings(redis_url, shutdown_grace=5.0)).start()
    stopping = None
    try:
        alice = AsyncClient(handle.address, **credentials("alice"))
        anchor = await alice.signals.send_signal("start")
        stream = alice.signals.subscribe(after_id=anchor.id, max_retries=0)
        await alice.signals.send_signal("x")
        await take(stream, 1)
        started = time.monotonic()
        stopping = handle.begin_stop(grace=5.0)
        with pytest.raises(AgentcoordError) as caught:
            await take(stream, 1)
        ended_after = time.monotonic() - started
        await asyncio.wrap_future(stopping)
        await alice.close()
    finally:
        if stopping is None:
            handle.stop()
        else:  # its loop may be closing already: wait for the thread instead of stopping twice
            await asyncio.to_thread(handle._finished.wait, 10)

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "SERVER_SHUTTING_DOWN"
    assert ended_after < 5.0, "the stream waited out the grace period instead of ending"


def test_sync_subscribe_is_an_iterator_over_stored_and_live_signals(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    anchor = alice.signals.send_signal("start")
    stored = alice.signals.send_signal("a")
    stream = bob.signals.subscribe(after_id=anchor.id)

    first = next(stream)
    live = alice.signals.send_signal("b")
    second = next(stream)
    stream.close()

    assert (first.id, second.id) == (stored.id, live.id)


@pytest.mark.parametrize("cursor", ["not-a-cursor", "99999999999999999999-0"])
def test_bad_subscribe_is_invalid_argument(make_client, cursor):
    bob = make_client("bob")
    with pytest.raises(AgentcoordError) as caught:
        next(bob.signals.subscribe(after_id=cursor))

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == ["after_id"]


async def test_a_long_catch_up_does_not_fill_the_live_buffer(small_queue_server, credentials):
    """While bob is still reading stored signals (transport full), new ones must not pile up in
    his 4-signal server buffer: they are read from Redis when the catch-up reaches them."""
    async with (
        AsyncClient(small_queue_server.address, **credentials("alice")) as alice,
        AsyncClient(small_queue_server.address, **credentials("bob")) as bob,
    ):
        anchor = await alice.signals.send_signal("start")
        blob = "x" * 131_072
        sent = [
            (await alice.signals.send_signal("big", {"n": i, "blob": blob})).id for i in range(60)
        ]
        stream = bob.signals.subscribe(after_id=anchor.id, max_retries=0)
        got = [s.id for s in await take(stream, 1)]
        await asyncio.sleep(0.3)  # bob's server-side catch-up is now blocked on the transport
        sent += [(await alice.signals.send_signal("small", {"n": i})).id for i in range(10)]
        got += [s.id for s in await take(stream, len(sent) - 1)]
        await stream.aclose()

    assert got == sent


async def test_losing_the_readers_redis_connection_loses_no_signal(
    server, make_aclient, namespace_redis, namespace
):
    alice, bob = make_aclient("alice"), make_aclient("bob")
    anchor = await alice.signals.send_signal("start")
    stream = bob.signals.subscribe(after_id=anchor.id, backoff=0.05)
    sent = [(await alice.signals.send_signal("x")).id]
    got = [s.id for s in await take(stream, 1)]
    await wait_for_state(server, namespace, lambda s: s["subscribers"] == 1)
    reader = await asyncio.to_thread(reader_connection, namespace_redis, namespace)

    namespace_redis.execute_command("CLIENT", "KILL", "ID", reader["id"])
    sent += [(await alice.signals.send_signal("x")).id for _ in range(3)]
    got += [s.id for s in await take(stream, 3)]
    resumed = await wait_for_state(
        server,
        namespace,
        lambda s: s["subscribers"] == 1 and all(not task.done() for task in s["readers"]),
    )
    replacement = await asyncio.to_thread(reader_connection, namespace_redis, namespace)
    await stream.aclose()
    await wait_for_state(server, namespace, lambda s: not s["readers"])

    assert got == sent
    # The failed reader left; the resumed subscription has one reader with one connection.
    assert len(resumed["readers"]) == 1 and replacement["id"] != reader["id"]


async def test_concurrent_senders_are_seen_in_one_order_by_every_reader(make_aclient):
    senders = [make_aclient(f"sender-{i}") for i in range(10)]
    watchers = [make_aclient(f"watcher-{i}", tier="OBSERVER") for i in range(3)]
    anchor = await senders[0].signals.send_signal("start")
    streams = [w.signals.subscribe(after_id=anchor.id) for w in watchers]
    receiving = [asyncio.ensure_future(take(s, 200)) for s in streams]

    async def send_all(client: AsyncClient) -> list[str]:
        return [(await client.signals.send_signal("burst")).id for _ in range(20)]

    sent = {i for ids in await asyncio.gather(*(send_all(c) for c in senders)) for i in ids}
    seen = [[s.id for s in got] for got in await asyncio.gather(*receiving)]
    for stream in streams:
        await stream.aclose()
    page = await watchers[0].signals.receive_signals(after_id=anchor.id, limit=1000)
    polled = [s.id for s in page.signals]

    keys = [tuple(int(p) for p in i.split("-")) for i in polled]
    assert set(polled) == sent and len(polled) == 200
    assert keys == sorted(keys)
    assert all(order == polled for order in seen)


def test_sync_subscribe_resumes_by_itself_when_the_server_ends_the_stream(
    server, make_client, namespace_redis, namespace
):
    alice, bob = make_client("alice"), make_client("bob")
    anchor = alice.signals.send_signal("start")
    stream = bob.signals.subscribe(after_id=anchor.id, backoff=0.05)
    sent = [alice.signals.send_signal("x").id]
    got = [next(stream).id]
    reader = reader_connection(namespace_redis, namespace)

    namespace_redis.execute_command("CLIENT", "KILL", "ID", reader["id"])  # stream ends UNAVAILABLE
    sent += [alice.signals.send_signal("x").id for _ in range(3)]
    got += [next(stream).id for _ in range(3)]
    stream.close()

    assert got == sent


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_a_filtered_subscriber_is_told_its_progress_so_its_cursor_stays_resumable(
    redis_url, credentials
):
    handle = ServerThread(server_settings(redis_url, ttl=TtlPolicy(coordination=1))).start()

    async def fast_progress() -> None:
        hub_for(handle.server.ctx).progress_interval = 0.1

    handle.run(fast_progress())
    try:
        async with (
            AsyncClient(handle.address, **credentials("alice")) as alice,
            AsyncClient(handle.address, **credentials("carol")) as carol,
        ):
            call = carol.signals._stub.Subscribe(
                signals_pb2.SubscribeRequest(signal_types=["rare"])
            )
            responses = call.__aiter__()
            start = await asyncio.wait_for(responses.__anext__(), TIMEOUT)
            for _ in range(3):
                passed = await alice.signals.send_signal("common", target_agent="bob")
            progress = await asyncio.wait_for(responses.__anext__(), TIMEOUT)
            call.cancel()
            await asyncio.sleep(1.1)
            newer = await alice.signals.send_signal("rare")  # trims everything older than 1 s
            resumed = carol.signals.subscribe(["rare"], after_id=progress.cursor, max_retries=0)
            got = await take(resumed, 1)
            await resumed.aclose()
            with pytest.raises(AgentcoordError) as caught:
                await take(carol.signals.subscribe(["rare"], after_id=start.cursor), 1)
    finally:
        handle.stop()

    assert not progress.HasField("signal") and progress.cursor == passed.id
    assert [s.id for s in got] == [newer.id]
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
async def test_revoking_the_token_ends_the_subscription_and_releases_it(server, namespace):
    store = TokenStore(server.server.ctx.redis)
    token, record = server.run(store.issue(namespace, "watcher", access_pb2.ACCESS_TIER_OBSERVER))
    async with AsyncClient(server.address, token=token) as watcher:
        stream = watcher.signals.subscribe(max_retries=0)
        pending = asyncio.ensure_future(take(stream, 1))
        await wait_for_state(server, namespace, lambda s: s["subscribers"] == 1)

        server.run(store.revoke(namespace, record.token_id))
        with pytest.raises(AgentcoordError) as caught:
            await asyncio.wait_for(pending, 5)  # the bound is auth_cache_seconds (1 s in tests)
        await wait_for_state(server, namespace, lambda s: not s["readers"])

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_streams_cancelled_right_after_their_first_response_are_all_released(
    server, credentials, make_aclient, namespace
):
    # Cancelled while the handler awaits its catch-up read (a Redis call): the subscription
    # must end then, not at its next write, which in a quiet namespace never comes.
    alice = make_aclient("alice")
    for i in range(5):
        await alice.signals.send_signal("x", {"i": i})
    token = credentials("bob", "OBSERVER")["token"]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = signals_pb2_grpc.SignalServiceStub(channel)
        for _ in range(60):
            call = stub.Subscribe(
                signals_pb2.SubscribeRequest(start=signals_pb2.START_POSITION_EARLIEST),
                metadata=[("authorization", f"Bearer {token}")],
            )
            await call.read()  # the start cursor; the catch-up read is under way now
            call.cancel()
    await wait_for_state(server, namespace, lambda s: s["subscribers"] == 0 and not s["readers"])
