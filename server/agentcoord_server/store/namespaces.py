"""The namespace registry: which teams exist, and deleting one with everything it holds.

Layout (DESIGN.md "Tenancy"):

- `ac:namespaces` — a sorted set of registered namespace names (all scores 0, so it orders by
  name) for ListNamespaces paging. A global key outside every namespace, touched only by
  single-key commands, so it works unchanged on a Redis Cluster.
- `ac:{<ns>}:namespace` — the namespace's record (state `active` or `deleting`, created_ms,
  created_by, description), inside the namespace's hash tag so a script that writes the
  namespace (tokens_issue.lua) can check its state atomically.

Creation adds the name to the index first and writes the record second; deletion removes the
record last and the name after it. A name without a record (a step cut short) is skipped by
listing and overwritten by the next create, so no order of failures leaves a namespace that
looks usable and is not.

Deletion (bounded work per step, resumable): mark the record `deleting` (issuing tokens is
refused from then on, atomically: tokens_issue.lua); wait `settle_seconds` so token issues that
passed the check before the mark have written their global entries; revoke every token of the
namespace, a page at a time; wait again, for the auth cache bound, so no cached grant can still
write; then SCAN MATCH `ac:{ns}:*` (an admin operation, never on a hot path) and UNLINK what it
finds in batches of at most BATCH keys; finally delete the record and the name. Interrupted at
any point, the record says `deleting` and calling delete again redoes the remaining steps.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from ..errors import AlreadyExists, FailedPrecondition, NotFound
from .keys import Keyspace
from .live_subscriptions import live_key
from .scripts import register_source
from .tokens import TokenStore

INDEX_KEY = "ac:namespaces"
BATCH = 500
"""Keys unlinked per command, and SCAN's COUNT hint, while deleting a namespace."""

QUOTAS = (
    "tokens",
    "signals_per_second",
    "pending_tasks",
    "live_subscriptions",
    "memory_entries",
    "memory_bytes",
)
"""The quotas a namespace record may set (`quota:<name>` fields; admin.proto NamespaceQuota)."""

# Sets quota fields only on a registered namespace (never recreating a deleted record).
_SET_QUOTAS = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

ACTIVE = "active"
DELETING = "deleting"


@dataclass(frozen=True, slots=True)
class NamespaceRecord:
    """A registered namespace. created_ms is Unix milliseconds."""

    name: str
    state: str
    created_ms: int
    created_by: str
    description: str


def record_key(name: str) -> str:
    return Keyspace(name).key("namespace")


def _record(name: str, fields: dict[str, str]) -> NamespaceRecord:
    return NamespaceRecord(
        name=name,
        state=fields.get("state", ""),
        created_ms=int(fields.get("created_ms", 0)),
        created_by=fields.get("created_by", ""),
        description=fields.get("description", ""),
    )


class NamespaceStore:
    """Creates, lists, reads and deletes namespaces. Redis only; raises domain errors."""

    def __init__(self, redis: Redis, tokens: TokenStore) -> None:
        self._redis = redis
        self._tokens = tokens
        self._set_quotas = register_source(redis, _SET_QUOTAS, "namespace_set_quotas")

    async def get(self, name: str) -> NamespaceRecord | None:
        """The namespace's record, or None if it is not registered. One round trip."""
        fields = cast(dict[str, str], await self._redis.hgetall(record_key(name)))
        return _record(name, fields) if fields else None

    async def create(
        self, name: str, *, created_by: str, description: str = ""
    ) -> NamespaceRecord:
        """Registers `name` (a validated id). Two round trips.

        Raises AlreadyExists (NAMESPACE_EXISTS) if it is registered, FailedPrecondition
        (NAMESPACE_DELETING) while it is being deleted.
        """
        now_ms = int(time.time() * 1000)
        await self._redis.zadd(INDEX_KEY, {name: 0})
        key = record_key(name)
        if not await self._redis.hsetnx(key, "state", ACTIVE):
            existing = await self.get(name)
            if existing is not None and existing.state == DELETING:
                raise FailedPrecondition(
                    f"namespace {name} is being deleted; call DeleteNamespace to finish",
                    reason="NAMESPACE_DELETING",
                    metadata={"namespace": name},
                )
            raise AlreadyExists(
                f"namespace {name} exists", reason="NAMESPACE_EXISTS", metadata={"namespace": name}
            )
        fields: dict[Any, Any] = {
            "state": ACTIVE,
            "created_ms": str(now_ms),
            "created_by": created_by,
            "description": description,
        }
        await self._redis.hset(key, mapping=fields)
        return _record(name, fields)

    async def list(self, page_size: int, after: str = "") -> tuple[list[NamespaceRecord], str]:
        """Up to `page_size` registered namespaces named after `after`, in name order, and the
        name to continue after ("" on the last page). Two round trips."""
        start = f"({after}" if after else "-"
        names = cast(
            list[str],
            await self._redis.zrangebylex(INDEX_KEY, start, "+", start=0, num=page_size + 1),
        )
        more = len(names) > page_size
        names = names[:page_size]
        if not names:
            return [], ""
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(record_key(name))
            rows = await pipe.execute()
        records = [_record(n, f) for n, f in zip(names, rows, strict=True) if f]
        return records, (names[-1] if more else "")

    async def delete(
        self, name: str, *, settle_seconds: float, auth_cache_seconds: float
    ) -> NamespaceRecord:
        """Deletes `name` and everything it holds, revoking its tokens (see the module
        docstring for the steps). Returns the record as it was before. Resumes a deletion
        that was interrupted. Raises NotFound (NAMESPACE_NOT_FOUND) if not registered."""
        before = await self.get(name)
        if before is None:
            raise NotFound(
                f"namespace {name} is not registered",
                reason="NAMESPACE_NOT_FOUND",
                metadata={"namespace": name},
            )
        key = record_key(name)
        await self._redis.hset(key, "state", DELETING)
        await asyncio.sleep(settle_seconds)
        while True:
            records, _ = await self._tokens.list(name, 100)
            if not records:
                break
            for record in records:
                try:
                    await self._tokens.revoke(name, record.token_id)
                except NotFound:
                    pass  # revoked meanwhile
        await asyncio.sleep(auth_cache_seconds)
        pattern = Keyspace(name).pattern()
        batch: list[str] = []
        async for found in self._redis.scan_iter(match=pattern, count=BATCH):
            if found != key:
                batch.append(found)
            if len(batch) >= BATCH:
                await self._redis.unlink(*batch)
                batch = []
        if batch:
            await self._redis.unlink(*batch)
        await self._redis.delete(key)
        await self._redis.zrem(INDEX_KEY, name)
        return before

    async def quotas(self, name: str) -> tuple[dict[str, int], dict[str, float]]:
        """(the quotas set for `name`: quota → limit, 0 for unset; current use: "tokens" → live
        tokens in the index, "pending_tasks" → queued or backing-off tasks over every type
        (one more round trip, one command per task type), "signal_bucket" → tokens left, "signal_bucket_ms" → when it was
        last refilled, Unix ms, both absent for a full bucket, "live_subscriptions" → open
        streams over every server process whose lease has not run out by this host's clock,
        "memory_entries" / "memory_bytes" → working-memory entries and their value bytes).
        Two round trips."""
        keys = Keyspace(name)
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(record_key(name), [f"quota:{q}" for q in QUOTAS])
            pipe.zcard(keys.key("tokens", "index"))
            pipe.hmget(keys.key("quota", "signals"), ["tokens", "ms"])
            pipe.zrange(keys.key("tasks", "types"), 0, -1)
            pipe.zcount(live_key(name), f"({now_ms}", "+inf")
            pipe.hlen(keys.key("memory-sizes"))  # kept by the memory scripts (memory_events.lua)
            pipe.get(keys.key("memory-usage"))
            limits, tokens, bucket, types, live, entries, value_bytes = await pipe.execute()
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_type in types:
                pipe.hmget(keys.key("tasks", "counts"), [f"q:{task_type}", f"d:{task_type}"])
            pending = sum(int(n or 0) for row in await pipe.execute() for n in row) if types else 0
        usage: dict[str, float] = {
            "tokens": int(tokens),
            "pending_tasks": pending,
            "live_subscriptions": int(live),
            "memory_entries": int(entries),
            "memory_bytes": int(value_bytes or 0),
        }
        if bucket[0] is not None and bucket[1] is not None:
            usage["signal_bucket"] = float(bucket[0])
            usage["signal_bucket_ms"] = float(bucket[1])
        return {q: int(v or 0) for q, v in zip(QUOTAS, limits, strict=True)}, usage

    async def set_quotas(self, name: str, limits: dict[str, int]) -> None:
        """Sets the namespace's quotas (quota → limit, 0: the server's default). One round trip.
        Raises NotFound (NAMESPACE_NOT_FOUND) if it is not registered."""
        flat = [str(v) for q, limit in limits.items() for v in (f"quota:{q}", limit)]
        if not await self._set_quotas(keys=[record_key(name)], args=flat):
            raise NotFound(
                f"namespace {name} is not registered",
                reason="NAMESPACE_NOT_FOUND",
                metadata={"namespace": name},
            )
