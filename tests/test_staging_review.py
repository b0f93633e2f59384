"""StagingService, review and library: PromotePattern, RejectPattern, GetPatternRejection,
GetPattern, ListPatterns — including validators racing with real concurrent clients."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from agentcoord import AgentcoordError, Client

from .conftest import server_settings
from .support import ServerThread
from .test_staging import DAY_MS, keys_of, stage

pytestmark = pytest.mark.every_backend

VALIDATORS = 16


def test_promote_moves_the_pattern_into_the_library_with_promoter_time_and_note(make_client):
    stage(make_client("finder"), confidence=0.9)
    validator = make_client("reviewer", "VALIDATOR")

    promoted = validator.staging.promote_pattern("p1", note="well evidenced")

    assert (promoted.pattern_id, promoted.author, promoted.revision) == ("p1", "finder", 1)
    assert (promoted.promoted_by, promoted.note) == ("reviewer", "well evidenced")
    assert abs(promoted.promote_time.ToMilliseconds() - time.time() * 1000) < 60_000
    assert promoted.confidence == 0.9
    assert dict(promoted.context) == {"file": "db.py", "lines": [10, 12], "nested": {"ok": True}}
    assert validator.staging.get_pattern("p1") == promoted
    with pytest.raises(AgentcoordError) as caught:
        validator.staging.get_staged_pattern("p1")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert list(validator.staging.list_staged_patterns().patterns) == []


def test_library_pattern_has_no_ttl(make_client, namespace, redis_client):
    stage(make_client())
    make_client("reviewer", "VALIDATOR").staging.promote_pattern("p1")

    assert redis_client.pttl(f"ac:{{{namespace}}}:patterns:pattern:p1") == -1
    assert redis_client.pttl(f"ac:{{{namespace}}}:patterns:index") == -1


def test_promote_below_threshold_is_failed_precondition_and_pattern_stays_staged(make_client):
    stage(make_client("finder"), confidence=0.6)
    validator = make_client("reviewer", "VALIDATOR")

    with pytest.raises(AgentcoordError) as caught:
        validator.staging.promote_pattern("p1", minimum_confidence=0.85)

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "BELOW_CONFIDENCE_THRESHOLD"
    assert validator.staging.get_staged_pattern("p1").revision == 1
    with pytest.raises(AgentcoordError):
        validator.staging.get_pattern("p1")


def test_promote_at_exactly_the_threshold_succeeds(make_client):
    stage(make_client(), confidence=0.85)

    promoted = make_client("reviewer", "VALIDATOR").staging.promote_pattern(
        "p1", minimum_confidence=0.85
    )

    assert promoted.confidence == 0.85


def test_promote_of_a_revision_the_author_replaced_is_aborted(make_client):
    author = make_client("finder")
    stage(author, name="reviewed")
    stage(author, name="changed after review")
    validator = make_client("reviewer", "VALIDATOR")

    with pytest.raises(AgentcoordError) as caught:
        validator.staging.promote_pattern("p1", revision=1)

    assert caught.value.code == grpc.StatusCode.ABORTED
    assert caught.value.reason == "REVISION_MISMATCH"
    assert validator.staging.get_staged_pattern("p1").name == "changed after review"
    assert validator.staging.promote_pattern("p1", revision=2).name == "changed after review"


def test_contributor_cannot_promote_and_pattern_stays_staged(make_client):
    contributor = make_client("finder")
    stage(contributor)

    with pytest.raises(AgentcoordError) as caught:
        contributor.staging.promote_pattern("p1")

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert contributor.staging.get_staged_pattern("p1").pattern_id == "p1"


def test_promote_of_unknown_pattern_is_not_found_and_writes_nothing(
    make_client, namespace, redis_client
):
    with pytest.raises(AgentcoordError) as caught:
        make_client("reviewer", "VALIDATOR").staging.promote_pattern("ghost")

    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "STAGED_PATTERN_NOT_FOUND"
    assert keys_of(redis_client, namespace) == []


def test_promote_with_bad_threshold_is_invalid_argument(make_client):
    stage(make_client())

    with pytest.raises(AgentcoordError) as caught:
        make_client("reviewer", "VALIDATOR").staging.promote_pattern(
            "p1", minimum_confidence=2.0, revision=0
        )

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(f for f, _ in caught.value.field_violations) == ["minimum_confidence", "revision"]


async def test_racing_validators_promote_a_pattern_exactly_once(make_client, make_aclient):
    stage(make_client("finder"))
    validators = [make_aclient(f"reviewer-{i}", "VALIDATOR") for i in range(VALIDATORS)]

    results = await asyncio.gather(
        *(v.staging.promote_pattern("p1", note=f"by {i}") for i, v in enumerate(validators)),
        return_exceptions=True,
    )

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(
        isinstance(e, AgentcoordError) and e.code == grpc.StatusCode.NOT_FOUND for e in losers
    )
    library = await validators[0].staging.get_pattern("p1")
    assert library.promoted_by == winners[0].promoted_by


async def test_racing_promote_and_reject_leave_exactly_one_outcome(make_client, make_aclient):
    stage(make_client("finder"))
    promoters = [make_aclient(f"promoter-{i}", "VALIDATOR") for i in range(VALIDATORS // 2)]
    rejecters = [make_aclient(f"rejecter-{i}", "VALIDATOR") for i in range(VALIDATORS // 2)]
    calls = []
    for promoter, rejecter in zip(promoters, rejecters, strict=True):
        calls += [
            promoter.staging.promote_pattern("p1"),
            rejecter.staging.reject_pattern("p1", reason="duplicate"),
        ]

    results = await asyncio.gather(*calls, return_exceptions=True)

    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(
        r.code == grpc.StatusCode.NOT_FOUND for r in results if isinstance(r, AgentcoordError)
    )
    promoted = await _exists(promoters[0].staging.get_pattern("p1"))
    rejected = await _exists(promoters[0].staging.get_pattern_rejection("p1"))
    assert promoted != rejected


async def _exists(call) -> bool:
    try:
        await call
    except AgentcoordError as error:
        assert error.code == grpc.StatusCode.NOT_FOUND
        return False
    return True


def test_racing_validator_threads_promote_exactly_once(make_client):
    from concurrent.futures import ThreadPoolExecutor

    stage(make_client("finder"))
    validators = [make_client(f"reviewer-{i}", "VALIDATOR") for i in range(8)]

    def promote(client: Client) -> str:
        try:
            return client.staging.promote_pattern("p1").promoted_by
        except AgentcoordError as error:
            return error.code.name

    with ThreadPoolExecutor(len(validators)) as pool:
        outcomes = list(pool.map(promote, validators))

    assert sum(outcome.startswith("reviewer-") for outcome in outcomes) == 1
    assert outcomes.count("NOT_FOUND") == len(validators) - 1


def test_reject_removes_the_pattern_and_keeps_who_why_and_when(make_client):
    stage(make_client("finder"), confidence=0.4)
    validator = make_client("reviewer", "VALIDATOR")

    rejection = validator.staging.reject_pattern("p1", reason="not reproducible")

    assert (rejection.pattern_id, rejection.author, rejection.revision) == ("p1", "finder", 1)
    assert (rejection.rejected_by, rejection.reason) == ("reviewer", "not reproducible")
    assert rejection.expire_time.ToMilliseconds() - rejection.reject_time.ToMilliseconds() == DAY_MS
    assert make_client(tier="OBSERVER").staging.get_pattern_rejection("p1") == rejection
    with pytest.raises(AgentcoordError):
        validator.staging.get_staged_pattern("p1")
    with pytest.raises(AgentcoordError):
        validator.staging.get_pattern("p1")


def test_rejection_record_key_has_the_staged_patterns_ttl(make_client, namespace, redis_client):
    stage(make_client())
    make_client("reviewer", "VALIDATOR").staging.reject_pattern("p1", reason="no")

    pttl = redis_client.pttl(f"ac:{{{namespace}}}:staging:rejection:p1")

    assert DAY_MS - 60_000 < pttl <= DAY_MS


def test_reject_without_reason_is_invalid_and_pattern_stays_staged(make_client):
    stage(make_client())
    validator = make_client("reviewer", "VALIDATOR")

    with pytest.raises(AgentcoordError) as caught:
        validator.staging.reject_pattern("p1", reason="  ")

    assert caught.value.field_violations == [("reason", "must not be empty")]
    assert validator.staging.get_staged_pattern("p1").pattern_id == "p1"


def test_reject_of_unknown_pattern_is_not_found_and_writes_nothing(
    make_client, namespace, redis_client
):
    with pytest.raises(AgentcoordError) as caught:
        make_client("reviewer", "VALIDATOR").staging.reject_pattern("ghost", reason="x")

    assert caught.value.reason == "STAGED_PATTERN_NOT_FOUND"
    assert keys_of(redis_client, namespace) == []


def test_rejection_of_never_rejected_pattern_is_not_found(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client(tier="OBSERVER").staging.get_pattern_rejection("p1")

    assert caught.value.reason == "REJECTION_NOT_FOUND"


def test_library_lists_filter_by_type_and_case_insensitive_text(make_client):
    author, validator = make_client("finder"), make_client("reviewer", "VALIDATOR")
    for pattern_id, pattern_type, name, description in [
        ("sql", "security", "SQL Injection Prevention", "Use parameterized queries"),
        ("xss", "security", "Escape output", "Encode HTML before rendering ÜBER"),
        ("cache", "performance", "Memoize", "Cache pure SQL lookups"),
    ]:
        stage(author, pattern_id, pattern_type=pattern_type, name=name, description=description)
        validator.staging.promote_pattern(pattern_id)

    def ids(**filters):
        return [p.pattern_id for p in validator.staging.list_patterns(**filters).patterns]

    assert ids() == ["cache", "sql", "xss"]
    assert ids(pattern_type="security") == ["sql", "xss"]
    assert ids(text="sql") == ["cache", "sql"]
    assert ids(text="PARAMETERIZED") == ["sql"]
    assert ids(text="über") == ["xss"]
    assert ids(text="sql", pattern_type="performance") == ["cache"]
    assert ids(text="nothing matches") == []


def test_library_list_pages_cover_every_pattern_once(make_client):
    author, validator = make_client("finder"), make_client("reviewer", "VALIDATOR")
    for i in range(5):
        stage(author, f"p{i}")
        validator.staging.promote_pattern(f"p{i}")

    assert [p.pattern_id for p in validator.staging.iter_patterns(page_size=2)] == [
        f"p{i}" for i in range(5)
    ]
    first = validator.staging.list_patterns(page_size=2)
    assert len(first.patterns) == 2 and first.next_page_token


def test_promoting_an_id_already_in_the_library_replaces_that_entry(make_client):
    author, validator = make_client("finder"), make_client("reviewer", "VALIDATOR")
    stage(author, name="v1")
    validator.staging.promote_pattern("p1")
    stage(author, name="v2")

    validator.staging.promote_pattern("p1", note="newer")

    got = validator.staging.get_pattern("p1")
    assert (got.name, got.note) == ("v2", "newer")
    assert [p.pattern_id for p in validator.staging.list_patterns().patterns] == ["p1"]


def test_unknown_library_pattern_is_not_found(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client(tier="OBSERVER").staging.get_pattern("ghost")

    assert caught.value.reason == "PATTERN_NOT_FOUND"


def test_library_survives_a_server_restart(redis_url, credentials):
    first = ServerThread(server_settings(redis_url)).start()
    try:
        with Client(first.address, **credentials("finder")) as author:
            stage(author)
        with Client(first.address, **credentials("reviewer", "VALIDATOR")) as validator:
            validator.staging.promote_pattern("p1")
    finally:
        first.stop()

    second = ServerThread(server_settings(redis_url)).start()
    try:
        with Client(second.address, **credentials("reader", "OBSERVER")) as reader:
            assert reader.staging.get_pattern("p1").promoted_by == "reviewer"
            assert [p.pattern_id for p in reader.staging.list_patterns().patterns] == ["p1"]
    finally:
        second.stop()


def test_library_survives_a_restart_of_the_server_and_its_embedded_redis(tmp_path, namespace):
    # redis_url None: the server starts (and on stop shuts down) its own embedded Redis.
    settings = server_settings(None, data_dir=tmp_path)
    first = ServerThread(settings).start()
    try:
        with Client(
            first.address, token=first.issue_token("finder", "CONTRIBUTOR", namespace)
        ) as c:
            stage(c)
        with Client(first.address, token=first.issue_token("judge", "VALIDATOR", namespace)) as v:
            v.staging.promote_pattern("p1", note="keep")
    finally:
        first.stop()

    second = ServerThread(settings).start()
    try:
        token = second.issue_token("reader", "OBSERVER", namespace)
        with Client(second.address, token=token) as reader:
            got = reader.staging.get_pattern("p1")
    finally:
        second.stop()

    assert (got.promoted_by, got.note, got.author) == ("judge", "keep", "finder")


async def test_async_iter_patterns_follows_every_page(make_aclient):
    author, validator = make_aclient("finder"), make_aclient("judge", "VALIDATOR")
    for i in range(5):
        await stage(author, f"p{i}", pattern_type="odd" if i % 2 else "even")
        await validator.staging.promote_pattern(f"p{i}")
    reader = make_aclient("reader", "OBSERVER")

    ids = [
        p.pattern_id async for p in reader.staging.iter_patterns(pattern_type="even", page_size=1)
    ]

    assert ids == ["p0", "p2", "p4"]
