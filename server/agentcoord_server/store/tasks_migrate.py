"""Moves tasks stored in the layout before issue 13 into the current one, at server start.

Before, a task was a hash of its own (`ac:{ns}:tasks:t:<id>`) and each type had its own queue,
lease, delayed, stats and recent keys — names the scripts built from ids and types, which the
current scripts never do (tasks_common.lua). A server upgraded in place finds its pending and
claimed tasks here: `migrate_task_layout` SCANs for keys of the old layout once (then marks the
Redis as migrated, `LAYOUT_KEY`, so later starts skip the SCAN) and moves them namespace by
namespace with tasks_migrate.lua, in batches of BATCH keys, each key deleted in the step that
moved it — a repeated or interrupted run (two servers starting at once, a crash) moves nothing
twice. Servers of the old version must be stopped first: one still running would keep writing
keys of the old layout after the move.
"""

from __future__ import annotations

import re
from collections import defaultdict

from redis.asyncio import Redis

from .scripts import load_script
from .task_wakeups import channel
from .tasks import RECENT_RESULTS, _keys

LAYOUT_KEY = "ac:layout:tasks"
"""Set to LAYOUT_VERSION once no key of an older layout is left."""
LAYOUT_VERSION = "2"
BATCH = 100

_OLD = re.compile(
    r"^ac:\{(?P<ns>[^}]+)\}:(?:"
    r"tasks:t:(?P<task>[^:]+)"
    r"|tasks:(?P<zset>[qld]):[^:]+"
    r"|tasks:stats:agents:(?P<stats>[^:]+)"
    r"|tasks:recent:(?P<recent>[^:]+)"
    r"|agents:a:(?P<agent>[^:]+))$"
)
_ORDER = {"t": 0, "a": 1, "s": 1, "r": 1, "z": 2}  # records before the queues they replace


def _kind(key: str) -> tuple[str, str] | None:
    """(namespace, kind for tasks_migrate.lua) of a key of the old layout, else None."""
    m = _OLD.match(key)
    if m is None:
        return None
    if m["task"]:
        kind = "t"
    elif m["zset"]:
        kind = "z"
    elif m["stats"]:
        kind = f"s:{m['stats']}"
    elif m["recent"]:
        kind = f"r:{m['recent']}"
    else:
        kind = f"a:{m['agent']}"
    return m["ns"], kind


async def migrate_task_layout(redis: Redis, *, task_ttl: int) -> int:
    """Moves every key of the old task layout (see the module docstring); returns how many
    task records were moved. `task_ttl` is TtlPolicy.task (seconds), for keys without a TTL."""
    if await redis.get(LAYOUT_KEY) == LAYOUT_VERSION:
        return 0
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pattern in ("ac:{*}:tasks:*:*", "ac:{*}:agents:a:*"):
        async for key in redis.scan_iter(match=pattern, count=1000):
            kind = _kind(key)
            if kind is not None:
                found[kind[0]].append((key, kind[1]))
    moved = 0
    if found:
        script = load_script(redis, "tasks_migrate", prelude="tasks_common")
        for namespace, old in found.items():
            old.sort(key=lambda item: _ORDER[item[1][0]])
            fixed = list(_keys(namespace))
            for i in range(0, len(old), BATCH):
                batch = old[i : i + BATCH]
                moved += int(
                    await script(
                        keys=[*fixed, fixed[0], fixed[0], *(k for k, _ in batch)],
                        args=[
                            channel(namespace),
                            task_ttl * 1000,
                            RECENT_RESULTS,
                            *(kind for _, kind in batch),
                        ],
                    )
                )
    await redis.set(LAYOUT_KEY, LAYOUT_VERSION)
    return moved
