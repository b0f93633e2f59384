"""Server statistics read from Redis: version, mode, memory, key counts per area."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from redis.asyncio import Redis

from .keys import Keyspace, area_of


@dataclass(frozen=True)
class RedisStats:
    redis_version: str
    cluster_enabled: bool
    used_memory_bytes: int
    key_counts: dict[str, int]


class AdminStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def stats(self, namespace: str) -> RedisStats:
        """INFO (one round trip) plus a SCAN of the namespace's keys, counted per area.

        The SCAN is O(keys in Redis) with COUNT 1000 per step: fine for an admin call, never
        used on a hot path.
        """
        info = await self._redis.info()
        counts: Counter[str] = Counter()
        async for key in self._redis.scan_iter(match=Keyspace(namespace).pattern(), count=1000):
            counts[area_of(key)] += 1
        return RedisStats(
            redis_version=str(info.get("redis_version", "")),
            cluster_enabled=bool(info.get("cluster_enabled", 0)),
            used_memory_bytes=int(info.get("used_memory", 0)),
            key_counts=dict(counts),
        )
