"""Server statistics read from Redis: version, memory, and what one namespace holds.

Nothing here SCANs: every count is the cardinality (ZCARD, or ZCOUNT over "not yet expired"
scores) of an index the stores already keep up to date in the same scripts that write, so a
GetServerStats costs the same on a namespace of ten keys or ten million. Two round trips:
INFO with one pipeline of the namespace's fixed indexes, then one pipeline of per-owner and
per-task-type counts, at most MAX_OWNERS + 2 * MAX_TASK_TYPES commands. Every key is in the
namespace's `{ns}` hash tag, so on a Redis Cluster both pipelines go to one node.

Indexes read (each store's module docstring documents its own):

- memory:  `memory-owners` (owners by latest expiry) → each owner's
           `memory-index:<owner>:expiry` (entries by expiry): ZCOUNT of live entries.
- sessions: `session-index:expiry`; staged patterns: `staging:expiry`; open conflicts:
           `conflicts:open` — ZCOUNT of unexpired members (each removed when its item goes).
- library: `patterns:index` (no TTL). Signals: XLEN of the stream (trimmed by age on writes).
- tasks:   `tasks:types` (types by latest add) → the `q|d|l:<type>` fields of `tasks:counts`
           (the task scripts keep them with each task's place), completions from `tasks:stats*`, dead letters: ZCOUNT of `tasks:dead` over the TASK TTL (a
           dead task lives that long after dying).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import SlotNotCoveredError

from ..redis_client import is_cluster
from .keys import Keyspace

MAX_OWNERS = 1000
"""Working-memory owners counted per call (most recently written first); more: truncated."""
MAX_TASK_TYPES = 100
"""Task types counted per call (most recently added to first); more: truncated."""


@dataclass(frozen=True, slots=True)
class TaskTypeCounts:
    """One task type's tasks by state (see NamespaceStats in admin.proto)."""

    task_type: str
    pending: int = 0
    backing_off: int = 0
    claimed: int = 0
    completed: int = 0


@dataclass(frozen=True, slots=True)
class NamespaceCounts:
    """What a namespace holds; `truncated` when an index was read only in part (counts are
    then lower bounds). Task totals are over the counted types."""

    memory_entries: int = 0
    memory_owners: int = 0
    sessions: int = 0
    staged_patterns: int = 0
    library_patterns: int = 0
    open_conflicts: int = 0
    retained_signals: int = 0
    dead_letters: int = 0
    completed_tasks: int = 0
    task_types: list[TaskTypeCounts] = field(default_factory=list)
    truncated: bool = False


@dataclass(frozen=True)
class RedisStats:
    redis_version: str
    cluster_enabled: bool
    used_memory_bytes: int
    namespace: NamespaceCounts
    nodes: list[str] = field(default_factory=list)


class AdminStore:
    """Args: redis, the shared client; task_ttl, TtlPolicy.task in seconds (how long a
    dead-lettered task is kept)."""

    def __init__(self, redis: Redis, *, task_ttl: int) -> None:
        self._redis = redis
        self._task_ttl_ms = task_ttl * 1000

    async def stats(self, namespace: str) -> RedisStats:
        """INFO and the namespace's counts, in two round trips (see the module docstring).

        On a Redis Cluster INFO comes from the primary that owns the namespace's slot, and
        `nodes` lists every primary that answered PING ("host:port", sorted; one more round
        trip, to all primaries at once). On a standalone Redis `nodes` is empty.
        """
        if not is_cluster(self._redis):
            info, counts = await asyncio.gather(self._redis.info(), self.count(namespace))
            nodes: list[str] = []
        else:
            cluster = cast(RedisCluster, self._redis)
            owner = cluster.get_node_from_key(Keyspace(namespace).key("stats"))
            if owner is None:  # mid-failover: the client's slot map has no primary for it
                raise SlotNotCoveredError(f"no primary owns the slot of namespace {namespace}")
            info, counts, nodes = await asyncio.gather(
                cluster.info(target_nodes=owner), self.count(namespace), _reachable(cluster)
            )
        return RedisStats(
            redis_version=str(info.get("redis_version", "")),
            cluster_enabled=bool(info.get("cluster_enabled", 0)),
            used_memory_bytes=int(info.get("used_memory", 0)),
            namespace=counts,
            nodes=nodes,
        )

    async def count(self, namespace: str) -> NamespaceCounts:
        """The namespace's counts from its indexes; "now" is this server's clock (ms), the
        one the memory store's expiry scores use (the other stores use Redis TIME: the clocks
        of one host, or NTP-close)."""
        ks = Keyspace(namespace)
        now = time.time_ns() // 1_000_000
        live = (f"({now}", "+inf")  # scores (expire ms) after now
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrevrangebyscore(ks.key("memory-owners"), "+inf", live[0], 0, MAX_OWNERS + 1)
            pipe.zcount(ks.key("session-index", "expiry"), *live)
            pipe.zcount(ks.key("staging", "expiry"), *live)
            pipe.zcard(ks.key("patterns", "index"))
            pipe.zcount(ks.key("conflicts", "open"), *live)
            pipe.xlen(ks.key("signals"))
            pipe.zcount(ks.key("tasks", "dead"), f"({now - self._task_ttl_ms}", "+inf")
            pipe.hget(ks.key("tasks", "stats"), "total")
            pipe.zrevrange(ks.key("tasks", "types"), 0, MAX_TASK_TYPES)
            (
                owners,
                sessions,
                staged,
                library,
                conflicts,
                signals,
                dead,
                completed,
                types,
            ) = await pipe.execute()
        truncated = len(owners) > MAX_OWNERS or len(types) > MAX_TASK_TYPES
        owners, types = owners[:MAX_OWNERS], types[:MAX_TASK_TYPES]
        async with self._redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.zcount(ks.key("memory-index", owner, "expiry"), *live)
            for task_type in types:
                pipe.hmget(
                    ks.key("tasks", "counts"),
                    [f"q:{task_type}", f"d:{task_type}", f"l:{task_type}"],
                )
                pipe.hget(ks.key("tasks", "stats", "types"), task_type)
            replies = await pipe.execute() if owners or types else []
        entries = replies[: len(owners)]
        per_type = replies[len(owners) :]
        task_types = [
            TaskTypeCounts(
                task_type=task_type,
                pending=int(per_type[2 * i][0] or 0),
                backing_off=int(per_type[2 * i][1] or 0),
                claimed=int(per_type[2 * i][2] or 0),
                completed=int(per_type[2 * i + 1] or 0),
            )
            for i, task_type in enumerate(types)
        ]
        return NamespaceCounts(
            memory_entries=sum(int(n) for n in entries),
            memory_owners=sum(1 for n in entries if int(n) > 0),
            sessions=int(sessions),
            staged_patterns=int(staged),
            library_patterns=int(library),
            open_conflicts=int(conflicts),
            retained_signals=int(signals),
            dead_letters=int(dead),
            completed_tasks=int(completed or 0),
            task_types=task_types,
            truncated=truncated,
        )


async def _reachable(cluster: RedisCluster) -> list[str]:
    """The primaries (as "host:port") that answer PING now."""
    primaries = cluster.get_primaries()
    answers = await asyncio.gather(
        *(cluster.ping(target_nodes=node) for node in primaries), return_exceptions=True
    )
    return sorted(node.name for node, ok in zip(primaries, answers, strict=True) if ok is True)
