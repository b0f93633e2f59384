"""StagingService throughput and latency: stage, get, list (with filters), promote, conflicts.

    .venv/bin/python -m bench.bench_staging

Each row is one RPC type from 16 concurrent tasks over one AsyncClient per role, against a
server in its own thread (uvloop) over a fresh embedded Redis; bounded loops. The list rows run
over 1000 staged patterns / 1000 library patterns, so they show what one Lua page costs
(page_size 50: 50 HGETALLs in one script; the filtered row examines ~500 members to fill a page).
Compare with `bench.bench_overhead` (raw Redis PING, bare grpc.aio, WhoAmI) on the same machine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import redis.asyncio
import structlog
from agentcoord import AsyncClient
from agentcoord_server.config import Settings

from tests.support import ServerThread, dev_identity

from .common import embedded_redis
from .common import measure as measure_rpc

_redis: redis.asyncio.Redis | None = None


async def measure(name, call, **kwargs):  # type: ignore[no-untyped-def]
    """measure_rpc, plus the Redis-side cost per call (INFO commandstats, µs of Redis CPU per
    EVALSHA / HGETALL), which the machine's load disturbs far less than wall-clock latency."""
    assert _redis is not None
    await _redis.config_resetstat()
    result = await measure_rpc(name, call, **kwargs)
    stats = await _redis.info("commandstats")
    redis_side = [
        f"{command} {stats[f'cmdstat_{command}']['usec_per_call']:.0f} us"
        for command in ("evalsha", "hgetall")
        if f"cmdstat_{command}" in stats
    ]
    print(f"{'':<44} Redis per call: {', '.join(redis_side)}")
    return result


CODE = "def handler(request):\n    validate(request)\n" * 20  # ~1 KB of example code
CONTEXT = {"file": "api/handlers.py", "lines": [10, 42], "evidence": {"runs": 12, "ok": True}}
SEEDED = 1000


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    global _redis
    with embedded_redis() as url:
        _redis = redis.asyncio.Redis.from_url(url, decode_responses=True)
        settings = Settings(listen="127.0.0.1:0", redis_url=url, insecure_dev_identity=True)
        handle = ServerThread(settings).start()
        try:
            async with (
                AsyncClient(
                    handle.address, metadata=dev_identity("finder", "CONTRIBUTOR", "b")
                ) as author,
                AsyncClient(
                    handle.address, metadata=dev_identity("judge", "VALIDATOR", "b")
                ) as validator,
            ):
                await run(author, validator)
        finally:
            handle.stop()
            await _redis.aclose()


async def run(author: AsyncClient, validator: AsyncClient) -> None:
    counter = itertools.count()

    def stage(pattern_id: str, confidence: float = 0.8, pattern_type: str = "security"):  # type: ignore[no-untyped-def]
        return author.staging.stage_pattern(
            pattern_id=pattern_id,
            pattern_type=pattern_type,
            name=f"Pattern {pattern_id}",
            description="Validate input at API boundaries",
            confidence=confidence,
            code=CODE,
            context=CONTEXT,
            interests=["safety", "correctness"],
        )

    await measure("StagePattern (new id, ~1 KB code)", lambda: stage(f"new-{next(counter)}"))
    await stage("hot")
    await measure("StagePattern (author replaces, revision+1)", lambda: stage("hot"))
    await measure("GetStagedPattern", lambda: author.staging.get_staged_pattern("hot"))

    # A clean staging area of SEEDED patterns for the list rows: 1 in 10 is "rare".
    for pattern_id in [f"new-{i}" for i in range(next(counter))]:
        await validator.staging.reject_pattern(pattern_id, reason="bench cleanup")
    await asyncio.gather(
        *(
            stage(f"s-{i:04d}", (i % 100) / 100, "rare" if i % 10 == 0 else "security")
            for i in range(SEEDED)
        )
    )
    await measure(
        "ListStagedPatterns (50/page of 1000)",
        lambda: author.staging.list_staged_patterns(page_size=50),
        total=2000,
    )
    await measure(
        "ListStagedPatterns (type filter, 10% match)",
        lambda: author.staging.list_staged_patterns(pattern_type="rare", page_size=50),
        total=2000,
    )

    ids = iter(f"s-{i:04d}" for i in range(SEEDED))
    await measure(
        "PromotePattern (Lua move into library)",
        lambda: validator.staging.promote_pattern(next(ids), note="ok"),
        total=SEEDED - 200,  # measure() warms up with 200 calls of its own
    )
    await measure(
        "ListPatterns (text filter, 50/page of 1000)",
        lambda: author.staging.list_patterns(text="PATTERN S-00", page_size=50),
        total=2000,
    )

    conflicts = itertools.count()
    await measure(
        "CreateConflict",
        lambda: author.staging.create_conflict(
            conflict_id=f"c-{next(conflicts)}",
            positions={"a": "use Redis", "b": "use an LRU"},
            interests={"a": ["latency"], "b": ["simplicity"]},
            batna="no cache",
        ),
    )
    resolved = iter(range(next(conflicts)))
    await measure(
        "ResolveConflict",
        lambda: validator.staging.resolve_conflict(f"c-{next(resolved)}", resolution="LRU"),
        total=4000,
    )


if __name__ == "__main__":
    asyncio.run(main())
