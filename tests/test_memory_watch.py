"""Working-memory revisions, conditional Stash, TouchEntry and WatchEntries (issue #16).

Real servers, real Redis, real channels: catch-up then live with no gap or duplicate, a trimmed
cursor refused OUT_OF_RANGE, session-context events, conditional stashes raced by real
concurrent clients, and exact EXPIRE events.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import memory_pb2
from agentcoord_server.config import TtlPolicy
from agentcoord_server.store.keys import Keyspace

from .conftest import server_settings
from .support import ServerThread

pytestmark = pytest.mark.every_backend

PUT = memory_pb2.ENTRY_EVENT_TYPE_PUT
DELETE = memory_pb2.ENTRY_EVENT_TYPE_DELETE
EXPIRE = memory_pb2.ENTRY_EVENT_TYPE_EXPIRE


def error_of(call, *args, **kwargs) -> AgentcoordError:
    with pytest.raises(AgentcoordError) as info:
        call(*args, **kwargs)
    return info.value


async def take(events, count: int, timeout: float = 20.0) -> list[memory_pb2.EntryEvent]:
    """The next `count` events of an async watch iterator (fails after `timeout` s)."""
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            out.append(await anext(events))
    return out


def wait_for_sweep(redis_client, expiring: str, left: int) -> None:
    """Waits until the namespace's expiry set holds `left` members (the sweep did its work)."""
    deadline = time.monotonic() + 30
    while redis_client.zcard(expiring) != left:
        assert time.monotonic() < deadline, "the sweep never ended the due entries"
        time.sleep(0.05)


# --- revisions and conditional stash -----------------------------------------------------


def test_every_stash_gets_a_higher_revision_that_retrieve_returns(make_client):
    client = make_client()
    first = client.memory.stash("a", 1)
    second = client.memory.stash("b", 2)
    third = client.memory.stash("a", 3)

    assert 0 < first.revision < second.revision < third.revision
    assert client.memory.retrieve_entry("a").revision == third.revision
    assert [e.revision for e in client.memory.list_entries().entries] == [
        third.revision,
        second.revision,
    ]


def test_create_only_stash_refuses_a_live_key_and_writes_nothing(make_client):
    client = make_client()
    created = client.memory.stash("plan", {"v": 1}, expected_revision=0)

    error = error_of(client.memory.stash, "plan", {"v": 2}, expected_revision=0)

    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "ENTRY_EXISTS"
    assert client.memory.retrieve("plan") == {"v": 1}
    assert client.memory.retrieve_entry("plan").revision == created.revision


def test_update_if_revision_matches_refuses_a_stale_revision_with_the_current_one(make_client):
    client = make_client()
    first = client.memory.stash("plan", {"v": 1})
    second = client.memory.stash("plan", {"v": 2}, expected_revision=first.revision)

    error = error_of(client.memory.stash, "plan", {"v": 3}, expected_revision=first.revision)

    assert second.revision > first.revision
    assert error.code == grpc.StatusCode.ABORTED
    assert error.reason == "ENTRY_REVISION_MISMATCH"
    assert error.metadata["revision"] == str(second.revision)
    assert client.memory.retrieve("plan") == {"v": 2}


def test_update_if_revision_matches_of_a_missing_key_is_not_found(make_client):
    client = make_client()
    error = error_of(client.memory.stash, "nothing", 1, expected_revision=5)
    negative = error_of(client.memory.stash, "nothing", 1, expected_revision=-1)

    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ENTRY_NOT_FOUND")
    assert negative.code == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_read_then_update_if_match_lets_exactly_one_writer_win_per_revision(
    make_client,
):
    writers, rounds = 6, 8
    clients = [make_client() for _ in range(writers)]
    clients[0].memory.stash("counter", {"n": 0})
    # Every writer stashes as the same agent (same owner, same entry) over its own channel.
    won: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def write(client: Client) -> None:
        start.wait()
        done = 0
        while done < rounds:
            entry = client.memory.retrieve_entry("counter")
            n = entry.value.struct_value.fields["n"].number_value
            try:
                client.memory.stash("counter", {"n": n + 1}, expected_revision=entry.revision)
            except AgentcoordError as exc:
                assert exc.reason == "ENTRY_REVISION_MISMATCH", exc
                continue
            with lock:
                won.append(entry.revision)
            done += 1

    threads = [threading.Thread(target=write, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert clients[0].memory.retrieve("counter") == {"n": writers * rounds}
    assert len(won) == len(set(won)) == writers * rounds, "two writers won the same revision"


# --- TouchEntry ----------------------------------------------------------------------------


def test_touch_restarts_the_ttl_without_changing_value_or_revision(make_client):
    client = make_client()
    stashed = client.memory.stash("k", {"x": 1}, ttl=60)

    touched = client.memory.touch_entry("k", ttl=3600)
    again = client.memory.touch_entry("k")  # the TTL it last had: 1 h from now

    assert touched.revision == stashed.revision
    assert touched.expire_time.ToMilliseconds() > stashed.expire_time.ToMilliseconds() + 3000_000
    assert again.expire_time.ToMilliseconds() >= touched.expire_time.ToMilliseconds()
    entry = client.memory.retrieve_entry("k")
    assert entry.revision == stashed.revision
    assert entry.expire_time == again.expire_time
    assert client.memory.retrieve("k") == {"x": 1}


def test_touch_of_a_missing_or_expired_entry_is_not_found(make_client):
    client = make_client()
    client.memory.stash("short", 1, ttl=0.05)
    time.sleep(0.1)

    for key in ("never", "short"):
        error = error_of(client.memory.touch_entry, key)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ENTRY_NOT_FOUND")


# --- WatchEntries ---------------------------------------------------------------------------


async def test_watch_catches_up_then_goes_live_with_no_gap_and_no_duplicate(make_aclient):
    writer, other = make_aclient("lead"), make_aclient("reviewer")
    watcher = make_aclient("watcher", "OBSERVER")
    anchor = await writer.memory.stash("anchor", 0)
    for batch in range(3):  # more than one catch-up page
        await writer.memory.batch_stash({f"k{i}": i for i in range(batch * 100, batch * 100 + 100)})
    events = watcher.memory.watch_entries(
        all_owners=True, after_revision=anchor.revision, include_values=True
    )

    async def write_more() -> None:
        for i in range(300, 360):
            await (writer if i % 2 else other).memory.stash(f"k{i}", i)
        await writer.memory.delete_entry("k0")

    try:
        first = await anext(events)  # the stream is open: write while it catches up
        writes = asyncio.create_task(write_more())
        seen = [first, *await take(events, 360)]
        await writes
    finally:
        await events.aclose()

    revisions = [e.revision for e in seen]
    assert revisions == list(range(anchor.revision + 1, anchor.revision + 362))
    puts = [e for e in seen if e.type == PUT]
    assert [e.entry.value.number_value for e in puts] == list(range(360))
    assert {e.owner for e in puts} == {"lead", "reviewer"}
    assert all(e.entry.revision == e.revision for e in puts)
    assert (seen[-1].type, seen[-1].key, seen[-1].owner) == (DELETE, "k0", "lead")


async def test_watch_filters_by_owner_and_key_prefix_and_leaves_values_out(make_aclient):
    lead, other = make_aclient("lead"), make_aclient("other")
    watcher = make_aclient("watcher", "OBSERVER")
    anchor = await lead.memory.stash("anchor", 0)  # revisions are namespace-wide
    events = watcher.memory.watch_entries(
        owner="lead", key_prefix="scope", after_revision=anchor.revision
    )
    try:
        opened = asyncio.create_task(take(events, 2))
        await other.memory.stash("scope", "not lead's")
        await lead.memory.stash("notes", "no prefix")
        first = await lead.memory.stash("scope", {"files": ["a.py"]})
        await lead.memory.stash("scope.v2", 2)
        seen = await opened
    finally:
        await events.aclose()

    assert [(e.owner, e.key) for e in seen] == [("lead", "scope"), ("lead", "scope.v2")]
    assert seen[0].revision == first.revision
    assert not seen[0].entry.HasField("value")


async def test_watch_sees_shared_context_of_a_session_it_participates_in(make_aclient):
    lead, outsider = make_aclient("lead"), make_aclient("outsider")
    await lead.memory.create_session("review")
    anchor = await lead.memory.stash("anchor", 0)
    events = lead.memory.watch_entries(
        session_id="review", include_values=True, after_revision=anchor.revision
    )
    try:
        pending = asyncio.create_task(take(events, 1))
        await lead.memory.stash("private", 1)  # working memory: not this watch's
        await lead.memory.share_context("review", "plan", {"step": 1})
        (event,) = await pending
    finally:
        await events.aclose()
    with pytest.raises(AgentcoordError) as refused:
        await anext(outsider.memory.watch_entries(session_id="review"))

    assert (event.type, event.session_id, event.key, event.owner) == (PUT, "review", "plan", "lead")
    assert event.value.struct_value.fields["step"].number_value == 1
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.reason == "NOT_A_PARTICIPANT"


def test_watch_rejects_bad_requests(make_client):
    client = make_client(tier="OBSERVER")

    def first(**kwargs):
        return next(iter(client.memory.watch_entries(**kwargs)))

    for kwargs in (
        {"owner": "a", "all_owners": True},
        {"key_prefix": "a:b"},
        {"after_revision": -1},
        {"session_id": "s", "owner": "a"},
    ):
        error = error_of(first, **kwargs)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, kwargs


def test_a_cursor_older_than_the_kept_history_is_out_of_range(redis_url, namespace):
    server = ServerThread(server_settings(redis_url, memory_history=50)).start()
    try:
        token = server.issue_token("agent-1", "CONTRIBUTOR", namespace)
        with Client(server.address, token=token) as client:
            first = client.memory.stash("k", 0)
            for batch in range(3):
                client.memory.batch_stash({f"k{batch}-{i}": i for i in range(100)})
            last = client.memory.stash("k", 1)

            trimmed = error_of(
                next, iter(client.memory.watch_entries(after_revision=first.revision))
            )
            ahead = error_of(
                next, iter(client.memory.watch_entries(after_revision=last.revision + 5))
            )
            kept = next(iter(client.memory.watch_entries(after_revision=last.revision - 1)))
    finally:
        server.stop()

    assert (trimmed.code, trimmed.reason) == (grpc.StatusCode.OUT_OF_RANGE, "REVISION_COMPACTED")
    assert int(trimmed.metadata["oldest_revision"]) > first.revision
    assert (ahead.code, ahead.reason) == (grpc.StatusCode.OUT_OF_RANGE, "REVISION_COMPACTED")
    assert kept.revision == last.revision


async def test_an_idle_watcher_gets_progress_past_events_it_does_not_see(make_aclient, server):
    from agentcoord_server.services.memory import servicer_for

    lead, watcher = make_aclient("lead"), make_aclient("watcher", "OBSERVER")
    hub = servicer_for(server.server.ctx).hub
    hub.progress_interval = 0.2  # applies to readers started from now on
    start = await lead.memory.stash("other", 0)
    # The raw stream, so that progress responses (no events) are visible.
    call = watcher.memory._stub.WatchEntries(
        memory_pb2.WatchEntriesRequest(owner="lead", key_prefix="scope")
    )
    try:
        opening = await call.read()
        last = await lead.memory.stash("unrelated", 1)
        async with asyncio.timeout(20):
            while True:
                response = await call.read()
                if response.revision >= last.revision:
                    break
    finally:
        call.cancel()
        hub.progress_interval = 10.0

    assert opening.revision >= start.revision
    assert not response.events and response.revision == last.revision


async def test_expire_events_are_sent_once_and_seen_by_a_watcher_that_starts_later(
    make_aclient, redis_client, namespace
):
    lead = make_aclient("lead")
    anchor = await lead.memory.stash("anchor", 0)
    for i in range(10):
        await lead.memory.stash(f"short{i}", i, ttl=0.3)
    await lead.memory.stash("touched", 1, ttl=0.3)
    await lead.memory.touch_entry("touched", ttl=3600)
    # Nobody watches while they expire; the sweep leaves the anchor and the touched entry.
    expiring = Keyspace(namespace).key("memory-expiry")
    await asyncio.to_thread(wait_for_sweep, redis_client, expiring, 2)
    marker = await lead.memory.stash("marker", 1)

    events = lead.memory.watch_entries(after_revision=anchor.revision)
    try:
        seen = await take(events, marker.revision - anchor.revision)
    finally:
        await events.aclose()

    expired = Counter(e.key for e in seen if e.type == EXPIRE)
    assert expired == Counter({f"short{i}": 1 for i in range(10)})
    assert seen[-1].key == "marker"
    with pytest.raises(AgentcoordError) as gone:
        await lead.memory.retrieve("short0")
    assert gone.value.reason == "ENTRY_NOT_FOUND"
    assert await lead.memory.retrieve("touched") == 1


async def test_a_hole_in_the_history_ends_live_and_catching_up_watchers_out_of_range(
    make_aclient, redis_client, namespace
):
    """Never a silent gap: events that are gone (here a revision with no event, as if the log
    had been trimmed under a reader that fell a whole history behind) end the watch."""
    lead = make_aclient("lead")
    anchor = await lead.memory.stash("anchor", 0)
    live = lead.memory.watch_entries(after_revision=anchor.revision)
    try:
        opened = await lead.memory.stash("before", 1)
        assert (await anext(live)).revision == opened.revision  # the watch is live
        redis_client.incr(Keyspace(namespace).key("memory-rev"))  # a revision without event
        await lead.memory.stash("after", 2)
        with pytest.raises(AgentcoordError) as ended:
            await anext(live)
    finally:
        await live.aclose()
    caught_up = []
    with pytest.raises(AgentcoordError) as refused:
        async for event in lead.memory.watch_entries(after_revision=anchor.revision):
            caught_up.append(event.key)

    assert caught_up == ["before"]  # what precedes the hole, then the refusal

    for error in (ended.value, refused.value):
        assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, "REVISION_COMPACTED")


def test_a_sessions_expiry_is_one_expire_event_for_its_context_seen_later(
    redis_url, namespace, redis_client
):
    server = ServerThread(server_settings(redis_url, ttl=TtlPolicy(session=1))).start()
    try:
        token = server.issue_token("lead", "CONTRIBUTOR", namespace)
        with Client(server.address, token=token) as lead:
            lead.memory.create_session("short")
            anchor = lead.memory.stash("anchor", 0)
            lead.memory.share_context("short", "plan", {"step": 1})
            # Nobody watches while it expires; the sweep leaves only the anchor.
            wait_for_sweep(redis_client, Keyspace(namespace).key("memory-expiry"), 1)
            lead.memory.create_session("short")  # the id is free again
            events = lead.memory.watch_entries(session_id="short", after_revision=anchor.revision)
            seen = [next(events), next(events)]
            events.close()
    finally:
        server.stop()

    assert [(e.type, e.key, e.session_id) for e in seen] == [
        (PUT, "plan", "short"),
        (EXPIRE, "", "short"),
    ]
