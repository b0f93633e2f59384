"""Team sessions: create/join/leave atomically, TTL refreshed by activity, shared context for
participants only, expiry with the session (MemoryService)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord_server.config import TtlPolicy
from agentcoord_server.store.keys import Keyspace
from agentcoord_server.store.memory import MemoryStore

from .conftest import server_settings
from .support import ServerThread
from .test_memory import error_of, namespace_keys

pytestmark = pytest.mark.every_backend


def session_keys(namespace: str, session_id: str) -> dict[str, str]:
    ks = Keyspace(namespace)
    return {
        part: ks.key("sessions", session_id, part) for part in ("info", "participants", "context")
    }


def test_create_session_makes_the_creator_its_first_participant(
    make_client, namespace, redis_client
):
    session = make_client("lead").memory.create_session(
        "review-42",
        purpose="code review",
        metadata={"repo": "x", "files": [1, 2], "opts": {"deep": None}},
    )

    assert session.session_id == "review-42"
    assert list(session.participants) == ["lead"]
    assert session.created_by == "lead"
    assert session.expire_time.ToMilliseconds() - session.create_time.ToMilliseconds() == 1800_000
    keys = session_keys(namespace, "review-42")
    assert 1790_000 < redis_client.pttl(keys["info"]) <= 1800_000
    assert 1790_000 < redis_client.pttl(keys["participants"]) <= 1800_000


def test_get_session_returns_purpose_metadata_creator_participants_and_times(make_client):
    lead = make_client("lead")
    created = lead.memory.create_session(
        "s1", purpose="triage", metadata={"a": {"b": [1, "c", None]}}
    )
    make_client("helper").memory.join_session("s1")

    session = make_client("watcher", tier="OBSERVER").memory.get_session("s1")

    assert session.purpose == "triage"
    assert session.created_by == "lead"
    assert list(session.participants) == ["helper", "lead"]
    assert dict(session.metadata) == dict(created.metadata)
    assert session.metadata["a"]["b"][1] == "c"
    assert session.create_time == created.create_time


def test_creating_an_existing_session_is_already_exists_and_keeps_its_participants(make_client):
    make_client("lead").memory.create_session("s1", purpose="original")
    make_client("helper").memory.join_session("s1")

    error = error_of(make_client("intruder").memory.create_session, "s1", purpose="takeover")

    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "SESSION_EXISTS"
    session = make_client("lead").memory.get_session("s1")
    assert list(session.participants) == ["helper", "lead"]
    assert session.purpose == "original"
    assert session.created_by == "lead"


async def test_twenty_concurrent_joiners_all_become_participants(make_aclient):
    await make_aclient("lead").memory.create_session("crowd")
    joiners = [make_aclient(f"agent-{i:02d}") for i in range(20)]

    await asyncio.gather(*(c.memory.join_session("crowd") for c in joiners))

    session = await joiners[0].memory.get_session("crowd")
    assert sorted(session.participants) == sorted(["lead", *(f"agent-{i:02d}" for i in range(20))])


async def test_twenty_concurrent_leavers_all_leave(make_aclient):
    await make_aclient("lead").memory.create_session("crowd")
    agents = [make_aclient(f"agent-{i:02d}") for i in range(20)]
    await asyncio.gather(*(c.memory.join_session("crowd") for c in agents))

    await asyncio.gather(*(c.memory.leave_session("crowd") for c in agents))

    session = await agents[0].memory.get_session("crowd")
    assert list(session.participants) == ["lead"]


async def test_twenty_concurrent_creates_of_one_session_make_exactly_one(make_aclient):
    clients = [make_aclient(f"agent-{i:02d}") for i in range(20)]

    results = await asyncio.gather(
        *(c.memory.create_session("race") for c in clients), return_exceptions=True
    )

    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, AgentcoordError)]
    assert len(created) == 1
    assert len(refused) == 19
    assert all(r.code == grpc.StatusCode.ALREADY_EXISTS for r in refused)
    session = await clients[0].memory.get_session("race")
    assert list(session.participants) == [created[0].created_by]


def test_joining_twice_is_idempotent(make_client):
    make_client("lead").memory.create_session("s1")
    helper = make_client("helper")
    helper.memory.join_session("s1")

    session = helper.memory.join_session("s1")

    assert list(session.participants) == ["helper", "lead"]


def test_joining_a_missing_session_is_not_found(make_client, namespace, redis_client):
    error = error_of(make_client().memory.join_session, "nope")

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "SESSION_NOT_FOUND"
    assert namespace_keys(redis_client, namespace) == []


def test_leaving_a_session_one_is_not_in_is_failed_precondition(make_client):
    make_client("lead").memory.create_session("s1")

    error = error_of(make_client("stranger").memory.leave_session, "s1")

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "NOT_A_PARTICIPANT"


def test_leave_returns_the_remaining_participants(make_client):
    make_client("lead").memory.create_session("s1")
    make_client("helper").memory.join_session("s1")

    session = make_client("lead").memory.leave_session("s1")

    assert list(session.participants) == ["helper"]
    assert session.created_by == "lead"


def test_activity_restarts_the_session_ttl_on_all_its_keys(make_client, namespace, redis_client):
    lead = make_client("lead")
    lead.memory.create_session("s1")
    lead.memory.share_context("s1", "notes", "n")
    keys = session_keys(namespace, "s1")
    for key in keys.values():
        redis_client.pexpire(key, 5000)

    session = make_client("helper").memory.join_session("s1")

    for key in keys.values():
        assert redis_client.pttl(key) > 1790_000
    assert session.expire_time.ToMilliseconds() > time.time() * 1000 + 1790_000


@pytest.mark.parametrize(
    "activity",
    [
        lambda m: m.get_shared_context("s1"),
        lambda m: m.get_shared_context("s1", key="notes"),
        lambda m: m.share_context("s1", "more", 1),
        lambda m: m.leave_session("s1"),
    ],
    ids=["read-all", "read-one", "share", "leave"],
)
def test_every_activity_restarts_the_ttl_of_all_session_keys(
    make_client, namespace, redis_client, activity
):
    lead, helper = make_client("lead"), make_client("helper")
    lead.memory.create_session("s1")
    helper.memory.join_session("s1")
    lead.memory.share_context("s1", "notes", "n")
    keys = session_keys(namespace, "s1")
    for key in keys.values():
        redis_client.pexpire(key, 5000)

    activity(helper.memory)

    assert {part: redis_client.pttl(key) > 1790_000 for part, key in keys.items()} == {
        "info": True,
        "participants": True,
        "context": True,
    }
    expire_ms = int(redis_client.hget(keys["info"], "e"))
    assert expire_ms > time.time() * 1000 + 1790_000


def test_get_session_does_not_restart_the_ttl(make_client, namespace, redis_client):
    make_client("lead").memory.create_session("s1")
    info = session_keys(namespace, "s1")["info"]
    redis_client.pexpire(info, 5000)

    make_client("watcher", tier="OBSERVER").memory.get_session("s1")

    assert redis_client.pttl(info) <= 5000


def test_participants_share_context_with_each_other(make_client):
    lead, helper = make_client("lead"), make_client("helper")
    lead.memory.create_session("s1")
    helper.memory.join_session("s1")
    findings = {"vulnerabilities": [{"id": "CVE-1", "score": 9.8, "tags": ["rce"], "fixed": None}]}

    lead.memory.share_context("s1", "security_findings", findings)
    helper.memory.share_context("s1", "perf", [1, 2])

    assert helper.memory.get_shared_context("s1") == {"perf": [1, 2], "security_findings": findings}
    assert lead.memory.get_shared_context("s1", key="perf") == {"perf": [1, 2]}
    items = lead.memory.get_shared_items("s1")
    assert [(i.key, i.shared_by) for i in items] == [
        ("perf", "helper"),
        ("security_findings", "lead"),
    ]


def test_outsiders_cannot_share_or_read_context(make_client, namespace, redis_client):
    lead = make_client("lead")
    lead.memory.create_session("s1")
    lead.memory.share_context("s1", "plan", "secret plan")
    outsider = make_client("outsider")

    share = error_of(outsider.memory.share_context, "s1", "plan", "overwritten")
    read = error_of(outsider.memory.get_shared_context, "s1")

    assert share.code == read.code == grpc.StatusCode.PERMISSION_DENIED
    assert share.reason == read.reason == "NOT_A_PARTICIPANT"
    assert lead.memory.get_shared_context("s1") == {"plan": "secret plan"}
    assert redis_client.hlen(session_keys(namespace, "s1")["context"]) == 1


def test_a_participant_who_left_can_no_longer_read_context(make_client):
    lead, helper = make_client("lead"), make_client("helper")
    lead.memory.create_session("s1")
    helper.memory.join_session("s1")
    helper.memory.leave_session("s1")

    assert (
        error_of(helper.memory.get_shared_context, "s1").code == grpc.StatusCode.PERMISSION_DENIED
    )


def test_reading_a_missing_context_key_is_not_found(make_client):
    lead = make_client("lead")
    lead.memory.create_session("s1")

    error = error_of(lead.memory.get_shared_context, "s1", key="nothing")

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "CONTEXT_NOT_FOUND"


def test_sharing_into_a_missing_session_is_not_found(make_client, namespace, redis_client):
    error = error_of(make_client().memory.share_context, "ghost", "k", 1)

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert namespace_keys(redis_client, namespace) == []


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_session_and_its_shared_context_expire_together(redis_url, namespace, redis_client):
    handle = ServerThread(server_settings(redis_url, ttl=TtlPolicy(session=1))).start()
    try:
        with Client(
            handle.address, token=handle.issue_token("lead", "CONTRIBUTOR", namespace)
        ) as lead:
            lead.memory.create_session("brief")
            lead.memory.share_context("brief", "k", {"v": 1})
            keys = session_keys(namespace, "brief")
            ttls = [redis_client.pttl(key) for key in keys.values()]
            time.sleep(1.1)
            error = error_of(lead.memory.get_session, "brief")
            listed = lead.memory.list_sessions().sessions
    finally:
        handle.stop()

    assert all(0 < ttl <= 1000 for ttl in ttls)
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert redis_client.exists(*keys.values()) == 0
    assert list(listed) == []
    assert redis_client.zrange(Keyspace(namespace).key("session-index", "ids"), 0, -1) == []


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_an_expired_session_id_can_be_created_again(redis_url, namespace):
    handle = ServerThread(server_settings(redis_url, ttl=TtlPolicy(session=1))).start()
    try:
        with Client(handle.address, token=handle.issue_token("a", "CONTRIBUTOR", namespace)) as a:
            a.memory.create_session("again")
            a.memory.share_context("again", "old", 1)
            time.sleep(1.1)
            session = a.memory.create_session("again", purpose="second")
            context = a.memory.get_shared_context("again")
    finally:
        handle.stop()

    assert session.purpose == "second"
    assert context == {}


def test_list_sessions_pages_in_id_order(make_client):
    client = make_client()
    for i in range(7):
        client.memory.create_session(f"s{i}", purpose=f"p{i}")

    first = client.memory.list_sessions(page_size=3)
    second = client.memory.list_sessions(page_size=3, page_token=first.next_page_token)
    third = client.memory.list_sessions(page_size=3, page_token=second.next_page_token)

    ids = [s.session_id for page in (first, second, third) for s in page.sessions]
    assert ids == [f"s{i}" for i in range(7)]
    assert third.next_page_token == ""
    assert first.sessions[0].purpose == "p0"
    assert list(first.sessions[0].participants) == ["agent-1"]


def test_sessions_are_invisible_to_other_namespaces(make_client):
    make_client("lead").memory.create_session("s1")
    outsider = make_client("lead", ns="other")

    assert error_of(outsider.memory.get_session, "s1").code == grpc.StatusCode.NOT_FOUND
    assert error_of(outsider.memory.join_session, "s1").code == grpc.StatusCode.NOT_FOUND
    assert list(outsider.memory.list_sessions().sessions) == []


@pytest.mark.parametrize("session_id", ["a:b", "*", "", "x" * 129])
def test_invalid_session_id_is_refused_and_nothing_is_written(
    make_client, namespace, redis_client, session_id
):
    error = error_of(make_client().memory.create_session, session_id)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0][0] == "session_id"
    assert namespace_keys(redis_client, namespace) == []


def test_oversized_shared_value_is_refused_and_nothing_is_written(
    make_client, namespace, redis_client
):
    lead = make_client("lead")
    lead.memory.create_session("s1")

    error = error_of(lead.memory.share_context, "s1", "big", "x" * (1024 * 1024 + 1))

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert redis_client.exists(session_keys(namespace, "s1")["context"]) == 0


def test_participants_store_method_reads_the_documented_set(
    server, make_client, namespace, redis_client
):
    make_client("lead").memory.create_session("s1")
    make_client("helper").memory.join_session("s1")
    store = MemoryStore(server.server.ctx.redis)

    members = server.run(store.participants(namespace, "s1"))
    missing = server.run(store.participants(namespace, "no-such-session"))

    assert members == {"lead", "helper"}
    assert (
        redis_client.smembers(Keyspace(namespace).key("sessions", "s1", "participants")) == members
    )
    assert missing == set()


def test_reading_shared_context_needs_the_tier_that_can_join(make_client):
    """Only participants read shared context and joining needs CONTRIBUTOR, so GetSharedContext
    declares CONTRIBUTOR: an observer is refused for its tier (fail-fast in the client and on the
    server), never admitted by the tier check only to be refused as an outsider."""
    from agentcoord.v1 import memory_pb2
    from agentcoord_server.identity import required_tiers

    lead = make_client("lead")
    lead.memory.create_session("s1")
    lead.memory.share_context("s1", "plan", "p")
    tiers = required_tiers([memory_pb2])
    service = "/agentcoord.v1.MemoryService/"

    error = error_of(make_client("watcher", tier="OBSERVER").memory.get_shared_context, "s1")

    assert tiers[service + "GetSharedContext"] == tiers[service + "JoinSession"]
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "TIER_TOO_LOW"


def test_activity_puts_a_live_session_back_into_the_index(make_client, namespace, redis_client):
    """Index pruning compares expiry scores with the server's clock, Redis expires keys by its
    own: a server whose clock runs ahead (or a join in the last milliseconds) can prune a session
    that is still live. Its next activity restarts its TTL, so it must be listed again."""
    lead = make_client("lead")
    lead.memory.create_session("s1")
    expiry = Keyspace(namespace).key("session-index", "expiry")
    redis_client.zadd(expiry, {"s1": 1})  # as if another server's clock had passed its expiry
    lead.memory.create_session("s2")  # a create prunes the indexes
    assert [s.session_id for s in lead.memory.list_sessions().sessions] == ["s2"]

    make_client("helper").memory.join_session("s1")

    assert [s.session_id for s in lead.memory.list_sessions().sessions] == ["s1", "s2"]


def test_sessions_with_large_metadata_are_listed_in_pages_that_fit_a_message(make_client):
    client = make_client()
    for i in range(6):
        client.memory.create_session(f"s{i}", metadata={"blob": "x" * (900 * 1024)})

    pages, token = [], ""
    while True:
        page = client.memory.list_sessions(page_token=token)
        pages.append([s.session_id for s in page.sessions])
        token = page.next_page_token
        if not token:
            break

    assert [sid for page in pages for sid in page] == [f"s{i}" for i in range(6)]
    assert len(pages) > 1


def test_shared_context_larger_than_a_message_is_resource_exhausted(make_client):
    lead = make_client("lead")
    lead.memory.create_session("s1")
    for i in range(6):
        lead.memory.share_context("s1", f"k{i}", "x" * (900 * 1024))

    error = error_of(lead.memory.get_shared_context, "s1")

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "RESPONSE_TOO_LARGE"
    assert len(lead.memory.get_shared_context("s1", key="k5")["k5"]) == 900 * 1024
