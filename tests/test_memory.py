"""Working memory: stash/retrieve, TTLs, batches, delete/clear, listing, validation (MemoryService)."""

from __future__ import annotations

import time

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord.client._async.memory import to_value
from agentcoord_server.store.keys import Keyspace, area_of

from .conftest import server_settings
from .support import ServerThread

pytestmark = pytest.mark.every_backend

NESTED = {
    "files": 10,
    "ratio": 0.125,
    "negative": -3,
    "big": 1e300,
    "ok": True,
    "missing": None,
    "name": 'naïve ✓ \u0000 "quoted"',
    "empty_list": [],
    "empty_object": {},
    "deep": {"a": [{"b": [[1, 2], [], {"c": None}]}, "x"], "d": {"e": {"f": {"g": [False]}}}},
}


def entry_key(namespace: str, owner: str, key: str) -> str:
    return Keyspace(namespace).key("memory", owner, key)


MEMORY_AREAS = {"memory", "memory-index", "sessions", "session-index", "collab", "collab-index"}


def namespace_keys(redis_client, namespace: str) -> list[str]:
    """The namespace's keys of MemoryService's areas (tokens live in the namespace too)."""
    keys = redis_client.scan_iter(match=Keyspace(namespace).pattern(), count=1000)
    return [key for key in keys if area_of(key) in MEMORY_AREAS]


def error_of(call, *args, **kwargs) -> AgentcoordError:
    with pytest.raises(AgentcoordError) as info:
        call(*args, **kwargs)
    return info.value


def test_nested_json_round_trips_unchanged(make_client):
    client = make_client()
    client.memory.stash("analysis", NESTED)

    entry = client.memory.retrieve_entry("analysis")

    assert client.memory.retrieve("analysis") == NESTED
    assert entry.value == to_value(NESTED)


def test_scalar_and_list_values_round_trip(make_client):
    client = make_client()
    for key, value in {
        "s": "text",
        "n": 42,
        "f": 2.5,
        "b": False,
        "z": None,
        "l": [1, "a", None],
    }.items():
        client.memory.stash(key, value)

    assert client.memory.batch_retrieve(["s", "n", "f", "b", "z", "l"]) == {
        "s": "text",
        "n": 42,
        "f": 2.5,
        "b": False,
        "z": None,
        "l": [1, "a", None],
    }


def test_stash_returns_metadata_and_default_ttl_is_one_hour(make_client, namespace, redis_client):
    entry = make_client("agent-1").memory.stash("k", {"a": 1})

    assert entry.owner == "agent-1"
    assert entry.key == "k"
    assert not entry.HasField("value")
    assert entry.expire_time.ToMilliseconds() - entry.stash_time.ToMilliseconds() == 3600_000
    assert abs(entry.stash_time.ToMilliseconds() - time.time() * 1000) < 60_000
    assert 3590_000 < redis_client.pttl(entry_key(namespace, "agent-1", "k")) <= 3600_000


def test_ttl_strategy_uses_the_policy_seconds(make_client, namespace, redis_client):
    entry = make_client().memory.stash("beat", 1, ttl_strategy="coordination")

    assert entry.expire_time.ToMilliseconds() - entry.stash_time.ToMilliseconds() == 300_000
    assert 290_000 < redis_client.pttl(entry_key(namespace, "agent-1", "beat")) <= 300_000


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_entry_with_explicit_one_second_ttl_expires(make_client, namespace, redis_client):
    client = make_client()
    client.memory.stash("short", "gone soon", ttl=1)
    assert 0 < redis_client.pttl(entry_key(namespace, "agent-1", "short")) <= 1000

    time.sleep(1.1)

    error = error_of(client.memory.retrieve, "short")
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "ENTRY_NOT_FOUND"


def test_overwrite_replaces_value_and_restarts_ttl(make_client, namespace, redis_client):
    client = make_client()
    client.memory.stash("k", "first", ttl=1)

    client.memory.stash("k", "second")

    assert client.memory.retrieve("k") == "second"
    assert redis_client.pttl(entry_key(namespace, "agent-1", "k")) > 3500_000


def test_retrieve_missing_key_is_not_found(make_client):
    error = error_of(make_client().memory.retrieve, "never-stashed")

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "ENTRY_NOT_FOUND"


def test_any_agent_reads_another_agents_entry_by_naming_the_owner(make_client):
    make_client("writer").memory.stash("findings", {"issues": 3})
    reader = make_client("reader", tier="OBSERVER")

    assert reader.memory.retrieve("findings", owner="writer") == {"issues": 3}
    assert reader.memory.retrieve_entry("findings", owner="writer").owner == "writer"
    assert error_of(reader.memory.retrieve, "findings").code == grpc.StatusCode.NOT_FOUND


def test_other_namespace_cannot_see_entries(make_client):
    make_client("agent-1").memory.stash("secret", 1)
    outsider = make_client("agent-1", ns="other")

    assert error_of(outsider.memory.retrieve, "secret").code == grpc.StatusCode.NOT_FOUND
    assert outsider.memory.list_entries().entries == []


def test_observer_cannot_stash(make_client, namespace, redis_client):
    error = error_of(make_client(tier="OBSERVER").memory.stash, "k", 1)

    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert namespace_keys(redis_client, namespace) == []


@pytest.mark.parametrize("key", ["a:b", "a*", "with space", "", "x" * 129, "ключ", "a/b"])
def test_invalid_key_is_refused_and_nothing_is_written(make_client, namespace, redis_client, key):
    error = error_of(make_client().memory.stash, key, {"v": 1})

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ID"
    assert error.field_violations[0][0] == "key"
    assert namespace_keys(redis_client, namespace) == []


def test_invalid_owner_is_refused(make_client):
    error = error_of(make_client().memory.retrieve, "k", owner="a*")

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0][0] == "owner"


def test_value_over_one_mib_is_resource_exhausted_and_nothing_is_written(
    make_client, namespace, redis_client
):
    client = make_client()
    client.memory.stash("k", "old")

    error = error_of(client.memory.stash, "k", "x" * (1024 * 1024 + 1))

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "VALUE_TOO_LARGE"
    assert client.memory.retrieve("k") == "old"
    assert sorted(namespace_keys(redis_client, namespace)) == sorted(
        [
            entry_key(namespace, "agent-1", "k"),
            Keyspace(namespace).key("memory-index", "agent-1", "keys"),
            Keyspace(namespace).key("memory-index", "agent-1", "expiry"),
        ]
    )


def test_value_size_limit_is_configurable(redis_url):
    handle = ServerThread(server_settings(redis_url, max_value_bytes=100)).start()
    try:
        from agentcoord import Client

        with Client(
            handle.address, token=handle.issue_token("a", "CONTRIBUTOR", "limits")
        ) as client:
            client.memory.stash("small", "x" * 50)
            error = error_of(client.memory.stash, "big", "x" * 200)
            missing = error_of(client.memory.retrieve, "big")
    finally:
        handle.stop()

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.metadata["limit_bytes"] == "100"
    assert missing.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("ttl", [0, -1, 31 * 24 * 3600])
def test_explicit_ttl_out_of_range_is_refused(make_client, namespace, redis_client, ttl):
    error = error_of(make_client().memory.stash, "k", 1, ttl=ttl)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0][0] == "ttl_duration"
    assert namespace_keys(redis_client, namespace) == []


def test_missing_value_is_refused(make_client):
    from agentcoord.v1 import memory_pb2

    client = make_client()
    stub = client.memory._stub
    with pytest.raises(grpc.RpcError) as info:
        stub.Stash(memory_pb2.StashRequest(key="k"))

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_batch_stash_writes_every_item(make_client, namespace, redis_client):
    client = make_client()
    items = {f"k{i}": {"i": i, "nested": [i, {"x": None}]} for i in range(100)}

    entries = client.memory.batch_stash(items, ttl_strategy="task")

    assert [e.key for e in entries] == list(items)
    assert client.memory.batch_retrieve(list(items)) == items
    assert (
        4 * 3600_000 - 10_000
        < redis_client.pttl(entry_key(namespace, "agent-1", "k99"))
        <= 4 * 3600_000
    )


def test_batch_with_one_bad_key_writes_nothing(make_client, namespace, redis_client):
    items = {"good-1": 1, "good-2": 2, "good-3": 3, "bad:key": 4, "good-5": 5}

    error = error_of(make_client().memory.batch_stash, items)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0][0] == "items[3].key"
    assert namespace_keys(redis_client, namespace) == []


def test_batch_with_one_oversized_value_writes_nothing(make_client, namespace, redis_client):
    items = {"a": 1, "b": "x" * (1024 * 1024 + 10), "c": 3}

    error = error_of(make_client().memory.batch_stash, items)

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.metadata["key"] == "b"
    assert namespace_keys(redis_client, namespace) == []


def test_batch_of_more_than_100_items_is_refused(make_client, namespace, redis_client):
    error = error_of(make_client().memory.batch_stash, {f"k{i}": i for i in range(101)})

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "BATCH_SIZE"
    assert namespace_keys(redis_client, namespace) == []


def test_batch_stash_with_repeated_key_is_refused(make_client, namespace, redis_client):
    from agentcoord.v1 import memory_pb2

    request = memory_pb2.BatchStashRequest()
    request.items.add(key="same", value=to_value(1))
    request.items.add(key="same", value=to_value(2))
    with pytest.raises(grpc.RpcError) as info:
        make_client().memory._stub.BatchStash(request)

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert namespace_keys(redis_client, namespace) == []


def test_batch_retrieve_reports_missing_keys_per_key(make_client):
    writer = make_client("writer")
    writer.memory.batch_stash({"a": 1, "c": {"three": 3}})

    results = make_client("reader").memory.batch_retrieve_entries(["a", "b", "c"], owner="writer")

    assert [(r.key, r.found) for r in results] == [("a", True), ("b", False), ("c", True)]
    assert not results[1].HasField("entry")
    assert results[2].entry.owner == "writer"


def test_batch_retrieve_of_more_than_100_keys_is_refused(make_client):
    error = error_of(make_client().memory.batch_retrieve, [f"k{i}" for i in range(101)])

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_entry_removes_it_and_a_second_delete_is_not_found(
    make_client, namespace, redis_client
):
    client = make_client()
    client.memory.stash("k", 1)

    client.memory.delete_entry("k")

    assert error_of(client.memory.retrieve, "k").code == grpc.StatusCode.NOT_FOUND
    assert (
        redis_client.zrange(Keyspace(namespace).key("memory-index", "agent-1", "keys"), 0, -1) == []
    )
    assert error_of(client.memory.delete_entry, "k").reason == "ENTRY_NOT_FOUND"


def test_delete_entry_cannot_reach_another_agents_entry(make_client):
    make_client("owner").memory.stash("k", 1)

    error = error_of(make_client("other").memory.delete_entry, "k")

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert make_client("owner").memory.retrieve("k") == 1


def test_clear_working_memory_deletes_own_entries_and_returns_the_count(
    make_client, namespace, redis_client
):
    mine, theirs = make_client("agent-1"), make_client("agent-2")
    mine.memory.batch_stash({"a": 1, "b": 2, "c": 3})
    theirs.memory.stash("a", "kept")

    deleted = mine.memory.clear_working_memory()

    assert deleted == 3
    assert mine.memory.list_entries().entries == []
    assert theirs.memory.retrieve("a") == "kept"
    assert all(":agent-1" not in key for key in namespace_keys(redis_client, namespace))
    assert mine.memory.clear_working_memory() == 0


def test_clear_counts_only_live_entries(make_client):
    client = make_client()
    client.memory.stash("short", 1, ttl=0.5)
    client.memory.stash("long", 2)
    time.sleep(0.6)

    assert client.memory.clear_working_memory() == 1


def test_list_entries_pages_in_key_order_within_a_prefix(make_client):
    client = make_client()
    client.memory.batch_stash({f"task-{i:02d}": i for i in range(25)})
    client.memory.batch_stash({"other-a": 1, "tasz": 2, "task": 3})

    pages, token = [], ""
    while True:
        page = client.memory.list_entries(key_prefix="task-", page_size=10, page_token=token)
        pages.append([e.key for e in page.entries])
        token = page.next_page_token
        if not token:
            break

    listed = [key for page in pages for key in page]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert listed == [f"task-{i:02d}" for i in range(25)]
    assert [e.key for e in client.memory.iter_entries(key_prefix="task")] == [
        "task",
        *listed,
    ]


def test_list_entries_reports_metadata_without_values(make_client):
    client = make_client("writer")
    client.memory.stash("k", {"a": [1, 2, 3]}, ttl=60)

    (entry,) = make_client("reader").memory.list_entries(owner="writer").entries

    assert entry.owner == "writer"
    assert not entry.HasField("value")
    assert entry.size_bytes == to_value({"a": [1, 2, 3]}).ByteSize()
    assert entry.expire_time.ToMilliseconds() - entry.stash_time.ToMilliseconds() == 60_000


def test_list_entries_drops_expired_entries_from_the_index(make_client, namespace, redis_client):
    client = make_client()
    client.memory.stash("short", 1, ttl=0.5)
    client.memory.stash("long", 2)
    time.sleep(0.6)

    keys = [e.key for e in client.memory.list_entries().entries]

    assert keys == ["long"]
    index = Keyspace(namespace).key("memory-index", "agent-1", "keys")
    assert redis_client.zrange(index, 0, -1) == ["long"]


def test_index_keys_live_as_long_as_the_longest_entry(make_client, namespace, redis_client):
    client = make_client()
    client.memory.stash("long", 1, ttl=600)
    client.memory.stash("short", 1, ttl=5)

    for name in ("keys", "expiry"):
        index = Keyspace(namespace).key("memory-index", "agent-1", name)
        assert 590_000 < redis_client.pttl(index) <= 600_000


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"key_prefix": "a:"}, "key_prefix"),
        ({"page_token": "a*b"}, "page_token"),
        ({"key_prefix": "task-", "page_token": "other"}, "page_token"),
        ({"page_size": -1}, "page_size"),
    ],
)
def test_bad_listing_arguments_are_refused(make_client, kwargs, field):
    error = error_of(make_client().memory.list_entries, **kwargs)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0][0] == field


async def test_async_client_stashes_and_retrieves(make_aclient):
    client = make_aclient()

    await client.memory.stash("k", NESTED)

    assert await client.memory.retrieve("k") == NESTED


def test_batch_stash_and_batch_retrieve_are_one_redis_command_each(redis_url):
    from agentcoord import Client

    handle = ServerThread(server_settings(redis_url, auth_cache_seconds=5.0)).start()
    redis = handle.server.ctx.redis
    original = redis.execute_command
    commands: list[str] = []

    async def counting(*args, **options):
        commands.append(str(args[0]))
        return await original(*args, **options)

    try:
        with Client(handle.address, token=handle.issue_token("a", "CONTRIBUTOR", "rt")) as client:
            # Authenticates once (the token is then cached) and loads both scripts on this Redis.
            client.memory.stash("warm-up", 1)
            client.memory.retrieve("warm-up")
            redis.execute_command = counting
            try:
                client.memory.batch_stash({f"k{i}": {"i": i} for i in range(100)})
                found = client.memory.batch_retrieve([f"k{i}" for i in range(100)])
            finally:
                del redis.execute_command
    finally:
        handle.stop()

    assert len(found) == 100
    assert commands == ["EVALSHA", "EVALSHA"]


# Serialized, this is not UTF-8 (multi-byte varint lengths, 0xc0 and 0xff bytes of doubles): a read
# path that let the shared client decode replies would fail or alter it.
NOT_UTF8 = {
    "long": "é" * 300,
    "numbers": [1.5, -2.25, 1e300, 1e-300] * 50,
    "deep": {"k" * 200: [{"x": "y" * 1000}]},
}


def test_values_that_are_not_utf8_round_trip_through_every_read_path(make_client):
    lead = make_client("lead")
    lead.memory.create_session("s1", metadata=NOT_UTF8)
    lead.memory.share_context("s1", "k", NOT_UTF8)
    lead.memory.stash("k", NOT_UTF8)
    lead.memory.save_collaboration_state("s1", {"trust_level": 0.5, "extra": NOT_UTF8})
    expected = to_value(NOT_UTF8)

    assert lead.memory.retrieve_entry("k").value == expected
    assert lead.memory.batch_retrieve_entries(["k"])[0].entry.value == expected
    assert lead.memory.get_shared_items("s1")[0].value == expected
    assert lead.memory.get_shared_items("s1", key="k")[0].value == expected
    for session in (
        lead.memory.get_session("s1"),
        lead.memory.join_session("s1"),
        lead.memory.list_sessions().sessions[0],
    ):
        assert session.metadata == expected.struct_value
    for record in (
        lead.memory.load_collaboration_state("s1"),
        lead.memory.list_collaboration_states().records[0],
    ):
        assert record.state.extra == expected.struct_value


def test_every_memory_script_is_reloaded_after_script_flush(make_client, redis_client):
    """Scripts run by EVALSHA (MemoryStore._run); after a Redis restart or SCRIPT FLUSH the
    first call gets NOSCRIPT, loads the script and retries."""
    client = make_client("lead")
    calls = [
        lambda: client.memory.stash("k", {"v": 1}),
        lambda: client.memory.batch_stash({"a": 1, "b": 2}),
        lambda: client.memory.retrieve("k"),
        lambda: client.memory.list_entries(),
        lambda: client.memory.create_session("s1"),
        lambda: client.memory.join_session("s1"),
        lambda: client.memory.share_context("s1", "k", 1),
        lambda: client.memory.get_shared_context("s1"),
        lambda: client.memory.list_sessions(),
        lambda: client.memory.save_collaboration_state("s1", {"trust_level": 0.5}),
        lambda: client.memory.list_collaboration_states(),
        lambda: client.memory.leave_session("s1"),
        lambda: client.memory.delete_entry("a"),
        lambda: client.memory.clear_working_memory(),
    ]
    results = []
    for call in calls:
        redis_client.script_flush()
        results.append(call())

    assert results[2] == {"v": 1}
    assert [e.key for e in results[3].entries] == ["a", "b", "k"]
    assert results[7] == {"k": 1}
    assert results[9] == 1
    assert results[-1] == 2


def test_overwrite_with_a_shorter_ttl_moves_the_entry_in_the_expiry_index(
    make_client, namespace, redis_client
):
    client = make_client()
    client.memory.stash("k", "long-lived", ttl=600)
    client.memory.stash("k", "short-lived", ttl=0.3)
    time.sleep(0.4)

    client.memory.stash("other", 1)  # any stash prunes expired members from the indexes

    keys_index = Keyspace(namespace).key("memory-index", "agent-1", "keys")
    expiry_index = Keyspace(namespace).key("memory-index", "agent-1", "expiry")
    assert redis_client.zrange(keys_index, 0, -1) == ["other"]
    assert redis_client.zrange(expiry_index, 0, -1) == ["other"]
    assert error_of(client.memory.retrieve, "k").code == grpc.StatusCode.NOT_FOUND
    assert client.memory.clear_working_memory() == 1


def test_batch_retrieve_larger_than_a_message_is_resource_exhausted_with_a_reason(make_client):
    """Six 900 KiB values are more than one gRPC message (default 4 MiB): the server says so
    with its own status and reason instead of failing in the transport after logging OK."""
    client = make_client()
    for first in (0, 3):  # a request may not exceed one message either
        client.memory.batch_stash({f"k{i}": "x" * (900 * 1024) for i in range(first, first + 3)})

    error = error_of(client.memory.batch_retrieve, [f"k{i}" for i in range(6)])

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "RESPONSE_TOO_LARGE"
    assert error.metadata["limit_bytes"] == str(4 * 1024 * 1024)
    assert len(client.memory.batch_retrieve([f"k{i}" for i in range(3)])) == 3
