"""The task cycle's Redis cost at the store level (no gRPC): CompleteTask with claim_next.

    .venv/bin/python -m bench.bench_task_script

Preloads 4000 tasks over 8 types and 10 priorities, registers one agent with those types as
capabilities, then drains them with one claim and complete+claim_next loop (one script per
task), and adds 2000 more with request ids. Prints wall time and Redis's own time per EVALSHA
(INFO commandstats usec_per_call), which the load of other processes moves less than wall
time. Compare two commits by running it alternately with each one's interpreter.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aredis
from agentcoord_server.store.tasks import ClaimNext, TaskStore

from .common import embedded_redis

PRELOAD = 4000
TYPES = 8


async def main() -> None:
    with embedded_redis() as url:
        r = aredis.Redis.from_url(url, decode_responses=True)
        store = TaskStore(r, task_ttl=3600, agent_ttl=300)
        types = [f"t{i}" for i in range(TYPES)]
        await store.register_agent("ns", "w", types)
        for i in range(PRELOAD):
            await store.add_task(
                "ns", "adder", task_id=f"x{i}", task_type=types[i % TYPES], description="",
                priority=1 + i % 10, payload_json='{"n": 1}', max_attempts=3, request_id="",
            )  # fmt: skip
        await r.config_resetstat()
        start = time.perf_counter()
        task = await store.claim_task(
            "ns", "w", task_types=[], lease_ms=60_000, wait_seconds=0, shutdown=asyncio.Event()
        )
        done = 0
        while task is not None:
            _, task = await store.complete_task(
                "ns", "w", task.task_id, task.fencing_token, '{"ok": 1}',
                claim_next=ClaimNext(task_types=[], lease_ms=60_000),
            )  # fmt: skip
            done += 1
        wall = time.perf_counter() - start
        stats = (await r.info("commandstats")).get("cmdstat_evalsha", {})
        print(
            f"complete+claim_next  {done / wall:>7.0f} tasks/s  "
            f"Redis {stats.get('usec_per_call')} us/script"
        )
        await r.config_resetstat()
        start = time.perf_counter()
        for i in range(2000):
            await store.add_task(
                "ns", "adder", task_id=f"y{i}", task_type=types[i % TYPES], description="",
                priority=5, payload_json='{"n": 1}', max_attempts=3, request_id=f"r{i}",
            )  # fmt: skip
        wall = time.perf_counter() - start
        stats = (await r.info("commandstats")).get("cmdstat_evalsha", {})
        print(
            f"AddTask              {2000 / wall:>7.0f} tasks/s  Redis {stats.get('usec_per_call')} us/script"
        )
        await r.aclose()


if __name__ == "__main__":
    asyncio.run(main())
