"""StagingService, conflict contexts: CreateConflict, GetConflict, ListConflicts,
ResolveConflict — including resolvers racing with real concurrent clients."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import staging_pb2
from agentcoord_server.config import TtlPolicy

from .conftest import server_settings
from .support import ServerThread
from .test_staging import keys_of

pytestmark = pytest.mark.every_backend

WEEK_MS = 7 * 24 * 3600 * 1000


def create(client, conflict_id="c1", **overrides):
    fields = {
        "conflict_id": conflict_id,
        "description": "Which cache to use",
        "positions": {"perf-agent": "use Redis", "ops-agent": "use in-process LRU"},
        "interests": {"perf-agent": ["latency"], "ops-agent": ["fewer moving parts", "cost"]},
        "batna": "keep no cache",
    }
    fields.update(overrides)
    return client.staging.create_conflict(**fields)


def test_created_conflict_is_open_with_everything_given_and_a_7_day_expiry(make_client):
    conflict = create(make_client("mediator"))

    assert conflict.state == staging_pb2.CONFLICT_STATE_OPEN
    assert conflict.created_by == "mediator"
    assert dict(conflict.positions) == {
        "perf-agent": "use Redis",
        "ops-agent": "use in-process LRU",
    }
    assert {a: list(i.interests) for a, i in conflict.interests.items()} == {
        "perf-agent": ["latency"],
        "ops-agent": ["fewer moving parts", "cost"],
    }
    assert (conflict.batna, conflict.description) == ("keep no cache", "Which cache to use")
    assert conflict.expire_time.ToMilliseconds() - conflict.create_time.ToMilliseconds() == WEEK_MS
    assert (conflict.resolution, conflict.resolved_by, conflict.HasField("resolve_time")) == (
        "",
        "",
        False,
    )
    assert make_client(tier="OBSERVER").staging.get_conflict("c1") == conflict


def test_conflict_key_has_the_conflict_context_ttl(make_client, namespace, redis_client):
    create(make_client())

    pttl = redis_client.pttl(f"ac:{{{namespace}}}:conflicts:conflict:c1")

    assert WEEK_MS - 60_000 < pttl <= WEEK_MS


def test_duplicate_conflict_id_is_already_exists_and_the_original_is_unchanged(make_client):
    create(make_client("first"), batna="original")
    second = make_client("second")

    with pytest.raises(AgentcoordError) as caught:
        create(second, batna="replacement")

    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.reason == "CONFLICT_EXISTS"
    got = second.staging.get_conflict("c1")
    assert (got.batna, got.created_by) == ("original", "first")


def test_conflict_bad_fields_get_one_violation_each_and_nothing_is_written(
    make_client, namespace, redis_client
):
    with pytest.raises(AgentcoordError) as caught:
        create(
            make_client(),
            conflict_id="a:b",
            positions={"bad agent": "x", "ok-agent": ""},
            interests={"stranger": ["x"], "ok-agent": [""]},
        )

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(f for f, _ in caught.value.field_violations) == [
        "conflict_id",
        "interests['ok-agent'][0]",
        "interests['stranger']",
        "positions['bad agent']",
        "positions['ok-agent']",
    ]
    assert keys_of(redis_client, namespace) == []


def test_conflict_without_positions_is_invalid(make_client, namespace, redis_client):
    with pytest.raises(AgentcoordError) as caught:
        create(make_client(), positions={}, interests={})

    assert [f for f, _ in caught.value.field_violations] == ["positions"]
    assert keys_of(redis_client, namespace) == []


def test_unknown_conflict_is_not_found(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client(tier="OBSERVER").staging.get_conflict("ghost")

    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "CONFLICT_NOT_FOUND"


def test_observer_cannot_create_a_conflict(make_client, namespace, redis_client):
    with pytest.raises(AgentcoordError) as caught:
        create(make_client("watcher", "OBSERVER"))

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert keys_of(redis_client, namespace) == []


def test_resolve_records_resolution_resolver_and_time_and_keeps_the_ttl(
    make_client, namespace, redis_client
):
    create(make_client("mediator"))
    validator = make_client("judge", "VALIDATOR")
    key = f"ac:{{{namespace}}}:conflicts:conflict:c1"
    redis_client.pexpire(key, 100_000)  # as if it was created long ago: 100 s left

    resolved = validator.staging.resolve_conflict("c1", resolution="Redis, with a local L1")

    assert resolved.state == staging_pb2.CONFLICT_STATE_RESOLVED
    assert (resolved.resolution, resolved.resolved_by) == ("Redis, with a local L1", "judge")
    assert abs(resolved.resolve_time.ToMilliseconds() - time.time() * 1000) < 60_000
    assert validator.staging.get_conflict("c1") == resolved
    assert 90_000 < redis_client.pttl(key) <= 100_000  # the remaining TTL, neither reset nor lost


def test_resolving_a_resolved_conflict_is_failed_precondition_and_keeps_the_first(make_client):
    create(make_client())
    first, second = make_client("judge-1", "VALIDATOR"), make_client("judge-2", "VALIDATOR")
    first.staging.resolve_conflict("c1", resolution="first")

    with pytest.raises(AgentcoordError) as caught:
        second.staging.resolve_conflict("c1", resolution="second")

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "ALREADY_RESOLVED"
    got = second.staging.get_conflict("c1")
    assert (got.resolution, got.resolved_by) == ("first", "judge-1")


def test_resolving_an_unknown_conflict_is_not_found(make_client, namespace, redis_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client("judge", "VALIDATOR").staging.resolve_conflict("ghost", resolution="x")

    assert caught.value.reason == "CONFLICT_NOT_FOUND"
    assert keys_of(redis_client, namespace) == []


def test_resolve_without_resolution_is_invalid_and_conflict_stays_open(make_client):
    create(make_client())
    validator = make_client("judge", "VALIDATOR")

    with pytest.raises(AgentcoordError) as caught:
        validator.staging.resolve_conflict("c1", resolution="")

    assert caught.value.field_violations == [("resolution", "must not be empty")]
    assert validator.staging.get_conflict("c1").state == staging_pb2.CONFLICT_STATE_OPEN


def test_contributor_cannot_resolve(make_client):
    contributor = make_client("mediator")
    create(contributor)

    with pytest.raises(AgentcoordError) as caught:
        contributor.staging.resolve_conflict("c1", resolution="mine")

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert contributor.staging.get_conflict("c1").state == staging_pb2.CONFLICT_STATE_OPEN


async def test_racing_resolvers_exactly_one_wins(make_client, make_aclient):
    create(make_client())
    validators = [make_aclient(f"judge-{i}", "VALIDATOR") for i in range(16)]

    results = await asyncio.gather(
        *(
            v.staging.resolve_conflict("c1", resolution=f"resolution {i}")
            for i, v in enumerate(validators)
        ),
        return_exceptions=True,
    )

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(e, AgentcoordError) and e.reason == "ALREADY_RESOLVED" for e in losers)
    final = await validators[0].staging.get_conflict("c1")
    assert (final.resolution, final.resolved_by) == (
        winners[0].resolution,
        winners[0].resolved_by,
    )


def test_conflicts_list_oldest_first_filtered_by_state_across_pages(make_client):
    creator, validator = make_client(), make_client("judge", "VALIDATOR")
    for i in range(6):
        create(creator, f"c{i}")
        time.sleep(0.003)  # distinct create milliseconds, so the order is creation order
    for i in (1, 3, 4):
        validator.staging.resolve_conflict(f"c{i}", resolution="done")

    def ids(state):
        seen, token = [], ""
        while True:
            page = validator.staging.list_conflicts(state=state, page_size=2, page_token=token)
            assert len(page.conflicts) <= 2
            seen += [c.conflict_id for c in page.conflicts]
            token = page.next_page_token
            if not token:
                return seen

    assert ids(None) == [f"c{i}" for i in range(6)]
    assert ids("open") == ["c0", "c2", "c5"]
    assert ids("resolved") == ["c1", "c3", "c4"]


def test_unknown_state_filter_is_refused_by_the_client(make_client):
    with pytest.raises(ValueError):
        make_client().staging.list_conflicts(state="closed")


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_expired_conflicts_are_not_listed_and_their_id_can_be_reused(
    redis_url, credentials, namespace, redis_client
):
    handle = ServerThread(server_settings(redis_url, ttl=TtlPolicy(conflict_context=1))).start()
    try:
        with Client(handle.address, **credentials("mediator")) as client:
            create(client, batna="old")
            redis_client.persist(f"ac:{{{namespace}}}:conflicts:index")
            time.sleep(1.1)

            assert list(client.staging.list_conflicts().conflicts) == []
            assert create(client, batna="new").batna == "new"
            assert [c.batna for c in client.staging.list_conflicts().conflicts] == ["new"]
    finally:
        handle.stop()


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_expired_conflicts_leave_the_index_on_later_creates_even_if_never_listed(
    redis_url, credentials, namespace, redis_client
):
    # The index lives as long as its newest conflict, so a namespace that keeps opening
    # conflicts must prune the members of expired ones as it writes.
    index = f"ac:{{{namespace}}}:conflicts:index"
    handle = ServerThread(server_settings(redis_url, ttl=TtlPolicy(conflict_context=1))).start()
    try:
        with Client(handle.address, **credentials("mediator")) as client:
            for i in range(5):
                create(client, f"old-{i}")
            time.sleep(0.6)
            create(client, "keeper")
            time.sleep(0.6)  # the old ones have expired, keeper has not

            create(client, "new")

            members = redis_client.zrange(index, 0, -1)
            assert sorted(m.rsplit(":", 1)[1] for m in members) == ["keeper", "new"]
            expiry = redis_client.zrange(f"ac:{{{namespace}}}:conflicts:expiry", 0, -1)
            assert sorted(expiry) == sorted(members)
    finally:
        handle.stop()
