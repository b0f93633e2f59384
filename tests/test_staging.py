"""StagingService, staging half: StagePattern, GetStagedPattern, ListStagedPatterns."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord_server.config import TtlPolicy

from .conftest import server_settings
from .support import ServerThread

pytestmark = pytest.mark.every_backend

DAY_MS = 24 * 3600 * 1000


def stage(client, pattern_id="p1", **overrides):
    fields = {
        "pattern_id": pattern_id,
        "pattern_type": "security",
        "name": "Parameterized queries",
        "description": "Always use parameterized queries",
        "confidence": 0.9,
        "code": "cursor.execute(sql, params)",
        "context": {"file": "db.py", "lines": [10, 12], "nested": {"ok": True}},
        "interests": ["safety", "correctness"],
    }
    fields.update(overrides)
    return client.staging.stage_pattern(**fields)


def keys_of(redis_client, namespace):
    """The namespace's keys of the staging service's areas (tokens live in the namespace too)."""
    return sorted(
        key
        for area in ("staging", "patterns", "conflicts")
        for key in redis_client.scan_iter(match=f"ac:{{{namespace}}}:{area}:*")
    )


def test_staged_pattern_has_caller_as_author_revision_one_and_a_24h_expiry(make_client):
    pattern = stage(make_client("finder"))

    assert pattern.author == "finder"
    assert pattern.revision == 1
    assert pattern.expire_time.ToMilliseconds() - pattern.stage_time.ToMilliseconds() == DAY_MS
    assert abs(pattern.stage_time.ToMilliseconds() - time.time() * 1000) < 60_000


def test_get_staged_pattern_returns_every_field_as_staged(make_client):
    client = make_client("finder")
    stage(client)

    got = client.staging.get_staged_pattern("p1")

    assert (got.pattern_id, got.pattern_type, got.name, got.author) == (
        "p1",
        "security",
        "Parameterized queries",
        "finder",
    )
    assert got.description == "Always use parameterized queries"
    assert got.confidence == 0.9
    assert got.code == "cursor.execute(sql, params)"
    assert dict(got.context) == {"file": "db.py", "lines": [10, 12], "nested": {"ok": True}}
    assert list(got.interests) == ["safety", "correctness"]


def test_staged_pattern_key_has_the_staged_patterns_ttl(make_client, namespace, redis_client):
    stage(make_client())

    pttl = redis_client.pttl(f"ac:{{{namespace}}}:staging:pattern:p1")

    assert DAY_MS - 60_000 < pttl <= DAY_MS


def test_author_restaging_same_id_replaces_it_and_increments_revision(make_client):
    client = make_client("finder")
    stage(client, confidence=0.5, name="first")

    second = stage(client, confidence=0.7, name="second", interests=[])
    third = stage(client, confidence=0.8, name="third")

    assert (second.revision, third.revision) == (2, 3)
    got = client.staging.get_staged_pattern("p1")
    assert (got.revision, got.name, got.confidence) == (3, "third", 0.8)
    listed = client.staging.list_staged_patterns().patterns
    assert [(p.pattern_id, p.revision) for p in listed] == [("p1", 3)]


def test_restaging_restarts_the_stage_time_and_the_ttl(make_client, namespace, redis_client):
    client = make_client("finder")
    first = stage(client)
    key = f"ac:{{{namespace}}}:staging:pattern:p1"
    redis_client.pexpire(key, 100_000)  # as if staged long ago: 100 s left
    time.sleep(0.005)

    second = stage(client)

    assert second.stage_time.ToMilliseconds() > first.stage_time.ToMilliseconds()
    assert second.expire_time.ToMilliseconds() - second.stage_time.ToMilliseconds() == DAY_MS
    assert DAY_MS - 60_000 < redis_client.pttl(key) <= DAY_MS


def test_other_contributor_staging_same_id_gets_already_exists_and_nothing_changes(
    make_client,
):
    stage(make_client("finder"), name="original")
    other = make_client("intruder")

    with pytest.raises(AgentcoordError) as caught:
        stage(other, name="hijacked", confidence=1.0)

    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.reason == "PATTERN_STAGED_BY_OTHER_AGENT"
    got = other.staging.get_staged_pattern("p1")
    assert (got.name, got.author, got.revision) == ("original", "finder", 1)


def test_bad_fields_get_one_violation_each_and_nothing_is_written(
    make_client, namespace, redis_client
):
    client = make_client()

    with pytest.raises(AgentcoordError) as caught:
        stage(
            client,
            pattern_id="bad:id*",
            pattern_type="",
            name="",
            confidence=1.5,
            interests=["ok", ""],
        )

    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in error.field_violations) == [
        "confidence",
        "interests[1]",
        "name",
        "pattern_id",
        "pattern_type",
    ]
    assert keys_of(redis_client, namespace) == []


@pytest.mark.parametrize("confidence", [-0.01, 1.0000001, float("nan"), float("inf")])
def test_confidence_outside_zero_to_one_is_invalid(
    make_client, namespace, redis_client, confidence
):
    with pytest.raises(AgentcoordError) as caught:
        stage(make_client(), confidence=confidence)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == ["confidence"]
    assert keys_of(redis_client, namespace) == []


def test_confidence_bounds_zero_and_one_are_accepted(make_client):
    client = make_client()

    assert stage(client, "low", confidence=0.0).confidence == 0.0
    assert stage(client, "high", confidence=1.0).confidence == 1.0


def test_observer_cannot_stage_and_nothing_is_written(make_client, namespace, redis_client):
    with pytest.raises(AgentcoordError) as caught:
        stage(make_client("watcher", "OBSERVER"))

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert keys_of(redis_client, namespace) == []


def test_unknown_staged_pattern_is_not_found(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client(tier="OBSERVER").staging.get_staged_pattern("nothing-here")

    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "STAGED_PATTERN_NOT_FOUND"


def test_staged_patterns_list_by_confidence_descending_then_oldest_first(make_client):
    client = make_client()
    for pattern_id, confidence in [
        ("z-mid-first", 0.5),
        ("a-low", 0.1),
        ("m-mid-second", 0.5),
        ("b-top", 0.99),
        ("c-mid-third", 0.5),
    ]:
        stage(client, pattern_id, confidence=confidence)
        time.sleep(0.003)  # distinct stage milliseconds, so the tie-break is stage time

    listed = client.staging.list_staged_patterns().patterns

    assert [p.pattern_id for p in listed] == [
        "b-top",
        "z-mid-first",
        "m-mid-second",
        "c-mid-third",
        "a-low",
    ]


def test_restaging_moves_a_pattern_to_its_new_confidence_rank(make_client):
    client = make_client()
    stage(client, "a", confidence=0.9)
    stage(client, "b", confidence=0.5)

    stage(client, "a", confidence=0.1)

    assert [p.pattern_id for p in client.staging.list_staged_patterns().patterns] == ["b", "a"]


def test_staged_list_pages_cover_every_pattern_once_in_order(make_client):
    client = make_client()
    for i in range(7):
        stage(client, f"p{i}", confidence=i / 10)

    seen, token, pages = [], "", 0
    while True:
        page = client.staging.list_staged_patterns(page_size=3, page_token=token)
        pages += 1
        assert len(page.patterns) <= 3
        seen += [p.pattern_id for p in page.patterns]
        token = page.next_page_token
        if not token:
            break

    assert seen == [f"p{i}" for i in reversed(range(7))]
    assert pages == 3


def test_iter_staged_patterns_follows_every_page(make_client):
    client = make_client()
    for i in range(5):
        stage(client, f"p{i}", confidence=0.5)

    # Equal confidence: stage time, then id, so the order is staging order on any clock.
    assert [p.pattern_id for p in client.staging.iter_staged_patterns(page_size=2)] == [
        f"p{i}" for i in range(5)
    ]
    assert len(client.staging.list_staged_patterns(page_size=2).patterns) == 2


def test_staged_list_filters_by_type_author_and_minimum_confidence(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    stage(alice, "a-sec-high", pattern_type="security", confidence=0.9)
    stage(alice, "a-sec-low", pattern_type="security", confidence=0.3)
    stage(alice, "a-perf-high", pattern_type="performance", confidence=0.95)
    stage(bob, "b-sec-high", pattern_type="security", confidence=0.8)

    def ids(**filters):
        return sorted(p.pattern_id for p in alice.staging.list_staged_patterns(**filters).patterns)

    assert ids(pattern_type="security") == ["a-sec-high", "a-sec-low", "b-sec-high"]
    assert ids(author="bob") == ["b-sec-high"]
    assert ids(minimum_confidence=0.8) == ["a-perf-high", "a-sec-high", "b-sec-high"]
    assert ids(pattern_type="security", author="alice", minimum_confidence=0.5) == ["a-sec-high"]


def test_filtered_list_pages_hold_only_matches_and_cover_all_of_them(make_client):
    client = make_client()
    for i in range(12):
        stage(client, f"p{i:02d}", pattern_type="even" if i % 2 == 0 else "odd", confidence=0.5)

    seen, token = [], ""
    while True:
        page = client.staging.list_staged_patterns(
            pattern_type="even", page_size=2, page_token=token
        )
        assert {p.pattern_type for p in page.patterns} <= {"even"}
        seen += [p.pattern_id for p in page.patterns]
        token = page.next_page_token
        if not token:
            break

    assert sorted(seen) == [f"p{i:02d}" for i in range(0, 12, 2)]


def test_pages_cut_short_by_the_scan_budget_resume_without_skips_or_repeats(
    make_client, namespace, redis_client, monkeypatch
):
    from agentcoord_server.store import staging as staging_store

    client = make_client()
    for i in range(20):
        kind = "rare" if i % 3 == 0 else "common"
        stage(client, f"p{i:02d}", pattern_type=kind, confidence=1 - i / 100)
    for i in (3, 4, 9):  # their hashes vanish as if expired; the index still names them
        redis_client.delete(f"ac:{{{namespace}}}:staging:pattern:p{i:02d}")
    # The server runs in this process: each list call may now examine only 3 index members,
    # so most pages end early (some empty) on the budget, not on page_size.
    monkeypatch.setattr(staging_store, "SCAN_BUDGET", 3)

    seen, token, pages = [], "", 0
    while True:
        page = client.staging.list_staged_patterns(
            pattern_type="rare", page_size=2, page_token=token
        )
        pages += 1
        seen += [p.pattern_id for p in page.patterns]
        token = page.next_page_token
        if not token:
            break

    assert seen == ["p00", "p06", "p12", "p15", "p18"]  # confidence descending
    assert pages >= 6
    assert redis_client.zcard(f"ac:{{{namespace}}}:staging:index") == 17


def test_garbage_page_token_is_invalid_argument(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client().staging.list_staged_patterns(page_token="not-a-token")

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0][0] == "page_token"


def test_page_token_of_another_list_is_invalid_argument(make_client):
    client = make_client("v", "VALIDATOR")
    for i in range(3):
        client.staging.create_conflict(conflict_id=f"c{i}", positions={"a": "x"})
    token = client.staging.list_conflicts(page_size=1).next_page_token
    assert token

    with pytest.raises(AgentcoordError) as caught:
        client.staging.list_staged_patterns(page_token=token)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_negative_page_size_is_invalid_argument(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client().staging.list_staged_patterns(page_size=-1)

    assert caught.value.field_violations == [("page_size", "must not be negative")]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.staging.list_staged_patterns(page_size=-1, page_token="garbage"),
        lambda c: c.staging.list_patterns(page_size=-1, page_token="garbage"),
        lambda c: c.staging.list_conflicts(page_size=-1, page_token="garbage"),
    ],
    ids=["staged", "library", "conflicts"],
)
def test_bad_page_token_is_reported_with_the_other_bad_fields(make_client, call):
    with pytest.raises(AgentcoordError) as caught:
        call(make_client())

    assert sorted(field for field, _ in caught.value.field_violations) == [
        "page_size",
        "page_token",
    ]


def test_staged_patterns_of_another_namespace_are_invisible(make_client, namespace):
    stage(make_client("finder"))
    outsider = make_client("finder", ns=f"{namespace}-other")

    assert list(outsider.staging.list_staged_patterns().patterns) == []
    with pytest.raises(AgentcoordError) as caught:
        outsider.staging.get_staged_pattern("p1")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def short_ttl_server(redis_url):
    handle = ServerThread(
        server_settings(redis_url, ttl=TtlPolicy(staged_patterns=1, conflict_context=1))
    ).start()
    yield handle
    handle.stop()


def test_expired_patterns_are_never_listed_and_leave_the_index(
    short_ttl_server, credentials, namespace, redis_client
):
    with Client(short_ttl_server.address, **credentials("finder")) as client:
        stage(client, "old")
        index = f"ac:{{{namespace}}}:staging:index"
        assert redis_client.zcard(index) == 1
        redis_client.persist(index)  # keep the index so we see the stale member being pruned
        time.sleep(1.1)

        assert list(client.staging.list_staged_patterns().patterns) == []
        assert redis_client.zcard(index) == 0
        with pytest.raises(AgentcoordError):
            client.staging.get_staged_pattern("old")


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_pattern_restaged_after_expiry_is_listed_once_as_revision_one(
    short_ttl_server, credentials, namespace, redis_client
):
    with Client(short_ttl_server.address, **credentials("finder")) as client:
        stage(client, "p", confidence=0.9)
        redis_client.persist(f"ac:{{{namespace}}}:staging:index")
        time.sleep(1.1)

        again = stage(client, "p", confidence=0.2)
        listed = client.staging.list_staged_patterns().patterns

    assert again.revision == 1
    assert [(p.pattern_id, p.confidence) for p in listed] == [("p", 0.2)]


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_expired_pattern_of_another_agent_can_be_staged_by_anyone(short_ttl_server, credentials):
    with (
        Client(short_ttl_server.address, **credentials("first")) as first,
        Client(short_ttl_server.address, **credentials("second")) as second,
    ):
        stage(first, "p")
        time.sleep(1.1)

        assert stage(second, "p").author == "second"


async def test_contributors_racing_to_stage_one_new_id_leave_exactly_one_author(make_aclient):
    contributors = [make_aclient(f"finder-{i}") for i in range(16)]

    results = await asyncio.gather(
        *(stage(c, "contested", name=f"by {i}") for i, c in enumerate(contributors)),
        return_exceptions=True,
    )

    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(
        isinstance(r, AgentcoordError) and r.reason == "PATTERN_STAGED_BY_OTHER_AGENT"
        for r in results
        if isinstance(r, BaseException)
    )
    got = await contributors[0].staging.get_staged_pattern("contested")
    assert (got.author, got.name, got.revision) == (winners[0].author, winners[0].name, 1)


async def test_concurrent_restages_by_the_author_get_distinct_consecutive_revisions(
    make_aclient,
):
    channels = [make_aclient("finder") for _ in range(12)]

    staged = await asyncio.gather(*(stage(c, "p", name=f"v{i}") for i, c in enumerate(channels)))

    assert sorted(p.revision for p in staged) == list(range(1, 13))
    latest = max(staged, key=lambda p: p.revision)
    assert (await channels[0].staging.get_staged_pattern("p")).name == latest.name


def test_pages_of_large_patterns_stop_at_half_the_message_limit_and_cover_everything(
    redis_url, credentials
):
    settings = server_settings(
        redis_url,
        max_message_bytes=512 * 1024,
        max_pattern_bytes=128 * 1024,
        max_task_bytes=128 * 1024,
        max_conflict_bytes=128 * 1024,
        max_signal_bytes=128 * 1024,
        max_value_bytes=128 * 1024,
    )
    handle = ServerThread(settings).start()
    try:
        with Client(handle.address, **credentials("finder")) as client:
            for i in range(5):
                stage(client, f"big-{i}", confidence=0.5, code="x" * 100_000)

            sizes, seen, token = [], [], ""
            while True:
                page = client.staging.list_staged_patterns(page_size=100, page_token=token)
                sizes.append(len(page.patterns))
                seen += [p.pattern_id for p in page.patterns]
                token = page.next_page_token
                if not token:
                    break
    finally:
        handle.stop()

    assert max(sizes) == 2  # 256 KiB of values per page: two 100 KB patterns, not three
    assert sorted(seen) == [f"big-{i}" for i in range(5)]


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_expired_patterns_leave_the_index_on_later_stages_even_if_never_listed(
    short_ttl_server, credentials, namespace, redis_client
):
    # A namespace that keeps staging keeps its index alive (its TTL follows the newest entry),
    # so members of patterns that expired unlisted must be pruned by the writes themselves.
    index = f"ac:{{{namespace}}}:staging:index"
    with Client(short_ttl_server.address, **credentials("finder")) as client:
        for i in range(5):
            stage(client, f"old-{i}")
        time.sleep(0.6)
        stage(client, "keeper")
        time.sleep(0.6)  # the old ones have expired, keeper has not

        stage(client, "new")

        members = redis_client.zrange(index, 0, -1)
        assert sorted(m.rsplit(":", 1)[1] for m in members) == ["keeper", "new"]
        assert sorted(redis_client.zrange(f"ac:{{{namespace}}}:staging:expiry", 0, -1)) == sorted(
            members
        )
        assert [p.pattern_id for p in client.staging.list_staged_patterns().patterns] == [
            "keeper",
            "new",
        ]
