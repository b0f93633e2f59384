"""TokenStore on its own: a half-done issue or revoke leaves the token unusable (or still
revocable), never usable without its namespace record; and the start-up "any token?" check is
one small read, not a SCAN of the keyspace.

Failures are injected by a proxy that lets the first `budget` Redis commands through (pipelines
are run command by command, in order) and fails every later one, like a connection lost
half-way; or by a command Redis itself refuses.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.exceptions
from agentcoord.v1 import access_pb2
from agentcoord_server.identity import token_digest
from agentcoord_server.store import tokens as tokens_module
from agentcoord_server.store.tokens import TokenStore
from redis.asyncio import Redis

from .support import async_redis

pytestmark = pytest.mark.every_backend

STEWARD = access_pb2.ACCESS_TIER_STEWARD


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[Redis]:
    client = async_redis(redis_url)
    yield client
    await client.aclose()


_databases = itertools.count(8)


@pytest.fixture
async def empty_aredis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(f"{redis_url}?db={next(_databases)}", decode_responses=True)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


class _Budget:
    def __init__(self, budget: int) -> None:
        self.left = budget
        self.used = 0

    def spend(self) -> None:
        if self.left <= 0:
            raise redis.exceptions.ConnectionError("injected: connection lost")
        self.left -= 1
        self.used += 1


class _CrashingPipeline:
    def __init__(self, real: Redis, budget: _Budget) -> None:
        self._real = real
        self._budget = budget
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> _CrashingPipeline:
            self._calls.append((name, args, kwargs))
            return self

        return queue

    async def __aenter__(self) -> _CrashingPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._calls.clear()

    async def execute(self) -> list[Any]:
        results = []
        for name, args, kwargs in self._calls:
            self._budget.spend()
            results.append(await getattr(self._real, name)(*args, **kwargs))
        self._calls.clear()
        return results


class CrashingRedis:
    """Lets `budget` commands through, then fails every command."""

    def __init__(self, real: Redis, budget: int) -> None:
        self._real = real
        self.budget = _Budget(budget)

    def pipeline(self, transaction: bool = True) -> _CrashingPipeline:
        return _CrashingPipeline(self._real, self.budget)

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.budget.spend()
            return await getattr(self._real, name)(*args, **kwargs)

        return call


async def listed(store: TokenStore, namespace: str) -> set[str]:
    records, _ = await store.list(namespace, 1000)
    return {r.token_id for r in records}


async def test_an_issue_cut_short_anywhere_never_leaves_a_usable_token_without_its_record(
    aredis, namespace
):
    store = TokenStore(aredis)
    full = CrashingRedis(aredis, 10_000)
    store._redis = full  # type: ignore[assignment]
    await store.issue(namespace, "probe", STEWARD, lifetime_s=3600, token="agc_probe-" + namespace)
    steps = full.budget.used
    store._redis = aredis

    for budget in range(steps):
        token = f"agc_cut-{budget}-{namespace}"
        store._redis = CrashingRedis(aredis, budget)  # type: ignore[assignment]
        with pytest.raises(redis.exceptions.ConnectionError):
            await store.issue(namespace, f"w{budget}", STEWARD, lifetime_s=3600, token=token)
        store._redis = aredis
        grant = await store.lookup(token_digest(token))
        if grant is not None:
            assert grant.token_id in await listed(store, namespace), f"cut after {budget}"
            # …and start-up's "does any token exist?" sees it (no second bootstrap token).
            live = await aredis.zscore(tokens_module.LIVE_KEY, token_digest(token))
            assert live is not None, f"cut after {budget}"


async def test_an_issue_whose_record_write_is_refused_leaves_no_usable_token(
    aredis, namespace, monkeypatch
):
    # Redis refuses one command of the batch (here: the record key already holds a string);
    # the commands after it must not make the token usable.
    store = TokenStore(aredis)
    monkeypatch.setattr(tokens_module, "new_token_id", lambda now_ms: "tok-taken")
    await aredis.set(f"ac:{{{namespace}}}:tokens:tok-taken", "not a hash")
    token = "agc_refused-" + namespace

    with pytest.raises(redis.exceptions.ResponseError):
        await store.issue(namespace, "w1", STEWARD, token=token)

    assert await store.lookup(token_digest(token)) is None


async def test_a_revoke_cut_short_anywhere_leaves_the_token_unusable_or_still_revocable(
    aredis, namespace
):
    store = TokenStore(aredis)
    token, record = await store.issue(namespace, "probe", STEWARD, token="agc_rprobe-" + namespace)
    full = CrashingRedis(aredis, 10_000)
    store._redis = full  # type: ignore[assignment]
    await store.revoke(namespace, record.token_id)
    steps = full.budget.used
    store._redis = aredis

    for budget in range(steps):
        token, record = await store.issue(
            namespace, "w", STEWARD, token=f"agc_r{budget}-{namespace}"
        )
        store._redis = CrashingRedis(aredis, budget)  # type: ignore[assignment]
        with pytest.raises(redis.exceptions.ConnectionError):
            await store.revoke(namespace, record.token_id)
        store._redis = aredis
        if await store.lookup(token_digest(token)) is not None:
            assert record.token_id in await listed(store, namespace), f"cut after {budget}"
            await store.revoke(namespace, record.token_id)  # revoking again completes it
            assert await store.lookup(token_digest(token)) is None


@pytest.mark.standalone_only  # needs a Redis of its own (a numbered database)
async def test_any_exist_reads_a_few_keys_and_never_scans(empty_aredis, monkeypatch):
    store = TokenStore(empty_aredis)
    assert not await store.any_exist()

    _, first = await store.issue("default", "steward", STEWARD)
    for i in range(50):
        await empty_aredis.set(f"ac:other:{i}", "x")  # unrelated keys cost nothing

    def no_scan(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("any_exist scanned the keyspace")

    monkeypatch.setattr(empty_aredis, "scan", no_scan)
    monkeypatch.setattr(empty_aredis, "scan_iter", no_scan)
    assert await store.any_exist()

    await store.revoke("default", first.token_id)
    assert not await store.any_exist()


@pytest.mark.standalone_only  # needs a Redis of its own (a numbered database)
async def test_any_exist_ignores_expired_tokens_and_leftovers_of_a_half_done_revoke(
    empty_aredis,
):
    store = TokenStore(empty_aredis)
    token, _ = await store.issue("default", "steward", STEWARD)
    await empty_aredis.delete(f"ac:tokens:{token_digest(token)}")  # revoke cut after step one
    assert not await store.any_exist()

    await store.issue("default", "short", STEWARD, lifetime_s=0.05)
    await asyncio.sleep(0.1)
    assert not await store.any_exist()


@pytest.mark.standalone_only  # needs a Redis of its own (a numbered database)
async def test_any_exist_leaves_the_member_of_a_token_being_issued(empty_aredis):
    # issue() writes the member of ac:tokens before the global entry; a server deciding
    # whether to bootstrap in between must not remove it (it did, and four servers starting
    # together then left a live token out of ac:tokens).
    digest = "0" * 64
    await empty_aredis.zadd("ac:tokens", {digest: "+inf"})
    store = TokenStore(empty_aredis)
    assert not await store.any_exist()
    assert await empty_aredis.zrange("ac:tokens", 0, -1) == [digest]


@pytest.mark.standalone_only  # needs a Redis of its own (a numbered database)
async def test_expired_tokens_leave_the_live_set_when_tokens_are_issued(empty_aredis):
    # Start-up prunes it too, but a server that runs for months issuing short-lived tokens
    # must not grow it without bound in between.
    store = TokenStore(empty_aredis)
    for i in range(5):
        await store.issue("default", f"short-{i}", STEWARD, lifetime_s=0.05)
    await asyncio.sleep(0.1)

    token, _ = await store.issue("default", "steward", STEWARD)

    assert await empty_aredis.zrange("ac:tokens", 0, -1) == [token_digest(token)]
