"""Paging through a lexicographic index (a sorted set, all scores 0) with cluster-safe scripts.

A Lua script may touch only the keys its caller names in KEYS (a Redis Cluster routes, and
proxies check, by them), so a list cannot read its index and then build the item keys inside
one script. Each step is two round trips instead: ZRANGEBYLEX reads the next members, then
`examine` — a script given the index and those members' item keys — reads the items and
drops stale members atomically (an item re-created in between is seen, never unindexed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis

T = TypeVar("T")


async def page_by_lex(
    redis: Redis,
    index: str,
    *,
    lo: str,
    hi: str = "+",
    want: int,
    budget: int,
    examine: Callable[[Sequence[str]], Awaitable[Sequence[T | None]]],
) -> tuple[list[T], str]:
    """Up to `want` items for the members of `index` in [lo, hi] (ZRANGEBYLEX bounds), in
    member order, examining at most `budget` members. `examine(members)` returns one item or
    None (skip) per member.

    Returns (items, the last member examined if members remain after it, else ""). A page may
    be short, even empty, with a token: the budget ran out first.
    """
    out: list[T] = []
    scanned = 0
    while True:
        room = min(want - len(out), budget - scanned)
        # One member more than examined, to learn whether anything follows the page.
        members: list[Any] = await redis.zrangebylex(index, lo, hi, start=0, num=room + 1)
        batch = [m.decode() if isinstance(m, bytes) else m for m in members[:room]]
        if not batch:
            return out, ""
        out += [item for item in await examine(batch) if item is not None]
        scanned += len(batch)
        lo = "(" + batch[-1]
        if len(members) <= room:
            return out, ""
        if len(out) >= want or scanned >= budget:
            return out, batch[-1]
