"""Shared bench helpers: a throwaway Redis + server, and a latency/throughput report."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentcoord_server.embedded_redis import EmbeddedRedis


@contextmanager
def embedded_redis() -> Iterator[str]:
    """A fresh redis-server in a temp dir; yields its unix:// URL."""
    with tempfile.TemporaryDirectory(prefix="acbench-") as tmp:
        redis = EmbeddedRedis(Path(tmp))
        redis.start()
        try:
            yield redis.url
        finally:
            redis.stop()


async def measure(
    name: str, call: Callable[[], Awaitable[Any]], *, total: int = 5000, concurrency: int = 16
) -> dict[str, float]:
    """Runs `call` `total` times from `concurrency` tasks; prints and returns ops/s, p50, p99 (ms)."""
    for _ in range(min(200, total)):  # warm up connections, caches and scripts
        await call()
    latencies: list[float] = []
    per_task = total // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    result = {
        "ops_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }
    print(
        f"{name:<44} {result['ops_per_s']:>9.0f} ops/s   p50 {result['p50_ms']:6.2f} ms"
        f"   p99 {result['p99_ms']:6.2f} ms   ({len(latencies)} calls, {concurrency} concurrent)"
    )
    return result
