"""A flood of bad tokens costs Redis little and stops at a per-peer limit (issue #12, hardening).

Each test runs its own server (the session server's limit is raised for the whole suite, whose
tests all connect from 127.0.0.1). Redis work is counted with INFO commandstats: every token
lookup is one HGETALL. The counting tests use a Redis of their own, since the session's Redis
also serves other servers' background work (stream re-checks look tokens up too).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from agentcoord import AgentcoordError, Client
from agentcoord_server.embedded_redis import EmbeddedRedis
from google.rpc import error_details_pb2

from .conftest import server_settings
from .support import ServerThread


def lookups(redis_client: redis.Redis) -> int:
    """HGETALL calls Redis has served so far (a token lookup is one)."""
    stats = redis_client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


def who_am_i(address: str, token: str) -> AgentcoordError | None:
    """The error WhoAmI with `token` gets from `address`, or None when it succeeds."""
    with Client(address, token=token) as client:
        try:
            client.admin.who_am_i()
        except AgentcoordError as error:
            return error
    return None


@pytest.fixture(scope="module")
def own_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("auth-flood-redis"))
    embedded.start()
    yield embedded.url
    embedded.stop()


@pytest.fixture
def own_redis(own_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def unlimited_server(own_redis_url: str) -> Iterator[ServerThread]:
    """A server with a 5 s auth cache and no per-peer limit: the negative cache alone."""
    handle = ServerThread(
        server_settings(own_redis_url, auth_cache_seconds=5.0, auth_failure_limit=0)
    ).start()
    yield handle
    handle.stop()


def test_repeated_unknown_token_is_looked_up_in_redis_once_per_cache_bound(
    unlimited_server, own_redis
):
    token = "agc_" + secrets.token_urlsafe(32)
    before = lookups(own_redis)
    with Client(unlimited_server.address, token=token) as client:
        for _ in range(100):
            with pytest.raises(AgentcoordError) as caught:
                client.admin.who_am_i()
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.reason == "UNKNOWN_TOKEN"
    # Once per 5 s bound: a few lookups at most even on a slow machine, never one per call.
    assert lookups(own_redis) - before <= 10


def test_token_registered_after_being_refused_works_within_the_cache_bound(server, redis_url):
    # The session server's bound is 1 s. A refused secret can only become valid later if it was
    # chosen in advance (as --bootstrap-token is); register one straight in the token store.
    token = "agc_" + secrets.token_urlsafe(32)
    error = who_am_i(server.address, token)
    assert error is not None and error.reason == "UNKNOWN_TOKEN"

    from agentcoord_server.store.tokens import TokenStore

    server.run(TokenStore(server.server.ctx.redis).issue("late", "agent-1", 1, token=token))

    deadline = time.monotonic() + 15
    while (error := who_am_i(server.address, token)) is not None:
        assert error.reason == "UNKNOWN_TOKEN"
        assert time.monotonic() < deadline, "the token was still refused long after the bound"
        time.sleep(0.2)


@pytest.fixture
def limited_server(own_redis_url: str) -> Iterator[tuple[ServerThread, int]]:
    """A server on both loopback addresses (127.0.0.1 and ::1, one port: two peers), allowing
    5 failed authentications per peer and forgiving one per 12 s."""
    handle = ServerThread(
        server_settings(
            own_redis_url, listen="localhost:0", auth_failure_limit=5, auth_failure_window=60.0
        )
    ).start()
    yield handle, int(handle.address.rsplit(":", 1)[1])
    handle.stop()


def test_peer_over_the_failure_limit_is_refused_without_redis_while_others_go_on(
    limited_server, own_redis
):
    handle, port = limited_server
    attacker, other = f"127.0.0.1:{port}", f"[::1]:{port}"
    good = handle.issue_token("agent-1", "OBSERVER", "flood")

    for _ in range(5):  # distinct unknown tokens: the negative cache does not help
        error = who_am_i(attacker, "agc_" + secrets.token_urlsafe(32))
        assert error is not None and error.reason == "UNKNOWN_TOKEN"

    before = lookups(own_redis)
    refused = [who_am_i(attacker, "agc_" + secrets.token_urlsafe(32)) for _ in range(20)]
    assert lookups(own_redis) == before  # refused before any token lookup

    for error in refused:
        assert error is not None
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.reason == "TOO_MANY_FAILED_AUTHENTICATIONS"
        assert 1 <= int(error.metadata["retry_after_seconds"]) <= 60
        retry = [d for d in error.details if isinstance(d, error_details_pb2.RetryInfo)]
        assert len(retry) == 1 and retry[0].retry_delay.ToNanoseconds() > 0
        assert error.request_id
    # The limit is on the address, whatever the token: a good one from there waits too.
    blocked = who_am_i(attacker, good)
    assert blocked is not None and blocked.reason == "TOO_MANY_FAILED_AUTHENTICATIONS"
    # Another peer is unaffected, good token and bad.
    assert who_am_i(other, good) is None
    unknown = who_am_i(other, "agc_" + secrets.token_urlsafe(32))
    assert unknown is not None and unknown.reason == "UNKNOWN_TOKEN"


def test_refused_peer_is_let_in_again_once_its_failures_are_forgiven(redis_url):
    handle = ServerThread(
        server_settings(redis_url, auth_failure_limit=2, auth_failure_window=3.0)
    ).start()
    try:
        good = handle.issue_token("agent-1", "OBSERVER", "flood")
        for _ in range(2):
            error = who_am_i(handle.address, "agc_" + secrets.token_urlsafe(32))
            assert error is not None and error.reason == "UNKNOWN_TOKEN"
        refused = who_am_i(handle.address, good)
        assert refused is not None and refused.reason == "TOO_MANY_FAILED_AUTHENTICATIONS"

        deadline = time.monotonic() + 15  # one failure is forgiven per 1.5 s
        while (error := who_am_i(handle.address, good)) is not None:
            assert error.reason == "TOO_MANY_FAILED_AUTHENTICATIONS"
            assert time.monotonic() < deadline, "the peer was never let in again"
            time.sleep(0.1)
    finally:
        handle.stop()
